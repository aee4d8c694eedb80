"""The read-out check of a fit on a coarser grid (``readout_check``, :class:`deepgmm.deep.steps.ReadoutCheck`):
every N NLL steps the network is read out at full resolution, the network with the lowest read-out NLL
is kept and the steps stop at the first check that does not lower it (docs/deep.md, "The read-out check").

Checked against: a scripted sequence of read-out NLLs (which network is kept, when the steps stop,
which weights are put back), the same fit stopped by ``max_steps`` at the kept step without a check
(the same bits), the independent read-out NLL of the kept network, the rule's resolution, the
memory estimate's extra term, ``segment()``'s record and the CLI, and the errors.
"""

import json
import logging

import numpy as np
import pytest
import torch

from _helpers import check_error, two_region_image
from deepgmm import segment
from deepgmm.deep import DeepG, DeepSVG
from deepgmm.deep.losses import LossOutput, MixtureFit
from deepgmm.deep.scale import READOUT_CHECK_VOLUME, auto_readout_check
from deepgmm.deep.steps import FullReadout, ReadOut, ReadoutCheck, whole_steps
from deepgmm.progress import Progress
from deepgmm.segmentation.methods import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(features=(8, 16), norm="instance")
GRID = dict(network=TINY, n_components=2, fit_scale=2, max_steps=8, min_steps=0, tol=0.0, pretrain_steps=2)


class Scripted:
    """A read-out whose NLL follows ``nlls`` in turn; it records the network's weight at each call."""

    def __init__(self, nlls):
        self.nlls, self.seen = list(nlls), []

    def __call__(self, net):
        value = float(net.weight.detach()[0, 0])
        self.seen.append(value)
        t = torch.zeros(1)
        fit = MixtureFit(t, t, t, t, t)
        return ReadOut(torch.full((1, 1, 1), value), LossOutput(t, t, fit), t, t, t, self.nlls[len(self.seen) - 1])


def _net():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    return net


def _step(net, value):
    with torch.no_grad():
        net.weight.fill_(value)


def test_the_check_keeps_the_lowest_read_out_and_stops_at_the_first_that_is_not_lower():
    net, read = _net(), Scripted([5.0, 4.0, 3.0, 3.5])
    check = ReadoutCheck(net, read, every=2)  # reads step 0 at once
    assert check.checks == [(0, 5.0)] and check.kept_step == 0
    for step, stop in ((1, False), (2, False), (3, False), (4, False), (5, False)):
        _step(net, float(step))
        assert check.after_step(step) is stop
    assert read.seen == [0.0, 2.0, 4.0]  # only every second step is read out
    _step(net, 6.0)
    assert check.after_step(6) is True  # 3.5 is not below 3.0
    assert check.kept_step == 4 and check.best.nll == 3.0 and float(net.weight.detach()) == 4.0  # step 4's weights back
    assert check.checks == [(0, 5.0), (2, 4.0), (4, 3.0), (6, 3.5)]


def test_an_equal_read_out_does_not_count_as_lower():
    net, read = _net(), Scripted([2.0, 2.0])
    check = ReadoutCheck(net, read, every=1)
    _step(net, 1.0)
    assert check.after_step(1) is True and check.kept_step == 0 and float(net.weight.detach()) == 0.0


def test_a_check_must_lower_the_nll_by_more_than_tol():
    net, read = _net(), Scripted([5.0, 4.9995, 4.0])
    check = ReadoutCheck(net, read, every=1, tol=1e-3)
    _step(net, 1.0)
    assert check.after_step(1) is True and check.kept_step == 0 and float(net.weight.detach()) == 0.0
    net, read = _net(), Scripted([5.0, 4.9995, 4.0])
    check = ReadoutCheck(net, read, every=1)  # tol 0: any lower NLL counts
    _step(net, 1.0)
    assert check.after_step(1) is False and check.kept_step == 1


