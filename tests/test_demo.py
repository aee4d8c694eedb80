"""Tests of ``deepgmm.demo.run_demo`` (quick mode: a 96x96 phantom)."""

from __future__ import annotations

import importlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepgmm.demo as demo
from deepgmm.choices import METHODS
from deepgmm.demo import QUICK_SHAPE, run_demo
from deepgmm.phantom import make_phantom

seg_mod = importlib.import_module("deepgmm.segmentation")

CLASSES = ["blood pool", "myocardium", "edema", "scar"]
# Measured: quick demo, seed 0: GMM 0.595, SVGMM 0.558; over phantom seeds 0-29 at 96x96 the
# minimum was 0.46 for both; labels drawn at random score about 0.23.
MIN_MEAN_DICE = 0.45


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "d"
    return out, run_demo(out, quick=True)


def _visible(folder: Path) -> list[str]:
    """Names in ``folder``, without OutputDir's hidden marker file."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _brute_force_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, list[float]]:
    """Best mean Dice over all permutations of the 4 predicted labels (independent of deepgmm.metrics)."""
    best = (-1.0, [])
    for perm in itertools.permutations(range(1, 5)):
        d = []
        for p, t in zip(perm, range(1, 5)):
            a, b = pred == p, truth == t
            d.append(2.0 * (a & b).sum() / (a.sum() + b.sum()))
        if sum(d) > 4 * best[0]:
            best = (sum(d) / 4, d)
    return best


def test_writes_figure_and_results(quick_run):
    out, res = quick_run
    assert set(res) >= {"table", "results", "figure"}
    assert res["figure"] == out.absolute() / "demo.png"
    assert _visible(out) == ["demo.png", "results.json"]
    with Image.open(out / "demo.png") as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"].keys() == res["results"].keys()
    assert saved["matching"] == "hungarian"
    assert saved["phantom"]["shape"] == list(QUICK_SHAPE)
    assert saved["table"] == res["table"]
    # no temporary folders left beside it
    assert [p.name for p in out.parent.iterdir()] == ["d"]


def test_every_known_method_is_run_or_skipped(quick_run):
    _, res = quick_run
    assert set(res["results"]) | set(res["skipped"]) == set(METHODS)
    assert not set(res["results"]) & set(res["skipped"])
    assert {"gmm", "svgmm"} <= set(res["results"])
    for m in res["skipped"]:
        assert m not in seg_mod.METHODS
    for m, r in res["results"].items():
        assert r["options"] == demo.QUICK_OPTIONS.get(m, {})
        assert set(r["dice"]) == set(CLASSES) and 0.0 <= r["mean_dice"] <= 1.0


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_em_dice_on_the_phantom(quick_run, method):
    _, res = quick_run
    r = res["results"][method]
    assert list(r["dice"]) == CLASSES
    assert r["mean_dice"] == pytest.approx(np.mean(list(r["dice"].values())))
    assert r["mean_dice"] > MIN_MEAN_DICE
    assert r["dice"]["blood pool"] > 0.6 and r["dice"]["myocardium"] > 0.6
    assert r["seconds"] >= 0 and np.isfinite(r["nll"])
    assert sorted(r["mapping"].values()) == [1, 2, 3, 4]


def test_dice_matches_an_independent_computation(quick_run):
    _, res = quick_run
    ph = make_phantom(shape=QUICK_SHAPE, seed=0)
    seg = seg_mod.segment(ph.image, ph.mask, method="gmm", n_components=4, normalize="mask", random_state=0)
    mean, per_class = _brute_force_dice(seg.labels, ph.labels)
    r = res["results"]["gmm"]
    assert r["mean_dice"] == pytest.approx(mean, abs=1e-9)
    np.testing.assert_allclose([r["dice"][c] for c in CLASSES], per_class, atol=1e-9)


def test_table(quick_run):
    _, res = quick_run
    lines = res["table"].splitlines()
    assert lines[0].split("|")[1:-1] == [" method ", " blood ", " myocardium ", " edema ", " scar ", " mean ",
                                         " seconds "]
    rows = {ln.split("|")[1].strip(): ln.split("|")[2:-1] for ln in lines[2:]}
    assert rows.keys() == res["results"].keys()
    for m, cells in rows.items():
        r = res["results"][m]
        expected = [r["dice"][c] for c in CLASSES] + [r["mean_dice"]]
        np.testing.assert_allclose([float(c) for c in cells[:5]], expected, atol=5e-4)


def test_refuses_an_existing_folder(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists; pass --overwrite") as info:
        run_demo(out, quick=True, methods=["gmm"])
    assert "\n" not in str(info.value)
    assert (out / "keep.txt").read_text() == "mine"
    # overwrite never deletes a folder that is not a demo output
    with pytest.raises(ValueError, match="not empty and was not written by deepgmm"):
        run_demo(out, quick=True, overwrite=True, methods=["gmm"])
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_overwrite_replaces_a_previous_demo(tmp_path):
    out = tmp_path / "d"
    run_demo(out, quick=True, methods=["gmm"])
    (out / "extra.txt").write_text("old")
    res = run_demo(out, quick=True, overwrite=True, methods=["svgmm"])
    assert _visible(out) == ["demo.png", "results.json"]
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["svgmm"] == list(res["results"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_refuses_a_file(tmp_path):
    f = tmp_path / "d"
    f.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        run_demo(f, quick=True, overwrite=True, methods=["gmm"])
    assert f.read_text() == "x"


def _boom(*args, **kwargs):
    raise RuntimeError("figure failed")


def test_failure_midway_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "_save_figure", _boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        run_demo(tmp_path / "d", quick=True, methods=["gmm", "svgmm"])
    assert list(tmp_path.iterdir()) == []
    # missing parent folders are not left behind either
    with pytest.raises(RuntimeError, match="figure failed"):
        run_demo(tmp_path / "a" / "b" / "d", quick=True, methods=["gmm"])
    assert list(tmp_path.iterdir()) == []


def test_failure_during_overwrite_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "d"
    run_demo(out, quick=True, methods=["gmm"])
    before = (out / "results.json").read_text()
    monkeypatch.setattr(demo, "_save_figure", _boom)
    with pytest.raises(RuntimeError):
        run_demo(out, quick=True, overwrite=True, methods=["svgmm"])
    assert (out / "results.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_unavailable_methods_are_skipped_other_errors_raised(tmp_path, monkeypatch):
    real = seg_mod.segment

    def fake(image, mask=None, *, method="gmm", **kw):
        if method == "svgmm":
            raise ValueError(f"method {method!r} is not available in this installation")
        if method in ("deepg", "deepsvg"):
            raise ValueError(f"method {method!r} is not available in this installation")
        return real(image, mask, method=method, **kw)

    monkeypatch.setattr(seg_mod, "segment", fake)
    res = run_demo(tmp_path / "a", quick=True)
    assert list(res["results"]) == ["gmm"]
    assert res["skipped"] == ["svgmm", "deepg", "deepsvg"]
    # a method asked for by name is not skipped silently
    with pytest.raises(ValueError, match="not available in this installation"):
        run_demo(tmp_path / "b", quick=True, methods=["svgmm"])
    assert not (tmp_path / "b").exists()

    def broken(image, mask=None, *, method="gmm", **kw):
        raise ValueError("something else went wrong")

    monkeypatch.setattr(seg_mod, "segment", broken)
    with pytest.raises(ValueError, match="something else"):
        run_demo(tmp_path / "c", quick=True)
    assert not (tmp_path / "c").exists()


def test_default_folder_and_no_printing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    res = run_demo(quick=True, methods=["gmm"])
    assert (tmp_path / "deepgmm-demo" / "demo.png").is_file()
    assert res["figure"] == tmp_path / "deepgmm-demo" / "demo.png"
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(methods=["kmeans"]), "methods must be one of"),
        (dict(methods="gmm"), "list of method names"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(quick="yes"), "quick must be True or False"),
        (dict(overwrite=1), "overwrite must be True or False"),
    ],
)
def test_argument_errors(tmp_path, kwargs, match):
    kwargs.setdefault("quick", True)
    with pytest.raises(ValueError, match=match):
        run_demo(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()
