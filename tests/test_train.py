"""Cohort training: datasets, augmentation, checkpoints, resume after SIGKILL, stopping, CLI errors.

Tiny synthetic cohorts (8 cases of 2 x 32 x 32 NIfTI slices) and tiny networks on one CPU thread.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _helpers import check_error, make_cohort
from deepgmm.cli import main
from deepgmm.training import (AugmentConfig, FolderDataset, TrainConfig, augment_batch, load_checkpoint,
                              save_checkpoint, train)
from deepgmm.training.checkpoint import CHECKPOINT_FILE, MODEL_FILE, atomic_write_bytes
from deepgmm.preprocess import crop, window_around
from deepgmm.training.data import find_folder_cases

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = '{"features": [8, 16]}'


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny_config(**kw) -> TrainConfig:
    base = dict(method="deepsvg", n_components=2, network={"features": (8, 16)}, epochs=2, batch_size=4)
    base.update(kw)
    return TrainConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# ----------------------------------------------------------------------------- datasets
def test_folder_dataset_is_lazy_normalised_and_windowed(tmp_path):
    make_cohort(tmp_path / "d")
    ds = FolderDataset(tmp_path / "d", ["A", "B"], normalize="mask")
    assert len(ds) == 8 and ds.cases[0] == "case00"
    assert len(ds._cache.data) == 0  # nothing decoded until asked
    item = ds[0]
    assert item["image"].shape == (2, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].dtype == torch.bool and item["index"] == 0
    m = item["mask"].numpy()
    x = item["image"].numpy()[:, m]
    np.testing.assert_allclose(x.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(1), 1, atol=1e-4)
    # the training window: centred on the mask's bounding box, the pixels are the image's own
    ds2 = FolderDataset(tmp_path / "d", ["A", "B"], crop_size=[16, 20])
    u = ds2.unit(1)
    w = window_around(u.mask, [16, 20])
    assert ds2[1]["image"].shape == (2, 16, 20)
    np.testing.assert_array_equal(ds2[1]["image"].numpy(), u.image[:, w[0][0]:w[0][1], w[1][0]:w[1][1]])


def test_window_and_crop_pad_outside_the_image():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    w = window_around(mask, [4, 4])
    assert [hi - lo for lo, hi in w] == [4, 4]
    w = window_around(mask, [20, 4])  # longer than the image: centred, padded
    assert w[0] == (-5, 15)
    arr = np.arange(120).reshape(10, 12)
    out = crop(arr, w, fill=-1)
    assert out.shape == (20, 4) and (out[:5] == -1).all() and (out[15:] == -1).all()
    np.testing.assert_array_equal(out[5:15], arr[:, w[1][0]:w[1][1]])
    grown = window_around(mask, [4, 4], margin=3, grow=True)  # box 3 x 6 + 2 * 3, in steps of 16
    assert [hi - lo for lo, hi in grown] == [16, 16]
    assert window_around(mask, [20, 4], margin=1, grow=True)[0] == (-5, 15)  # already large enough


def test_3d_volumes_are_cut_into_slices_the_mask_touches(tmp_path):
    case = tmp_path / "d" / "vol"
    case.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for ch in ("A", "B"):
        nib.save(nib.Nifti1Image(rng.normal(size=(24, 24, 5)).astype(np.float32), np.eye(4)), case / f"{ch}.nii.gz")
    m = np.zeros((24, 24, 5), np.uint8)
    m[4:20, 4:20, [1, 3]] = 1
    nib.save(nib.Nifti1Image(m, np.eye(4)), case / "mask.nii.gz")
    ds = FolderDataset(tmp_path / "d", ["A", "B"])
    assert [r.slice_index for r in ds.refs] == [1, 3]
    assert ds[0]["image"].shape == (2, 24, 24)
    ds3 = FolderDataset(tmp_path / "d", ["A", "B"], spatial_dims=3)
    assert len(ds3) == 1 and ds3[0]["image"].shape == (2, 24, 24, 5)


def test_missing_channel_is_named_and_skip_bad_goes_on(tmp_path, caplog):
    make_cohort(tmp_path / "d", n=3)
    (tmp_path / "d" / "case01" / "B.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case01 has no file for channel 'B'.*--skip-bad"):
        find_folder_cases(tmp_path / "d", ["A", "B"])
    found = find_folder_cases(tmp_path / "d", ["A", "B"], skip_bad=True)
    assert [c.name for c in found] == ["case00", "case02"]
    assert "skipping case case01" in caplog.text


def test_corrupt_channel_file_is_named_and_skip_bad_goes_on(tmp_path):
    make_cohort(tmp_path / "d", n=3)
    (tmp_path / "d" / "case02" / "A.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match=r"case02.*A.nii.gz.*--skip-bad"):
        FolderDataset(tmp_path / "d", ["A", "B"])
    assert FolderDataset(tmp_path / "d", ["A", "B"], skip_bad=True).cases == ["case00", "case01"]


def test_shape_mismatch_inside_a_case_is_an_error(tmp_path):
    make_cohort(tmp_path / "d", n=2)
    nib.save(nib.Nifti1Image(np.zeros((30, 32, 1), np.float32), np.eye(4)), tmp_path / "d" / "case01" / "B.nii.gz")
    with pytest.raises(ValueError, match=r"case01: B.nii.gz has spatial shape \(30, 32\)"):
        find_folder_cases(tmp_path / "d", ["A", "B"])


# ----------------------------------------------------------------------------- augmentation
def _batch(B=3, shape=(24, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = torch.exp(-((axes[0] - 0.2) ** 2 + (axes[1] + 0.1) ** 2) * 3)  # a smooth, asymmetric blob
    img = torch.stack([blob, torch.randn(shape, generator=g)])[None].repeat(B, 1, *([1] * len(shape)))
    mask = img[:, 0] > 0.5
    img = img + 0.01 * torch.randn(img.shape, generator=g)
    return img.float(), mask


def test_augment_off_is_the_identity():
    img, mask = _batch()
    out, m = augment_batch(img, mask, [0, 1, 2], epoch=1, seed=0, config=AugmentConfig.off())
    assert torch.equal(out, img) and torch.equal(m, mask)


def test_flips_are_exact_and_shared_by_image_and_mask():
    img, mask = _batch(B=6)
    cfg = AugmentConfig(flip=1.0, rotate=0, scale=0, elastic=0, noise=0)
    out, m = augment_batch(img, mask, range(6), epoch=3, seed=1, config=cfg)
    assert torch.equal(out, img.flip(2).flip(3)) and torch.equal(m, mask.flip(1).flip(2))
    cfg = AugmentConfig(flip=0.5, rotate=0, scale=0, elastic=0, noise=0)
    out, m = augment_batch(img, mask, range(6), epoch=3, seed=1, config=cfg)
    seen = set()
    for b in range(6):
        variants = [(dx, dy) for dx in (0, 1) for dy in (0, 1)
                    if torch.equal(out[b], _flip(img[b], dx, dy, 1)) and torch.equal(m[b], _flip(mask[b], dx, dy, 0))]
        assert len(variants) == 1
        seen.add(variants[0])
    assert len(seen) > 1  # the draws differ between samples


def _flip(t, dx, dy, offset):
    if dx:
        t = t.flip(offset)
    if dy:
        t = t.flip(offset + 1)
    return t


@pytest.mark.parametrize("shape", [(24, 28), (16, 20, 6)])
def test_warps_keep_shapes_and_keep_the_mask_on_the_image(shape):
    img, mask = _batch(B=4, shape=shape)
    cfg = AugmentConfig(flip=0.5, rotate=15, scale=0.15, elastic=2.0, noise=0.0)
    out, m = augment_batch(img, mask, [5, 6, 7, 8], epoch=2, seed=3, config=cfg)
    assert out.shape == img.shape and m.shape == mask.shape and m.dtype == torch.bool
    assert not torch.equal(out, img)
    # the mask was drawn from channel 0's intensity: it must still match it after the warp
    agree = (m == (out[:, 0] > 0.5)).float().mean()
    assert agree > 0.97, float(agree)
    if len(shape) == 3:  # rotation and zoom act in-plane, the same on every slice
        cfg = AugmentConfig(flip=0.5, rotate=15, scale=0.15, elastic=0.0, noise=0.0)
        out, m = augment_batch(img, mask, [5, 6, 7, 8], epoch=2, seed=3, config=cfg)
        assert not torch.equal(m, mask)
        assert all(torch.equal(m[..., 0], m[..., z]) for z in range(shape[-1]))


def test_augmentation_depends_only_on_seed_epoch_and_index():
    img, mask = _batch(B=3)
    cfg = AugmentConfig()  # every augmentation on, noise included
    a, ma = augment_batch(img, mask, [10, 11, 12], epoch=4, seed=7, config=cfg)
    b, mb = augment_batch(img[[2, 0]], mask[[2, 0]], [12, 10], epoch=4, seed=7, config=cfg)  # other batch
    torch.testing.assert_close(b[0], a[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(b[1], a[0], rtol=0, atol=1e-6)
    assert torch.equal(mb[0], ma[2]) and torch.equal(mb[1], ma[0])
    c, _ = augment_batch(img, mask, [10, 11, 12], epoch=5, seed=7, config=cfg)
    d, _ = augment_batch(img, mask, [10, 11, 12], epoch=4, seed=8, config=cfg)
    assert not torch.allclose(c[0], a[0]) and not torch.allclose(d[0], a[0])


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_corruption(tmp_path):
    state = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "history": [{"nll": 1.5, "val_nll": None}]}
    p = save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(p)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["history"] == state["history"]
    blob = p.read_bytes()
    (tmp_path / "half.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"half.pt is truncated or half-written.*not loaded"):
        load_checkpoint(tmp_path / "half.pt")
    flipped = bytearray(blob)
    flipped[-20] ^= 0xFF
    (tmp_path / "flip.pt").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"flip.pt is corrupt: its SHA-256"):
        load_checkpoint(tmp_path / "flip.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"junk.pt is not a deepgmm checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    newer = blob.replace(b'"format_version": 1', b'"format_version": 99', 1)
    (tmp_path / "new.pt").write_bytes(newer)
    with pytest.raises(ValueError, match=r"new.pt was written by deepgmm .* format version 99.*reads format version 1"):
        load_checkpoint(tmp_path / "new.pt")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


# ----------------------------------------------------------------------------- training
def test_training_writes_the_model_folder_and_logs(tmp_path):
    make_cohort(tmp_path / "d")
    ds = FolderDataset(tmp_path / "d", ["A", "B"])
    res = train(tiny_config(epochs=3, val_fraction=0.25), ds, tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["checkpoint.pt", "config.json", "log.csv", "model.pt", "nll.png", "summary.json"]
    rows = list(csv.DictReader(open(tmp_path / "m" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"nll", "lr", "seconds", "val_nll", "samples"} <= set(rows[0])
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # polynomial decay
    assert int(rows[0]["samples"]) == 4  # 6 training cases, global batch 4: the trailing 2 are left out
    assert all(r["val_nll"] != "" for r in rows)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["channels"] == ["A", "B"] and cfg["format_version"] == 1 and cfg["method"] == "deepsvg"
    assert cfg["network"]["features"] == [8, 16] and cfg["network"]["in_channels"] == 2
    assert len(cfg["val_cases"]) == 2 and not set(cfg["val_cases"]) & set(cfg["train_cases"])
    assert (tmp_path / "m" / "nll.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = load_checkpoint(tmp_path / "m" / CHECKPOINT_FILE)
    assert ck["epoch"] == 3 and ck["finished"] and {"optimizer", "scheduler", "rng", "history"} <= set(ck)
    for k, v in weights(tmp_path / "m" / MODEL_FILE).items():
        assert torch.equal(v, res.network.state_dict()[k])


def test_stops_when_the_epoch_nll_settles(tmp_path):
    make_cohort(tmp_path / "d")
    ds = FolderDataset(tmp_path / "d", ["A", "B"])
    res = train(tiny_config(epochs=10, tol=1e9, min_epochs=3), ds, tmp_path / "m")
    assert res.converged and res.epochs == 3
    res = train(tiny_config(epochs=3, tol=0.0), ds, tmp_path / "m2")
    assert not res.converged and res.epochs == 3
    from deepgmm.training.train import _settled

    h = [{"nll": v} for v in (3.0, 2.0, 1.999, 1.5, 1.499, 1.498)]
    assert _settled(h[:3], 5e-3, 1) and not _settled(h[:3], 5e-3, 2)
    assert not _settled(h[:5], 5e-3, 2) and _settled(h, 5e-3, 2) and not _settled(h, 5e-3, 3)


def test_mu_prior_fixes_the_class_order(tmp_path):
    make_cohort(tmp_path / "d")
    ds = FolderDataset(tmp_path / "d", ["A", "B"], normalize="none")
    mu = [[0.5, 3.0], [3.0, 0.5]]  # class 1 = the second region, class 2 = the first
    res = train(tiny_config(epochs=3, mu_data=mu, lam=1.0, lr=3e-3), ds, tmp_path / "m")
    assert "reg_mu_prior" in res.history[0]
    from deepgmm.training import load_model

    u = ds.unit(0)
    pred = load_model(tmp_path / "m").predict(u.image, u.mask)
    left, right = pred.labels[10, 5], pred.labels[10, 25]
    assert (left, right) == (2, 1)


def _train_argv(data, out, *extra):
    return ["train", str(data), "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network", TINY,
            "--out", str(out), "--threads", "1", "--deterministic", "--no-progress", *extra]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    make_cohort(tmp_path / "d", n=12, shape=(40, 40))
    epochs = ["--epochs", "6", "--batch-size", "2", "--tol", "0"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "deepgmm"] + _train_argv(tmp_path / "d", tmp_path / "killed", *epochs)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "killed" / "log.csv"
    t0 = time.time()
    try:
        while time.time() - t0 < 120:
            if log.is_file() and len(log.read_text().splitlines()) >= 3:  # header + epochs 1, 2
                break
            if proc.poll() is not None:
                pytest.fail(f"training ended before it could be killed: {proc.stderr.read().decode()}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # a real, unannounced kill
    finally:
        proc.wait()
    killed_at = load_checkpoint(tmp_path / "killed" / CHECKPOINT_FILE)["epoch"]
    assert 2 <= killed_at < 6, killed_at
    assert not (tmp_path / "killed" / MODEL_FILE).exists()
    # a stray half-written temporary file from the kill is never picked up
    (tmp_path / "killed" / ".checkpoint.pt.deadbeef.tmp").write_bytes(b"DEEPGMM-CHECKPOINT\n{")
    rc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert main(_train_argv(tmp_path / "d", tmp_path / "full", *epochs)) == 0
    capsys.readouterr()
    a, b = weights(tmp_path / "killed" / MODEL_FILE), weights(tmp_path / "full" / MODEL_FILE)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = list(csv.DictReader(open(tmp_path / "killed" / "log.csv")))
    lb = list(csv.DictReader(open(tmp_path / "full" / "log.csv")))
    assert [r["nll"] for r in la] == [r["nll"] for r in lb]


# ----------------------------------------------------------------------------- command-line errors
def test_cli_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    check_error(capsys, _train_argv(tmp_path / "empty", tmp_path / "m"), "holds no case folder", "empty")
    check_error(capsys, _train_argv(tmp_path / "nowhere", tmp_path / "m"), "data folder not found")


def test_cli_missing_channel_then_skip_bad(tmp_path, capsys):
    make_cohort(tmp_path / "d")
    (tmp_path / "d" / "case03" / "A.nii.gz").unlink()
    check_error(capsys, _train_argv(tmp_path / "d", tmp_path / "m", "--epochs", "1"),
                "case case03 has no file for channel 'A'", "--skip-bad")
    assert main(_train_argv(tmp_path / "d", tmp_path / "m", "--epochs", "1", "--skip-bad")) == 0
    assert "case03" not in json.loads((tmp_path / "m" / "config.json").read_text())["train_cases"]


def test_cli_corrupt_checkpoint_and_bad_resume(tmp_path, capsys):
    make_cohort(tmp_path / "d")
    argv = _train_argv(tmp_path / "d", tmp_path / "m", "--epochs", "2")
    assert main(argv) == 0
    capsys.readouterr()
    check_error(capsys, argv, "already exists", "--resume")
    check_error(capsys, argv + ["--resume", "--lr", "0.5"], "cannot resume with --lr 0.5", "0.001")
    ck = tmp_path / "m" / CHECKPOINT_FILE
    blob = ck.read_bytes()
    ck.write_bytes(blob[: len(blob) - 100])  # a half-written checkpoint under the final name
    check_error(capsys, argv + ["--resume"], str(ck), "truncated or half-written")
    ck.write_bytes(b"garbage")
    check_error(capsys, argv + ["--resume"], str(ck), "not a deepgmm checkpoint")
    check_error(capsys, _train_argv(tmp_path / "d", tmp_path / "other", "--resume"), "cannot resume",
                "checkpoint.pt")


def test_cli_run_stopped_before_its_first_checkpoint(tmp_path, capsys):
    """A training interrupted in its first epoch leaves config.json only: both errors point to --overwrite
    (not to --resume, which has nothing to resume), and --overwrite then trains."""
    make_cohort(tmp_path / "d")
    argv = _train_argv(tmp_path / "d", tmp_path / "m", "--epochs", "1")
    assert main(argv) == 0
    (tmp_path / "m" / CHECKPOINT_FILE).unlink()
    for name in ("model.pt", "summary.json", "log.csv"):
        (tmp_path / "m" / name).unlink(missing_ok=True)
    capsys.readouterr()
    check_error(capsys, argv, "stopped before the first epoch ended", "nothing to resume", "--overwrite")
    check_error(capsys, argv + ["--resume"], "cannot resume: no checkpoint.pt", "--overwrite")
    assert main(argv + ["--overwrite"]) == 0
    assert (tmp_path / "m" / CHECKPOINT_FILE).is_file()


def test_cli_bad_settings(tmp_path, capsys):
    make_cohort(tmp_path / "d", n=3)
    check_error(capsys, _train_argv(tmp_path / "d", tmp_path / "m", "--batch-size", "4"),
                "batch size 4 is larger than the 3 training sample(s)")
    check_error(capsys, ["train", tmp_path / "d", "--method", "deepsvg", "--out", tmp_path / "m"],
                "needs the channel names")
    check_error(capsys, _train_argv(tmp_path / "d", tmp_path / "m", "--network", "huge"), "network must be one of")
    (tmp_path / "mu.txt").write_text("1 2 3\n4 5 6\n")
    check_error(capsys, _train_argv(tmp_path / "d", tmp_path / "m", "--mu-prior", tmp_path / "mu.txt"),
                "--mu-prior must have shape (n_components, n_channels) = (2, 2), got (2, 3)")
    check_error(capsys, _train_argv(tmp_path / "d", tmp_path / "m", "--lr", "-1"), "--lr must be >= 0")


def test_cli_train_records_the_prior_units(tmp_path, capsys):
    make_cohort(tmp_path / "d", n=3)
    (tmp_path / "mu.txt").write_text("1 2\n4 5\n")
    base = ["--mu-prior", str(tmp_path / "mu.txt"), "--epochs", "1", "--batch-size", "3"]
    assert main(_train_argv(tmp_path / "d", tmp_path / "a", *base)) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["prior_units"] == "image"
    assert main(_train_argv(tmp_path / "d", tmp_path / "b", *base, "--prior-units", "normalized")) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["prior_units"] == "normalized"
    capsys.readouterr()
    check_error(capsys, _train_argv(tmp_path / "d", tmp_path / "c", *base, "--prior-units", "z"),
                "argument --prior-units: invalid choice: 'z'")


def test_cli_train_options_set_real_config_fields():
    from deepgmm import cli
    from deepgmm.training.config import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    for opt in cli.TRAIN_OPTIONS:  # every flag sets a real field of the configuration
        key = opt.key.split(".")[0]
        assert key in fields, opt.flag