def test_a_later_start_reads_nothing_before_it():
    net, read = _net(), Scripted([5.0, 4.0, 4.5])
    check = ReadoutCheck(net, read, every=2, start=3)
    assert check.checks == [] and check.kept_step == 3
    for step in (1, 2):
        _step(net, float(step))
        assert check.after_step(step) is False
    assert read.seen == []
    for step, stop in ((3, False), (4, False), (5, False), (6, False), (7, True)):
        _step(net, float(step))
        assert check.after_step(step) is stop
    assert check.checks == [(3, 5.0), (5, 4.0), (7, 4.5)] and check.kept_step == 5
    assert float(net.weight.detach()) == 5.0
    early, read = _net(), Scripted([3.0])
    check = ReadoutCheck(early, read, every=2, start=10)
    _step(early, 4.0)
    assert check.finish(4).nll == 3.0 and check.kept_step == 4 and check.checks == [(4, 3.0)]
    with pytest.raises(ValueError, match="start must be >= 0"):
        ReadoutCheck(early, read, every=1, start=-1)


@pytest.mark.parametrize("kw", [dict(init="random"), dict(pretrain_steps=0)])
def test_a_random_start_is_checked_from_min_steps_on(kw):
    """Without a distilled start, step 0 is a random network: the checks begin at ``min_steps``."""
    img, mask = two_region_image((24, 20, 22))
    est = DeepSVG(readout_check=1, **dict(GRID, min_steps=3, **kw)).fit(img, mask)
    steps = [s for s, _ in est.readout_checks_]
    assert steps[0] == 3 and est.kept_step_ >= 3 and est.n_iter_ >= 3


def test_the_estimator_passes_its_tol_to_the_check():
    img, mask = two_region_image((24, 20, 22))
    est = DeepSVG(readout_check=1, **dict(GRID, tol=10.0)).fit(img, mask)  # no check can lower the NLL by 10
    assert est.n_iter_ == 1 and est.kept_step_ == 0 and len(est.readout_checks_) == 2


@pytest.mark.parametrize("last, kept, weight", [(1.0, 5, 5.0), (9.0, 4, 4.0)])
def test_finish_reads_an_unchecked_last_step_and_keeps_the_better(last, kept, weight):
    net, read = _net(), Scripted([5.0, 4.0, 3.0, last])
    check = ReadoutCheck(net, read, every=2)
    for step in range(1, 6):
        _step(net, float(step))
        assert check.after_step(step) is False
    best = check.finish(5)  # step 5 was not a check: it is read out now
    assert check.checks[-1] == (5, last) and check.kept_step == kept and float(net.weight.detach()) == weight
    assert best is check.best and best.nll == min(3.0, last)
    assert check.finish(5) is best and len(read.seen) == 4  # a checked last step is not read twice


def test_whole_steps_stop_when_the_check_says_so():
    net = torch.nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step_loss():
        total = (net.weight ** 2).sum()
        return LossOutput(total, total.detach().reshape(1), None)

    read = Scripted([5.0, 4.0, 4.5])
    check = ReadoutCheck(net, read, every=1)
    with Progress(10, "t", None, bar=False) as bar:
        res = whole_steps(net, opt, step_loss, max_steps=10, tol=0.0, min_steps=0, grad_clip=1.0, bar=bar, check=check)
    assert res.n_iter == 2 and len(res.history) == 2 and res.converged and res.read.nll == 4.0  # the check ended them
    assert float(net.weight.detach()) == pytest.approx(read.seen[1])  # step 1's weights back in place
    with pytest.raises(ValueError, match="every must be >= 1"):
        ReadoutCheck(net, read, every=0)


def test_the_rule():
    assert READOUT_CHECK_VOLUME == 2 and DeepSVG().readout_check == DeepG().readout_check == "auto"
    assert [auto_readout_check(n, s) for n, s in ((3, 4), (3, 1), (2, 4), (2, 1))] == [READOUT_CHECK_VOLUME, 0, 0, 0]
    assert [auto_readout_check(n, s, 3) for n, s in ((3, 4), (3, 1), (2, 4), (2, 1))] == [3, 0, 3, 0]
    assert auto_readout_check(3, 4, 0) == 0


