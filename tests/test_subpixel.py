"""``grid_output="subpixel"``: a network on the grid of blocks that takes each block's pixels as
channels and returns one logit vector per pixel (:mod:`deepgmm.deep.grid`).

Checked against loops over the blocks, ``torch.nn.functional.pixel_unshuffle`` (2D), the
full-resolution NLL of the window's pixels, the unchanged default and full-resolution paths (same
bits), the memory estimate's terms and the errors.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import check_error, two_region_image
from deepgmm import segment
from deepgmm.choices import GRID_OUTPUTS
from deepgmm.deep import DeepG, DeepSVG
from deepgmm.deep.grid import SubpixelNet, depth_to_space, space_to_depth

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(features=(8, 16), norm="instance")
FAST = dict(network=TINY, max_steps=4, min_steps=0, pretrain_steps=2)


def _space_to_depth_loops(x: np.ndarray, s: int) -> np.ndarray:
    """The reference: pixel ``(i, j[, k])`` of block ``(a, b[, c])`` of channel ``c0`` goes to channel
    ``c0 * s**d + (i * s + j)[ * s + k]`` at ``(a, b[, c])``; pixels past the image are 0."""
    B, C, *S = x.shape
    d = len(S)
    grid = [-(-n // s) for n in S]
    out = np.zeros((B, C * s ** d, *grid), dtype=x.dtype)
    for pos in np.ndindex(*S):
        block = tuple(p // s for p in pos)
        offset = 0
        for p in pos:
            offset = offset * s + p % s
        for c in range(C):
            out[(slice(None), c * s ** d + offset) + block] = x[(slice(None), c) + pos]
    return out


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 2, 5, 6, 7), (1, 1, 4, 4, 4)])
@pytest.mark.parametrize("s", [1, 2, 3])
def test_space_to_depth_matches_loops_and_inverts(shape, s):
    x = torch.randn(shape, dtype=torch.float64)
    y = space_to_depth(x, s)
    np.testing.assert_array_equal(y.numpy(), _space_to_depth_loops(x.numpy(), s))
    assert torch.equal(depth_to_space(y, s, tuple(shape[2:])), x)


def test_space_to_depth_is_pixel_unshuffle_in_2d():
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(space_to_depth(x, 4), F.pixel_unshuffle(x, 4))
    assert torch.equal(depth_to_space(F.pixel_unshuffle(x, 4), 4, (8, 12)), F.pixel_shuffle(F.pixel_unshuffle(x, 4), 4))


def test_subpixel_net_returns_one_logit_vector_per_pixel():
    """With a per-pixel identity inside (a 1x1 convolution of identity weights), the wrapper returns
    its input: every pixel's output comes from that pixel's own channel of its block."""

    class Identity1x1(torch.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(n, n, 1, bias=False)
            torch.nn.init.eye_(self.conv.weight.view(n, n))

        def forward(self, x):
            return self.conv(x)

    x = torch.randn(1, 2, 9, 7, 5)
    net = SubpixelNet(Identity1x1(2 * 27), 3)
    assert net.grid_shape(tuple(x.shape)) == (1, 54, 3, 3, 2)
    torch.testing.assert_close(net(x), x)


@pytest.mark.parametrize("cls", [DeepSVG, DeepG])
def test_subpixel_fit_scores_the_window_pixels(cls):
    """The steps, the distillation and the read-out are at full resolution: with a learning rate too
    small to move the network the last step's NLL is the final ``nll_``; the soft labels are the
    network's softmax (prediction on the fitted image gives them back); the network takes the
    block's ``s**3`` pixels as channels."""
    img, mask = two_region_image((24, 20, 22))
    est = cls(n_components=2, fit_scale=2, grid_output="subpixel", **dict(FAST, lr=1e-12, max_steps=2)).fit(img, mask)
    assert est.fit_scale_ == 2 and est.grid_output_ == "subpixel"
    assert isinstance(est.network_, SubpixelNet)
    assert est.network_config_.in_channels == 8 and est.network_config_.out_channels == 2 * 8
    assert est.nll_history_[-1] == pytest.approx(est.nll_, abs=1e-5)
    np.testing.assert_allclose(est.predict_proba(img, mask), est.probabilities_, atol=1e-6)
    np.testing.assert_allclose(est.probabilities_.sum(0)[mask], 1.0, atol=1e-5)
    assert est.labels_.shape == mask.shape and set(np.unique(est.labels_[mask])) <= {1, 2}


