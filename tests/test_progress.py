"""deepgmm.progress: a bar on a terminal, else one INFO line at most every N seconds and a last line."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepgmm.progress import DEFAULT_SECONDS, ENV_SECONDS, Progress, progress_seconds

LOG = logging.getLogger("deepgmm.test_progress")


class Clock:
    """A fake monotonic clock: ``advance`` moves it."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class File(io.StringIO):
    def isatty(self) -> bool:
        return False


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name]


def test_one_line_at_most_every_interval_then_a_final_line(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    clock = Clock()
    p = Progress(10, "fit", LOG, every=5, clock=clock, stream=File())
    assert not p.has_bar
    for i in range(1, 11):
        clock.t += 2.0  # a step every 2 s: lines at 6 s (step 3) and 12 s (step 6), 18 s (step 9)
        p.step(nll=1.0 / i)
    assert _lines(caplog) == ["fit: step 3/10 (30%), 6.0 s elapsed, nll 0.33333",
                              "fit: step 6/10 (60%), 12.0 s elapsed, nll 0.16667",
                              "fit: step 9/10 (90%), 18.0 s elapsed, nll 0.11111"]
    clock.t += 70
    p.close()
    assert _lines(caplog)[-1] == "fit: done, step 10/10 (100%) in 1m30s, nll 0.1"
    p.close()  # once only
    assert len(_lines(caplog)) == 4


def test_no_line_before_the_interval_and_the_final_line_settings(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    clock = Clock()
    with Progress(100, "short", LOG, every=5, clock=clock, stream=File(), unit="case") as p:
        for _ in range(100):
            clock.t += 0.01
            p.step()
    assert _lines(caplog) == ["short: done, case 100/100 (100%) in 1.0 s"]
    caplog.clear()
    # final=None: a last line only after an interval line (the caller logs its own result)
    with Progress(3, "quiet", LOG, every=5, clock=clock, stream=File(), final=None) as p:
        p.step(3)
    assert _lines(caplog) == []
    with Progress(3, "long", LOG, every=5, clock=clock, stream=File(), final=None) as p:
        clock.t += 6
        p.step()
        p.step(2)
    assert _lines(caplog) == ["long: step 1/3 (33%), 6.0 s elapsed", "long: done, step 3/3 (100%) in 6.0 s"]
    caplog.clear()
    with Progress(3, "never", LOG, every=0, clock=clock, stream=File(), final=False) as p:
        p.step()
    assert _lines(caplog) == ["never: step 1/3 (33%), 0.0 s elapsed"]


def test_an_error_ends_with_a_stopped_line(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    clock = Clock()
    with pytest.raises(RuntimeError):
        with Progress(8, "run", LOG, every=5, clock=clock, stream=File(), unit="slice", initial=2) as p:
            p.step(last="a")
            clock.t += 1
            raise RuntimeError("boom")
    assert _lines(caplog) == ["run: stopped at slice 3/8 (37%) after 1.0 s, last a"]


def test_a_terminal_gets_the_bar_and_no_lines(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    clock = Clock()
    term = Terminal()
    with Progress(4, "fit", LOG, every=0, clock=clock, stream=term) as p:
        assert p.has_bar
        for _ in range(4):
            clock.t += 10
            p.step(nll=0.5)
    assert _lines(caplog) == []
    assert "fit" in term.getvalue() and "4/4" in term.getvalue()


def test_a_bar_can_be_asked_for_or_refused(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    forced = File()
    with Progress(2, "forced", LOG, bar=True, stream=forced) as p:  # as `--progress` into a file
        p.step(2)
    assert "2/2" in forced.getvalue() and _lines(caplog) == []
    term, clock = Terminal(), Clock()
    with Progress(2, "off", LOG, bar=False, every=0, clock=clock, stream=term) as p:  # --no-progress: no bar
        assert not p.has_bar
        p.step()
    assert term.getvalue() == ""
    assert _lines(caplog) == ["off: step 1/2 (50%), 0.0 s elapsed", "off: done, step 1/2 (50%) in 0.0 s"]


def test_lines_follow_the_logging_level_and_no_logger_means_no_lines(caplog):
    caplog.set_level(logging.WARNING, logger=LOG.name)
    clock = Clock()
    with Progress(2, "fit", LOG, every=0, clock=clock, stream=File()) as p:
        p.step()
    with Progress(2, "fit", None, every=0, clock=clock, stream=File()) as p:
        p.step()
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Progress(2, "fit", None, every=0, clock=clock, stream=File()) as p:
        p.step()
    assert _lines(caplog) == []


def test_the_interval_from_the_argument_or_the_environment(monkeypatch):
    monkeypatch.delenv(ENV_SECONDS, raising=False)
    assert progress_seconds() == DEFAULT_SECONDS == 5.0
    assert progress_seconds(0.5) == 0.5
    monkeypatch.setenv(ENV_SECONDS, "30")
    assert progress_seconds() == 30.0 and progress_seconds(2) == 2.0
    assert Progress(1, "x", LOG, stream=File()).every == 30.0
    monkeypatch.setenv(ENV_SECONDS, "soon")
    with pytest.raises(ValueError, match=ENV_SECONDS):
        progress_seconds()
    monkeypatch.setenv(ENV_SECONDS, "-1")
    with pytest.raises(ValueError, match=ENV_SECONDS):
        progress_seconds()
    with pytest.raises(ValueError, match="every"):
        progress_seconds(float("nan"))


def test_the_deep_fit_logs_its_progress_and_its_results_do_not_change(caplog, monkeypatch):
    from deepgmm.deep import DeepSVG

    rng = np.random.default_rng(0)
    image = (np.where(np.arange(16)[None, :] < 8, -1.0, 1.0) + rng.normal(0, 0.3, (16, 16)))[None]
    kw = dict(n_components=2, network={"features": [4, 8]}, max_steps=6, min_steps=6, pretrain_steps=2,
              random_state=0)
    monkeypatch.setenv(ENV_SECONDS, "100")
    caplog.set_level(logging.INFO, logger="deepgmm")
    a = DeepSVG(**kw).fit(image)
    assert not [r for r in caplog.records if "elapsed" in r.getMessage()]
    monkeypatch.setenv(ENV_SECONDS, "0")
    caplog.clear()
    b = DeepSVG(**kw).fit(image)
    lines = [r.getMessage() for r in caplog.records if r.name == "deepgmm.deep.estimator"]
    assert lines[0].startswith("DeepSVG: the network computes in ")
    lines = lines[1:]
    assert lines[0].startswith("DeepSVG: step 1/8 (12%)") and "distil" in lines[0]
    assert lines[2].startswith("DeepSVG: step 3/8") and ", nll " in lines[2]
    assert lines[-2].startswith("DeepSVG: done, step 8/8 (100%) in ")
    assert lines[-1].startswith("DeepSVG: NLL ")
    assert a.nll_history_ == b.nll_history_
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_segment_v_with_stderr_in_a_file_logs_the_progress(tmp_path: Path):
    """End to end: ``deepgmm segment ... --method deepsvg -v`` with stderr redirected to a file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.where(np.arange(24)[None, :] < 12, 60, 180) + rng.normal(0, 10, (24, 24))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(tmp_path / "img.png")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), **{ENV_SECONDS: "0"})
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "deepgmm", "segment", str(tmp_path / "img.png"), "--method",
                               "deepsvg", "-k", "2", "--max-steps", "5", "--out",
                               str(tmp_path / "seg"), "-v"], stderr=err, stdout=subprocess.DEVNULL, env=env,
                              timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "deepgmm: info: DeepSVG: step 1/" in text and " elapsed, " in text
    assert "deepgmm: info: DeepSVG: done, step " in text
    assert "\r" not in text and "it/s" not in text  # no tqdm bar in the file


def test_training_logs_within_an_epoch_without_a_bar(tmp_path, caplog, monkeypatch, one_thread):
    from _helpers import make_cohort
    from deepgmm.training import FolderDataset, TrainConfig, train

    make_cohort(tmp_path / "d")
    ds = FolderDataset(tmp_path / "d", ["A", "B"])
    monkeypatch.setenv(ENV_SECONDS, "0")
    caplog.set_level(logging.INFO, logger="deepgmm")
    cfg = TrainConfig(method="deepsvg", n_components=2, network={"features": (8, 16)}, epochs=1, batch_size=2)
    train(cfg, ds, tmp_path / "m", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "deepgmm.training.train"]
    assert lines[0] in ("the network computes in float32", "the network computes in bfloat16")
    lines = [line for line in lines if line.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/1: batch 1/4 (25%), ") and ", nll " in lines[0]
    assert lines[4].startswith("epoch 1/1: done, batch 4/4 (100%) in ")
    assert lines[5].startswith("epoch 1/1: NLL ")


def test_the_experiments_progress_is_a_bar_or_lines(caplog, monkeypatch):
    from deepgmm.experiments._pool import progress_bar

    monkeypatch.setenv(ENV_SECONDS, "0")
    caplog.set_level(logging.INFO, logger="deepgmm")
    assert progress_bar(None, 0, "table1") is None
    monkeypatch.setattr(sys, "stderr", File())
    bar = progress_bar(None, 2, "table1")
    assert not bar.has_bar
    bar.step(last="101_z1: gmm 0.512")
    bar.close(ok=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "deepgmm.experiments._pool"]
    assert lines[0].startswith("table1: slice 1/2 (50%), ") and lines[0].endswith(", last 101_z1: gmm 0.512")
    assert lines[1].startswith("table1: stopped at slice 1/2 (50%) after ")
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_bar(None, 2, "table1").has_bar and progress_bar(True, 2, "x").has_bar
    assert not progress_bar(False, 2, "table1").has_bar