@pytest.mark.parametrize("cls", [DeepSVG, DeepG])
def test_the_kept_network_is_the_fit_stopped_at_its_step(cls):
    """The checked fit returns, bit for bit, the fit that ran exactly ``kept_step_`` NLL steps without a
    check; its ``nll_`` is the lowest read-out NLL of the checks, the one of the kept step."""
    img, mask = two_region_image((24, 20, 22))
    checked = cls(readout_check=1, **GRID).fit(img, mask)
    steps, nlls = zip(*checked.readout_checks_)
    assert list(steps) == list(range(checked.n_iter_ + 1)) and checked.readout_check_ == 1
    assert checked.nll_ == min(nlls) == nlls[checked.kept_step_]
    assert len(checked.nll_history_) == checked.n_iter_
    plain = cls(readout_check=0, **dict(GRID, max_steps=checked.kept_step_)).fit(img, mask)
    np.testing.assert_array_equal(checked.probabilities_, plain.probabilities_)
    np.testing.assert_array_equal(checked.means_, plain.means_)
    assert checked.nll_ == plain.nll_ and plain.readout_checks_ == [] and plain.kept_step_ == plain.n_iter_
    assert plain.readout_check_ == 0


def test_a_fit_that_stops_keeps_an_earlier_network():
    """deepG on this image: the read-out NLL rises at step 2, so the steps stop there and step 1's
    network is kept (the scripted rule on a real fit)."""
    img, mask = two_region_image((24, 20, 22))
    est = DeepG(readout_check=1, **GRID).fit(img, mask)
    assert est.n_iter_ < GRID["max_steps"] and est.kept_step_ < est.n_iter_ and est.converged_  # the check ended it
    nlls = [v for _, v in est.readout_checks_]
    assert nlls[-1] >= nlls[est.kept_step_] and all(a > b for a, b in zip(nlls[:-2], nlls[1:-1]))


def test_a_check_every_few_steps_reads_the_last_step_too():
    img, mask = two_region_image((24, 20, 22))
    est = DeepSVG(readout_check=3, **GRID).fit(img, mask)
    steps = [s for s, _ in est.readout_checks_]
    assert steps[:2] == [0, 3] and steps[-1] == est.n_iter_ and est.kept_step_ in steps


def test_the_read_out_nll_is_the_mixture_nll_of_the_window():
    """FullReadout's NLL without read-out EM: the mean of ``-log sum_k w_nk N(x_n | mu_k, s_k)`` over the
    window's mask, recomputed here with scipy from the returned logits and parameters."""
    from scipy.special import logsumexp
    from scipy.stats import norm
    from deepgmm.deep.losses import DeepMixtureLoss
    from deepgmm.deep.unet import UNet, network_config

    img, mask = two_region_image((16, 12, 14))
    torch.manual_seed(0)
    net = UNet(network_config(TINY, spatial_dims=3, in_channels=1, out_channels=2))
    x_full = torch.from_numpy(img).unsqueeze(0)
    m_full = torch.from_numpy(mask).unsqueeze(0).float()
    x = torch.nn.functional.avg_pool3d(x_full, 2)
    loss = DeepMixtureLoss(mixture="svgmm", covariance_type="diag", reg_covar=1e-6)
    read = FullReadout(x, x_full, m_full, None, loss, 2, 0)(net)
    logw = torch.log_softmax(read.logits[0].double(), 0).numpy()[:, mask].T  # (N, K)
    mu, var = read.means.numpy()[:, 0], read.covariances.numpy()[:, 0]
    logp = norm.logpdf(img[0][mask][:, None], mu[None], np.sqrt(var)[None])
    assert read.nll == pytest.approx(-logsumexp(logp + logw, axis=1).mean(), rel=1e-4)
    with_em = FullReadout(x, x_full, m_full, None, loss, 2, 3)(net)
    assert with_em.nll < read.nll and torch.equal(with_em.logits, read.logits)


