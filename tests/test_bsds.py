"""BSDS500 in the fit runner: colour conversion, photograph features, Kim & Kanezaki's algorithm,
the region scoring of the runner, the peers and ``deepgmm bsds``.

The runner runs on a synthetic BSDS500-like folder (tiny JPEGs and .mat ground truths); one test
loads a real image and is skipped when the data are absent (``$DEEPGMM_BSDS``, default
../shared/data/bsds500 beside the repository).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from deepgmm import region_metrics as rm
from deepgmm.cli import main
from deepgmm.experiments import bsds as ebsds
from deepgmm.experiments.kim_kanezaki import kim_kanezaki
from deepgmm.experiments.regions import RegionScoring, paint_regions, renumber
from deepgmm.preprocess import photo_features, rgb_to_lab

BSDS = Path(os.environ.get("DEEPGMM_BSDS", Path(__file__).parents[1].parent / "shared/data/bsds500"))

try:
    import sklearn  # noqa: F401

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover
    HAVE_SKLEARN = False


# ----------------------------------------------------------------------------- colour and features
def test_rgb_to_lab_matches_reference_values():
    # CIE L*a*b* (D65) of sRGB primaries, white, black and grey 128 (Lindbloom's calculator, 4 decimals)
    rgb = np.array([[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0], [128, 128, 128]], float)
    want = np.array([[100.0, 0.0, 0.0], [53.2408, 80.0925, 67.2032], [87.7347, -86.1827, 83.1793],
                     [32.2970, 79.1875, -107.8602], [0.0, 0.0, 0.0], [53.5850, 0.0, 0.0]])
    got = rgb_to_lab(rgb.T.reshape(3, 2, 3)).reshape(3, -1).T
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_rgb_to_lab_is_per_pixel_and_checks_its_input():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (3, 5, 7))
    lab = rgb_to_lab(img)
    assert lab.shape == (3, 5, 7)
    np.testing.assert_allclose(lab[:, 2, 3], rgb_to_lab(img[:, 2:3, 3:4])[:, 0, 0])
    np.testing.assert_allclose(rgb_to_lab(img / 255.0, max_value=1.0), lab, atol=1e-9)
    assert (lab[0] >= 0).all() and (lab[0] <= 100 + 1e-9).all()
    with pytest.raises(ValueError, match=r"\(3, \*spatial\)"):
        rgb_to_lab(np.zeros((4, 2, 2)))


def test_photo_features():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 255, (3, 6, 10))
    f = photo_features(rgb)
    assert f.shape == (3, 6, 10) and f.dtype == np.float32
    np.testing.assert_allclose(f.reshape(3, -1).mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(f.reshape(3, -1).std(1), 1, atol=1e-5)
    g = photo_features(rgb, "lab", position_weight=2.0)
    assert g.shape == (5, 6, 10)
    s = 10 / np.sqrt(12.0)  # the longer side's coordinate spread, for both axes
    np.testing.assert_allclose(np.diff(g[3, :, 0]), 2.0 / s, rtol=1e-5)
    np.testing.assert_allclose(np.diff(g[4, 0, :]), 2.0 / s, rtol=1e-5)
    np.testing.assert_allclose(g[3:].reshape(2, -1).mean(1), 0, atol=1e-6)
    with pytest.raises(ValueError, match="colour_space"):
        photo_features(rgb, "hsv")
    with pytest.raises(ValueError, match="position_weight"):
        photo_features(rgb, position_weight=-1)


def test_segment_in_lab_is_segment_of_the_converted_image(tmp_path, capsys):
    from deepgmm import segment

    rgb = _two_regions(12, 14).astype(np.float32)
    a = segment(rgb, method="gmm", n_components=2, colour_space="lab")
    b = segment(rgb_to_lab(rgb).astype(np.float32), method="gmm", n_components=2)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-5)
    assert a.settings["colour_space"] == "lab"
    with pytest.raises(ValueError, match="3 channels"):
        segment(rgb[:2], method="gmm", n_components=2, colour_space="lab")
    with pytest.raises(ValueError, match="colour_space"):
        segment(rgb, method="gmm", n_components=2, colour_space="hsv")
    Image.fromarray(rgb.astype(np.uint8).transpose(1, 2, 0)).save(tmp_path / "rgb.png")
    assert main(["segment", str(tmp_path / "rgb.png"), "--method", "gmm", "-k", "2", "--colour-space", "lab",
                 "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "lab" in json.dumps(summary)
    capsys.readouterr()


# ----------------------------------------------------------------------------- Kim & Kanezaki
def _two_regions(h=16, w=20, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((3, h, w))
    img[:, :, w // 2:] = [[[200.0]], [[40.0]], [[90.0]]]
    img[:, :, : w // 2] = [[[30.0]], [[160.0]], [[60.0]]]
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255)


def test_kim_kanezaki_separates_two_flat_regions():
    img = _two_regions()
    res = kim_kanezaki(img, seed=0, channels=16, n_conv=2, max_iter=60)
    left, right = set(np.unique(res.labels[:, :10])), set(np.unique(res.labels[:, 10:]))
    assert not left & right  # no label spans both regions
    assert res.labels.min() == 1 and res.labels.max() == len(left | right)  # renumbered 1..n
    assert res.n_labels[-1] == len(left | right) and len(res.n_labels) == res.n_iter


def test_kim_kanezaki_stopping_rules_and_settings():
    img = _two_regions()
    res = kim_kanezaki(img, seed=0, channels=16, n_conv=1, max_iter=5, min_labels=16)
    assert res.stopped and res.n_iter == 1  # 16 responses: at most 16 labels after the first step
    res = kim_kanezaki(img, seed=0, channels=16, n_conv=1, max_iter=3, min_labels=1)
    assert not res.stopped and res.n_iter == 3
    again = kim_kanezaki(img, seed=0, channels=16, n_conv=1, max_iter=3, min_labels=1)
    np.testing.assert_array_equal(res.labels, again.labels)  # seeded
    small = kim_kanezaki(img[:, :15, :19], seed=0, channels=8, n_conv=1, max_iter=2, downsample=4)
    assert small.labels.shape == (15, 19)
    np.testing.assert_array_equal(small.labels[12:], np.repeat(small.labels[11:12], 3, axis=0))  # the border block
    with pytest.raises(ValueError, match="unknown setting"):
        kim_kanezaki(img, nconv=2)
    with pytest.raises(ValueError, match="max_iter"):
        kim_kanezaki(img, max_iter=0)


# ----------------------------------------------------------------------------- region scoring
def test_region_scoring_record_and_helpers():
    rng = np.random.default_rng(2)
    truths = np.stack([rng.integers(1, 4, (6, 7)), rng.integers(1, 3, (6, 7))])
    labels = rng.integers(5, 9, (6, 7)) * 3
    case = ebsds.Case((1,), "1", "one", np.zeros((3, 6, 7)), None, truths)
    fields, pred = RegionScoring().record(None, case, labels, "none", None)
    want = rm.region_scores(labels, list(truths))
    for k in ("pri", "voi", "covering", "miou"):
        assert fields[k] == pytest.approx(want[k])
    assert fields["miou_fine"] == pytest.approx(rm.kk_miou(labels, list(truths), "fine"))
    assert fields["segments"] == len(np.unique(labels)) and fields["matching"] == "none"
    assert pred.min() == 1 and pred.max() == fields["segments"]
    assert rm.variation_of_information(pred, labels) == pytest.approx(0.0, abs=1e-12)  # same partition
    assert renumber(np.full((2, 2), 7)).tolist() == [[1, 1], [1, 1]]


def test_paint_regions_uses_each_regions_mean_colour():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (5, 6))
    rgb = rng.uniform(0, 1, (5, 6, 3))
    out = paint_regions(labels, rgb, boundaries=False)
    for v in range(3):  # a naive loop over the regions
        np.testing.assert_allclose(out[labels == v], np.broadcast_to(rgb[labels == v].mean(0), out[labels == v].shape))


# ----------------------------------------------------------------------------- the runner
def _write_bsds(root: Path, split="val", ids=(12, 3, 40)) -> Path:
    rng = np.random.default_rng(4)
    (root / "images" / split).mkdir(parents=True)
    (root / "groundTruth" / split).mkdir(parents=True)
    for n, i in enumerate(ids):
        img = _two_regions(24, 32, seed=n).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(img).save(root / "images" / split / f"{i}.jpg", quality=95)
        left = np.ones((24, 32), np.uint16)
        left[:, 16:] = 2
        finer = left.copy()
        finer[:8, 16:] = 3
        cell = np.empty((1, 2), dtype=object)
        for j, seg in enumerate((left, finer)):
            cell[0, j] = {"Segmentation": seg, "Boundaries": np.zeros(seg.shape, bool)}
        scipy.io.savemat(root / "groundTruth" / split / f"{i}.mat", {"groundTruth": cell})
    rng.random()
    return root


def test_select_images(tmp_path):
    root = _write_bsds(tmp_path / "b")
    assert ebsds.select_images(root, "val") is None
    assert ebsds.select_images(root, "val", every=2) == [3, 40]
    assert ebsds.select_images(root, "val", limit=2) == [3, 12]
    assert ebsds.select_images(root, "val", images=[40]) == [40]
    with pytest.raises(ValueError, match="not both"):
        ebsds.select_images(root, "val", images=[40], every=2)
    with pytest.raises(ValueError, match="every"):
        ebsds.select_images(root, "val", every=0)
    with pytest.raises(ValueError, match=r"\[7\] not found"):
        ebsds.bsds_dataset(root).load([7])


def test_run_bsds_end_to_end_and_resume(tmp_path):
    root = _write_bsds(tmp_path / "b")
    out = tmp_path / "run"
    methods = ["gmm", "kim_kanezaki"] + (["kmeans", "kmeans_xy", "sklearn_gmm"] if HAVE_SKLEARN else [])
    kk = {"kim_kanezaki": {"channels": 8, "n_conv": 1, "max_iter": 3}}
    res = ebsds.run_bsds(root, out, split="val", limit=2, methods=methods, options=kk, progress=False)
    assert res.complete and res.added == 2 * len(methods)
    doc = json.loads((out / "results.json").read_text())
    assert doc["experiment"] == "bsds500-val" and doc["config"]["images"] == [[3], [12]]
    case = ebsds.bsds_dataset(root).load([3])[0]
    for r in doc["records"]:
        pred = np.load(out / "predictions" / f"{r['image']}_{r['method']}.npy")
        truths = list(ebsds.bsds_dataset(root).load([r["image"]])[0].truth)
        assert r["pri"] == pytest.approx(rm.probabilistic_rand_index(pred, truths))
        assert r["voi"] == pytest.approx(rm.mean_variation_of_information(pred, truths))
        assert r["seconds"] > 0 and r["matching"] == "none"
    gmm = [r for r in doc["records"] if r["method"] == "gmm"]
    assert all(r["segments"] == ebsds.N_COMPONENTS for r in gmm)
    n_features = 3 + 2 * (ebsds.POSITION_WEIGHT > 0)
    assert case.image.shape == (n_features, 24, 32) and case.truth.shape == (2, 24, 32)
    table = (out / "table.md").read_text()
    assert "| GMM | 2 |" in table and "Kim & Kanezaki" in table and "PRI" in table
    assert (out / "overview.png").is_file() and (out / "figures" / "3.png").is_file()
    assert doc["summary"]["gmm"]["pri"]["mean"] == pytest.approx(np.mean([r["pri"] for r in gmm]))
    again = ebsds.run_bsds(root, out, split="val", methods=methods, options=kk, resume=True, progress=False)
    assert again.added == 0 and again.complete


def test_bsds_command(tmp_path, capsys):
    root = _write_bsds(tmp_path / "b")
    out = tmp_path / "cli"
    assert main(["bsds", "--data", str(root), "--out", str(out), "--images", "40", "--methods", "gmm",
                 "--no-figures"]) == 0
    assert "| GMM | 1 |" in capsys.readouterr().out
    assert not (out / "figures" / "40.png").exists() and (out / "overview.png").is_file()
    doc = json.loads((out / "results.json").read_text())
    assert doc["command"].startswith("deepgmm bsds --data") and "--images 40" in doc["command"]
    assert main(["bsds", "--data", str(root), "--out", str(tmp_path / "x"), "--every", "0"]) == 2
    assert "--every" in capsys.readouterr().err
    assert main(["bsds", "--data", str(root), "--out", str(tmp_path / "y"), "--images", "3", "--every", "2"]) == 2
    assert "--every" in capsys.readouterr().err
    assert main(["bsds", "--data", str(root), "--out", str(tmp_path / "z"), "--methods", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.skipif(not (BSDS / "images" / "val").is_dir(), reason=f"BSDS500 data not found at {BSDS}")
def test_a_real_bsds500_photograph():
    ds = ebsds.bsds_dataset(BSDS, "val")
    first = ebsds.select_images(BSDS, "val", limit=1)
    case = ds.load(first)[0]
    assert case.image.shape[0] == len(ds.channels) and case.image.shape[1:] in ((321, 481), (481, 321))
    assert case.truth.shape[1:] == case.image.shape[1:] and 4 <= case.truth.shape[0] <= 9
    assert case.source.rgb.dtype == np.uint8


def test_peers_without_their_package_are_reported_unavailable(monkeypatch):
    from deepgmm.experiments import bsds_peers

    assert bsds_peers.unavailable("kim_kanezaki") is None  # torch only
    assert bsds_peers.unavailable("gmm") is None  # not a peer
    real = bsds_peers.importlib.import_module

    def fake(name, *a, **k):
        if name.split(".")[0] == "sklearn":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(bsds_peers.importlib, "import_module", fake)
    for m in ("kmeans", "kmeans_xy", "sklearn_gmm"):
        assert "not installed" in bsds_peers.unavailable(m)


def test_bsds_command_split_over_shards_equals_one_run(tmp_path, capsys):
    root = _write_bsds(tmp_path / "b")
    common = ["bsds", "--data", str(root), "--methods", "gmm,svgmm", "--no-figures"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    for i in (1, 2):
        assert main(common + ["--out", str(tmp_path / "split"), "--shard", f"{i}/2"]) == 0
    assert main(["bsds", "--data", str(root), "--out", str(tmp_path / "split"), "--merge"]) == 0
    one, split = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "split"))

    def strip(records):
        return sorted((r["method"], r["image"], r["pri"], r["voi"], r["covering"]) for r in records)

    assert strip(split["records"]) == strip(one["records"]) and len(one["records"]) == 6
    assert not (tmp_path / "split" / "shards").exists()
    assert main(common + ["--out", str(tmp_path / "bad"), "--shard", "3/2"]) == 2
    assert "--shard" in capsys.readouterr().err