def test_subpixel_is_a_no_op_at_full_resolution_and_the_default_is_unchanged():
    img, mask = two_region_image((20, 18, 16))
    base = DeepSVG(n_components=2, fit_scale=1, **FAST).fit(img, mask)
    new = DeepSVG(n_components=2, fit_scale=1, grid_output="subpixel", **FAST).fit(img, mask)
    np.testing.assert_array_equal(base.probabilities_, new.probabilities_)
    assert base.nll_history_ == new.nll_history_ and new.grid_output_ == "interpolated"
    a = DeepSVG(n_components=2, fit_scale=2, **FAST).fit(img, mask)
    b = DeepSVG(n_components=2, fit_scale=2, grid_output="interpolated", **FAST).fit(img, mask)
    np.testing.assert_array_equal(a.probabilities_, b.probabilities_)
    assert DeepSVG().grid_output == GRID_OUTPUTS[0] == "interpolated"


@pytest.mark.parametrize("bad", ["pixels", None, 1])
def test_a_bad_value_is_an_error(bad):
    img, mask = two_region_image((12, 12, 12))
    with pytest.raises(ValueError, match="grid_output"):
        DeepSVG(n_components=2, fit_scale=2, grid_output=bad, **FAST).fit(img, mask)


def test_predict_on_another_image_checks_its_channels():
    img, mask = two_region_image((16, 16, 16))
    est = DeepSVG(n_components=2, fit_scale=2, grid_output="subpixel", **FAST).fit(img, mask)
    assert est.predict(img[:, 2:, :, 1:], mask[2:, :, 1:]).shape == (14, 16, 15)
    with pytest.raises(ValueError, match="fitted on 1 channel"):
        est.predict(np.concatenate([img, img]), mask)


def test_memory_estimate_counts_the_subpixel_network_and_the_full_resolution_loss():
    from deepgmm.deep.unet import activation_bytes, network_config, parameter_bytes
    from deepgmm.segmentation.methods import METHODS

    method = METHODS["deepsvg"]
    image, mask = torch.zeros((1, 150, 124, 148)), torch.ones((150, 124, 148), dtype=torch.bool)
    base = {"n_components": 4, "crop_margin": None, "fit_scale": 4, "precision": "float32"}
    sub = method.memory(image, mask, {**base, "grid_output": "subpixel"})
    n_full, K = 150 * 124 * 148, 4
    loss = (12 * (K + 1) + 8 * (K + 1)) * 4
    cfg = network_config(DeepSVG().network, spatial_dims=3, in_channels=64, out_channels=K * 64)
    assert sub == activation_bytes(cfg, (38, 31, 37)) + loss * n_full + 2 * K * n_full * 4 + parameter_bytes(cfg)
    same = {"n_components": 4, "crop_margin": None, "fit_scale": 1, "precision": "float32"}
    assert method.memory(image, mask, same) == method.memory(image, mask, {**same, "grid_output": "subpixel"})


def test_segment_and_the_cli_pass_it_through(tmp_path, capsys):
    import nibabel as nib

    from deepgmm.cli import main

    img, mask = two_region_image((24, 20, 22))
    seg = segment(img, mask, method="deepsvg", n_components=2, spare_classes=0, fit_scale=2, grid_output="subpixel",
                  **FAST)
    assert seg.settings["grid_output"] == "subpixel" and seg.model.grid_output_ == "subpixel"
    nib.save(nib.Nifti1Image(img[0].astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "m.nii.gz")
    base = ["segment", str(tmp_path / "x.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"), "-k", "2",
            "--method", "deepsvg", "--spare-classes", "0", "--fit-scale", "2", "--network", "tiny", "--max-steps", "4",
            "--pretrain-steps", "2"]
    rc = main(base + ["--grid-output", "subpixel", "--out", str(tmp_path / "r")])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["settings"]["grid_output"] == "subpixel"
    check_error(capsys, base + ["--grid-output", "pixels", "--out", str(tmp_path / "e")], "--grid-output")