def test_defaults_check_volumes_on_a_grid_only():
    vol, vmask = two_region_image((24, 20, 22))
    flat, fmask = two_region_image((48, 40))
    fast = dict(GRID, max_steps=3)
    assert DeepSVG(**fast).fit(vol, vmask).readout_check_ == READOUT_CHECK_VOLUME
    on_2d = DeepSVG(**fast).fit(flat, fmask)
    assert on_2d.readout_check_ == 0 and on_2d.readout_checks_ == [] and on_2d.kept_step_ == on_2d.n_iter_
    full = DeepSVG(**dict(fast, fit_scale=1, readout_check=1)).fit(vol, vmask)
    assert full.readout_check_ == 0 and full.readout_checks_ == []
    patches = DeepSVG(**dict(fast, fit_scale="auto", patch_size=8, readout_check=1)).fit(vol, vmask)
    assert patches.readout_check_ == 0


@pytest.mark.parametrize("options, name", [(dict(fit_scale=2), "grid nll"), (dict(fit_scale=2, fit_loss="full"), "nll"),
                                           (dict(fit_scale=1), "nll")])
def test_the_progress_names_the_grid_s_nll(options, name, monkeypatch, caplog):
    """On a grid the steps' NLL is the block means', not the read-out's the fit reports: the progress
    lines call it "grid nll" there, "nll" where the steps score the window's pixels."""
    monkeypatch.setenv("DEEPGMM_PROGRESS_SECONDS", "0")  # a line at every step
    img, mask = two_region_image((24, 20, 22))
    with caplog.at_level(logging.INFO, logger="deepgmm"):
        est = DeepSVG(**dict(GRID, max_steps=3, readout_check=0, **options)).fit(img, mask)
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DeepSVG: step ")]
    nll_steps = steps[GRID["pretrain_steps"]:]  # after the distillation's lines
    assert len(nll_steps) == est.n_iter_ == 3
    for line, value in zip(nll_steps, est.nll_history_):
        assert line.endswith(f", {name} {value:.5g}"), line


@pytest.mark.parametrize("bad", [-1, "often", 1.5])
def test_bad_values_are_refused(bad):
    vol, vmask = two_region_image((16, 12, 14))
    with pytest.raises(ValueError, match="readout_check"):
        DeepSVG(readout_check=bad, **GRID).fit(vol, vmask)


def test_the_memory_estimate_counts_the_kept_read_out():
    vol, vmask = two_region_image((40, 36, 32))
    image, mask = torch.from_numpy(vol), torch.from_numpy(vmask)
    base = dict(n_components=3, fit_scale=4, crop_margin=None)
    on = METHODS["deepsvg"].memory(image, mask, dict(base, readout_check="auto"))
    off = METHODS["deepsvg"].memory(image, mask, dict(base, readout_check=0))
    assert on - off == 2 * 3 * 40 * 36 * 32 * 4


def test_segment_and_the_cli_record_the_check(tmp_path, capsys):
    import nibabel as nib

    from deepgmm.cli import main

    vol, vmask = two_region_image((24, 20, 22))
    fast = {k: v for k, v in GRID.items() if k != "n_components"}
    seg = segment(vol, vmask, n_components=2, method="deepsvg", **fast)
    assert seg.settings["readout_check_used"] == READOUT_CHECK_VOLUME
    assert seg.settings["kept_step"] == seg.model.kept_step_ <= seg.n_iter
    nib.save(nib.Nifti1Image(vol[0], np.eye(4)), tmp_path / "x.nii.gz")
    base = ["segment", str(tmp_path / "x.nii.gz"), "-k", "2", "--method", "deepsvg", "--network", "tiny",
            "--max-steps", "4", "--pretrain-steps", "2", "--fit-scale", "2"]
    assert main(base + ["--readout-check", "0", "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    settings = json.loads((tmp_path / "a" / "summary.json").read_text())["settings"]
    assert settings["readout_check_used"] == 0 and "kept_step" not in settings
    capsys.readouterr()
    assert main(base + ["--readout-check", "1", "--out", str(tmp_path / "b")]) == 0, capsys.readouterr().err
    assert "kept by the read-out check" in capsys.readouterr().out
    settings = json.loads((tmp_path / "b" / "summary.json").read_text())["settings"]
    assert settings["readout_check_used"] == 1 and 0 <= settings["kept_step"] <= 4
    check_error(capsys, base + ["--readout-check", "often", "--out", str(tmp_path / "c")], "--readout-check")
