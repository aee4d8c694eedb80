"""Tests of the MyoPS table commands (deepgmm.experiments.myops and its runners, deepgmm.cli.myops).

Real data (skipped when absent): a fast ``table1 --methods gmm,svgmm --cases 101,102`` run
through the command's parser, checked against independent references (Dice recomputed from the
saved predictions, one fit recomputed with ``segment``, the summary recomputed from the
records); ``--resume`` re-runs only deleted records; ``--jobs 2`` gives the same records; an
interruption leaves a valid ``results.json``; a tiny Table 2. Error paths run on tiny synthetic
folders with the MyoPS layout written here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _helpers import count_segment_fits
from deepgmm.datasets import myops
from deepgmm.cli import myops as cli_myops
from deepgmm.experiments import _report, _run, _store, compute_mu_data, fit_runner, myops as mt
from deepgmm.io import MARKER
from deepgmm.metrics import dice

DATA = Path(os.environ.get("DEEPGMM_MYOPS", Path(__file__).parents[1].parent / "shared/data/myops2020"))
needs_data = pytest.mark.skipif(
    not (DATA / "train25").is_dir(), reason=f"MyoPS 2020 data not found at {DATA} (set DEEPGMM_MYOPS)"
)
CLASSES = ("blood", "myocardium", "edema", "scar")
RECORD_KEYS = {"method", "case", "slice", "dice", "mean_dice", "nll", "seconds", "iterations", "matching", "mapping",
               "seed", "converged", "warnings"}


def _cli(*argv: str) -> int:
    """The ``myops`` command through its own parser (as ``deepgmm`` will wire it)."""
    parser = argparse.ArgumentParser(prog="deepgmm")
    parser.add_argument("-v", "--verbose", action="store_true", default=False)
    parser.add_argument("--debug", action="store_true", default=False)
    cli_myops.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _strip(records):
    """Records without their timings (the only field that may differ between identical runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- synthetic MyoPS folders
def _write_case(root: Path, case: int, shape=(24, 22, 3), *, skip=(), label=None) -> None:
    """A case whose every slice holds background, the right ventricle and the four classes, each
    class with its own mean intensity per channel (plus noise)."""
    codes = np.zeros(shape, dtype=np.int16)
    codes[5:19, 5:17] = 200
    codes[9:15, 8:14] = 500
    codes[5:7, 5:17] = 1220
    codes[17:19, 5:17] = 2221
    codes[0:2, 0:2] = 600
    cls = myops.map_labels(codes)
    means = np.array([[0, 0, 0], [5, 1, 6], [-2, 2, 0], [1, 5, 2], [5, 4, 1]], dtype=np.float64)  # (5, 3)
    rng = np.random.default_rng(case)
    (root / "train25").mkdir(parents=True, exist_ok=True)
    (root / "train25_myops_gd").mkdir(parents=True, exist_ok=True)
    for c, ch in enumerate(myops.CHANNELS):
        if ch in skip:
            continue
        img = (means[cls, c] + rng.normal(0, 0.3, shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "train25" / f"myops_training_{case:03d}_{ch}.nii.gz"))
    if "gd" not in skip:
        nib.save(nib.Nifti1Image(codes if label is None else label, np.eye(4)),
                 str(root / "train25_myops_gd" / f"myops_training_{case:03d}_gd.nii.gz"))


@pytest.fixture
def synth(tmp_path):
    root = tmp_path / "myops"
    for case in (3, 1):
        _write_case(root, case)
    return root


# ----------------------------------------------------------------------------- real data: table 1
@pytest.fixture(scope="module")
def table1_run(tmp_path_factory):
    if not (DATA / "train25").is_dir():
        pytest.skip(f"MyoPS 2020 data not found at {DATA}")
    out = tmp_path_factory.mktemp("table1") / "t1"
    rc = _cli("myops", "table1", "--data", str(DATA), "--out", str(out), "--methods", "gmm,svgmm",
              "--cases", "101,102", "--threads", "1")
    assert rc == 0
    return out


@needs_data
@pytest.mark.myops
def test_table1_results_schema_and_summary(table1_run):
    out = table1_run
    doc = _load(out)
    slices = myops.paper_slices(DATA, [101, 102])
    keys = [(s.case, s.slice_index) for s in slices]
    records = doc["records"]
    assert len(records) == 2 * len(keys)
    assert [(r["method"], r["case"], r["slice"]) for r in records] == \
        [(m, c, z) for m in ("gmm", "svgmm") for c, z in keys]
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert set(r["dice"]) == set(CLASSES)
        assert all(0.0 <= v <= 1.0 for v in r["dice"].values())
        assert r["mean_dice"] == pytest.approx(np.mean([r["dice"][c] for c in CLASSES]))
        assert r["matching"] == "hungarian" and r["seed"] == 0
        assert sorted(r["mapping"].values()) == [1, 2, 3, 4]
        assert np.isfinite(r["nll"]) and r["seconds"] > 0 and r["iterations"] >= 1
    assert doc["complete"] is True and doc["missing"] == 0
    assert doc["config"]["methods"] == ["gmm", "svgmm"] and doc["config"]["slices"] == [list(k) for k in keys]
    assert doc["config"]["normalize"] == "none" and doc["config"]["n_components"] == 4
    assert set(doc["method_settings"]) == {"gmm", "svgmm"}
    run = doc["runs"][-1]
    assert run["command"].startswith("deepgmm myops table1 --data") and "--methods gmm,svgmm" in run["command"]
    assert run["wall_seconds"] > 0 and run["interrupted"] is False and doc["torch_version"] and doc["deepgmm_version"]
    assert doc["machine"]["cpus"] >= 1
    # the summary, recomputed from the records
    for m in ("gmm", "svgmm"):
        rows = [r for r in records if r["method"] == m]
        s = doc["summary"][m]
        assert s["slices"] == len(keys) and s["cases"] == 2
        for c in CLASSES:
            vals = np.array([r["dice"][c] for r in rows])
            assert s["dice"][c]["mean"] == pytest.approx(vals.mean())
            assert s["dice"][c]["std"] == pytest.approx(vals.std())
        assert s["mean_dice"]["mean"] == pytest.approx(np.mean([s["dice"][c]["mean"] for c in CLASSES]))
    # table.md shows those numbers, laid out like the paper's tables
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "| method | blood | myocardium | edema | scar | mean |" in table
    g = doc["summary"]["gmm"]
    assert f"| GMM | {g['dice']['blood']['mean']:.3f} ± {g['dice']['blood']['std']:.3f} |" in table
    assert f"{g['mean_dice']['mean']:.3f} ± {g['mean_dice']['std']:.3f} |" in table
    assert "| SVGMM |" in table and "Incomplete" not in table
    # figures: one per slice, plus the overview
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{c}_z{z:03d}.png" for c, z in keys)
    assert (out / "overview.png").stat().st_size > 1000
    assert not (out / ".lock").exists() and (out / MARKER).is_file()


@needs_data
@pytest.mark.myops
def test_table1_records_match_independent_references(table1_run):
    """Dice recomputed from each saved prediction; one fit recomputed with segment()."""
    from deepgmm.metrics import evaluate
    from deepgmm.segmentation import segment

    doc = _load(table1_run)
    slices = {(s.case, s.slice_index): s for s in myops.paper_slices(DATA, [101, 102])}
    for r in doc["records"]:
        sl = slices[(r["case"], r["slice"])]
        pred = np.load(table1_run / "predictions" / f"{r['case']}_z{r['slice']:03d}_{r['method']}.npy")
        assert pred.shape == sl.labels.shape and not pred[~sl.mask].any()
        d = dice(pred, sl.labels, labels=[1, 2, 3, 4])
        assert [d[k] for k in (1, 2, 3, 4)] == pytest.approx([r["dice"][c] for c in CLASSES])
    r = doc["records"][-1]
    sl = slices[(r["case"], r["slice"])]
    seg = segment(sl.image, sl.mask, method=r["method"], n_components=4, random_state=r["seed"], normalize="none")
    ev = evaluate(seg.labels, sl.labels, labels=[1, 2, 3, 4])
    assert seg.nll == pytest.approx(r["nll"], rel=1e-6)
    assert [ev.dice[k] for k in (1, 2, 3, 4)] == pytest.approx([r["dice"][c] for c in CLASSES])


@needs_data
@pytest.mark.myops
def test_table1_resume_reruns_only_deleted_records(table1_run, tmp_path, monkeypatch):
    out = tmp_path / "t1"
    shutil.copytree(table1_run, out)
    doc = _load(out)
    original = doc["records"]
    drop = {("gmm", 101, 1), ("svgmm", 101, 1), ("svgmm", 102, 2)}
    doc["records"] = [r for r in original if (r["method"], r["case"], r["slice"]) not in drop]
    (out / "results.json").write_text(json.dumps(doc), encoding="utf-8")
    calls = count_segment_fits(monkeypatch)
    rc = _cli("myops", "table1", "--data", str(DATA), "--out", str(out), "--resume", "--threads", "1")
    assert rc == 0
    assert sorted(calls) == sorted(drop)
    after = _load(out)
    assert _strip(after["records"]) == _strip(original)
    kept = [r for r in original if (r["method"], r["case"], r["slice"]) not in drop]
    assert [r for r in after["records"] if (r["method"], r["case"], r["slice"]) not in drop] == kept  # untouched
    assert len(after["runs"]) == 2 and after["runs"][-1]["records_added"] == 3 and after["complete"]
    # nothing left to do: a second resume runs no fit
    calls.clear()
    assert _cli("myops", "table1", "--data", str(DATA), "--out", str(out), "--resume", "--threads", "1") == 0
    assert calls == []


@needs_data
@pytest.mark.myops
def test_table1_jobs2_interrupted_then_resumed_gives_the_same_records(table1_run, tmp_path, monkeypatch):
    """--jobs 2: Ctrl-C in the main process stops the workers and keeps the records that arrived
    (each equal to the --jobs 1 record); --resume completes the table."""
    import multiprocessing

    out = tmp_path / "j2"
    add = _run.Run.add
    arrived = []

    def interrupted_add(self, records, settings):
        add(self, records, settings)
        arrived.append(records)
        if len(arrived) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(_run.Run, "add", interrupted_add)
    with pytest.raises(KeyboardInterrupt):
        mt.run_table1(DATA, out, methods="gmm,svgmm", cases=[101], jobs=2, figures=False, progress=False)
    assert multiprocessing.active_children() == []  # the workers were stopped
    doc = _load(out)
    ref = [r for r in _load(table1_run)["records"] if r["case"] == 101]
    assert len(doc["records"]) == 8 and doc["runs"][-1]["interrupted"] is True and not doc["complete"]
    assert all(r in _strip(ref) for r in _strip(doc["records"]))  # the --jobs 1 records
    monkeypatch.setattr(_run.Run, "add", add)
    res = mt.run_table1(DATA, out, resume=True, threads=1, figures=False, progress=False)
    assert res.added == len(ref) - 8 and res.complete
    assert _strip(_load(out)["records"]) == _strip(ref)
    assert [r["jobs"] for r in _load(out)["runs"]] == [2, 1]


@needs_data
@pytest.mark.myops
def test_table1_interrupt_leaves_valid_results(table1_run, tmp_path, monkeypatch):
    out = tmp_path / "int"
    task = fit_runner.run_fit_task
    seen, on_disk = [], []

    def interrupted(t):
        if len(seen) == 2:
            # results.json on disk already holds every finished slice (a hard kill would lose nothing)
            on_disk.append(len(_load(out)["records"]))
            raise KeyboardInterrupt
        seen.append(t)
        return task(t)

    monkeypatch.setattr(fit_runner, "run_fit_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mt.run_table1(DATA, out, methods=["gmm", "svgmm"], cases=[102], threads=1, figures=False, progress=False)
    assert on_disk == [4]
    doc = _load(out)  # valid JSON with the two slices done before Ctrl-C
    assert len(doc["records"]) == 4 and doc["complete"] is False and doc["missing"] == 2
    assert doc["runs"][-1]["interrupted"] is True and doc["summary"]["gmm"]["slices"] == 2
    assert "Incomplete" in (out / "table.md").read_text(encoding="utf-8")
    assert not (out / ".lock").exists()
    monkeypatch.setattr(fit_runner, "run_fit_task", task)
    res = mt.run_table1(DATA, out, resume=True, threads=1, figures=False, progress=False)
    assert res.added == 2 and res.complete
    assert _strip(res.records) == _strip([r for r in _load(table1_run)["records"] if r["case"] == 102])


# ----------------------------------------------------------------------------- real data: table 2
@needs_data
@pytest.mark.myops
def test_table2_small_run(tmp_path):
    out = tmp_path / "t2"
    rc = _cli("myops", "table2", "--data", str(DATA), "--out", str(out), "--epochs", "1", "--batch-size", "2",
              "--train-cases", "101,102", "--test-cases", "109", "--no-figures")
    assert rc == 0
    doc = _load(out)
    test = myops.paper_slices(DATA, [109])
    assert len(doc["records"]) == 4 * len(test)
    for r in doc["records"]:
        assert RECORD_KEYS <= set(r) and r["case"] == 109
        assert all(0.0 <= v <= 1.0 for v in r["dice"].values())
        if r["method"].endswith("_mu"):
            assert r["matching"] == "prior" and r["mapping"] == {"1": 1, "2": 2, "3": 3, "4": 4}
            assert r["matched"]["matching"] == "hungarian"
            # Hungarian maximises the summed Dice: never below the prior's order
            assert r["matched"]["mean_dice"] >= r["mean_dice"] - 1e-12
        else:
            assert r["matching"] == "hungarian" and "matched" not in r
    # mu_data: from the training patients only, as compute_mu_data gives it
    mu, chosen = compute_mu_data(myops.paper_slices(DATA, [101, 102]), seed=0)
    stored = json.loads((out / "mu_data.json").read_text())
    np.testing.assert_allclose(stored["mu_data"], mu)
    assert {c for c, _ in stored["slices"]} <= {101, 102} and stored["slices"] == chosen
    trained = json.loads((out / "models" / "deepsvg_mu" / "config.json").read_text())
    np.testing.assert_allclose(trained["mu_data"], mu)
    assert trained["lam"] == 1.0 and trained["epochs"] == 1
    assert json.loads((out / "models" / "deepsvg" / "config.json").read_text())["mu_data"] is None
    table = (out / "table.md").read_text(encoding="utf-8")
    for row in ("| SVGMM |", "| deepSVG |", "| SVGMMμ |", "| deepSVGμ |", "| SVGMMμ, matched |"):
        assert row in table
    assert doc["summary"]["svgmm_mu"]["matched"]["matching"] == "hungarian"


# ----------------------------------------------------------------------------- synthetic: runs and folder rules
def test_table1_synthetic_run_and_output_folder_rules(synth, tmp_path):
    out = tmp_path / "out"
    res = mt.run_table1(synth, out, methods="gmm,svgmm", matching="greedy", seed=3, threads=1, progress=False)
    assert res.complete and res.added == 2 * 2 * 3  # 2 methods x 2 cases x 3 slices
    assert [r["case"] for r in res.records[:6]] == [1, 1, 1, 3, 3, 3]
    assert all(r["matching"] == "greedy" and r["seed"] == 3 for r in res.records)
    # well-separated classes: both methods find them
    assert min(r["mean_dice"] for r in res.records) > 0.9
    # existing folder: needs --resume or --overwrite
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        mt.run_table1(synth, out, methods="gmm")
    with pytest.raises(ValueError, match="exclude each other"):
        mt.run_table1(synth, out, resume=True, overwrite=True)
    with pytest.raises(ValueError, match="cannot resume with --matching 'hungarian'.*uses 'greedy'"):
        mt.run_table1(synth, out, resume=True, matching="hungarian")
    with pytest.raises(ValueError, match="cannot resume with --seed 0"):
        mt.run_table1(synth, out, resume=True, seed=0)
    # resume may add a method; the stored settings are kept
    res = mt.run_table1(synth, out, resume=True, methods=["gmm"], threads=1, figures=False, progress=False)
    assert res.added == 0
    # the defaults changed since the stored run: refused, the results stay valid
    doc = _load(out)
    doc["method_settings"]["gmm"]["tol"] = 0.5
    doc["records"] = doc["records"][1:]
    (out / "results.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="gmm.s settings differ.*tol: 0.5 -> "):
        mt.run_table1(synth, out, resume=True, threads=1, figures=False, progress=False)
    assert len(_load(out)["records"]) == 11
    # --overwrite starts again from nothing
    (out / "figures" / "old.png").write_bytes(b"x")
    res = mt.run_table1(synth, out, overwrite=True, methods="gmm", cases=[1], threads=1, figures=False,
                        progress=False)
    assert res.added == 3 and not (out / "figures" / "old.png").exists()
    assert _load(out)["config"]["methods"] == ["gmm"] and len(_load(out)["runs"]) == 1


def test_table1_records_the_precision_used_and_refuses_to_mix_them(synth, tmp_path, monkeypatch):
    """results.json names the deep network's precision as it ran (not "auto"); resuming where it
    resolves otherwise (another machine, or $DEEPGMM_PRECISION) is refused with a hint; a run
    stored before the setting existed ran in float32 and resumes in float32 only."""
    quick = {"deepsvg": {"max_steps": 2, "pretrain_steps": 1}}
    out = tmp_path / "p"

    def run(precision, **kw):
        monkeypatch.setenv("DEEPGMM_PRECISION", precision)
        return mt.run_table1(synth, out, methods="deepsvg", cases=[1], threads=1, progress=False, figures=False,
                             options=quick, **kw)

    def drop_a_record(edit=lambda settings: None):
        doc = _load(out)
        edit(doc["method_settings"]["deepsvg"])
        doc["records"] = doc["records"][1:]
        (out / "results.json").write_text(json.dumps(doc), encoding="utf-8")

    run("float32")
    assert _load(out)["method_settings"]["deepsvg"]["precision"] == "float32"
    for edit in (lambda settings: None, lambda settings: settings.pop("precision")):
        drop_a_record(edit)
        with pytest.raises(ValueError, match="precision: 'float32' -> 'bfloat16'.*set DEEPGMM_PRECISION=float32 or "
                                             "bfloat16"):
            run("bfloat16", resume=True)
        assert run("float32", resume=True).added == 1


def test_table1_deep_methods_with_options(synth, tmp_path):
    """The deep methods run through the same path; options reach segment() and are recorded."""
    quick = {"max_steps": 3, "pretrain_steps": 2}
    res = mt.run_table1(synth, tmp_path / "deep", methods="deepsvg,deepg", cases=[1], threads=1, progress=True,
                        figures=False, options={"deepg": quick, "deepsvg": quick})
    assert res.added == 6 and [r["method"] for r in res.records] == ["deepg"] * 3 + ["deepsvg"] * 3
    doc = _load(tmp_path / "deep")
    assert doc["config"]["options"]["deepsvg"] == quick
    assert doc["method_settings"]["deepsvg"]["max_steps"] == 3 and doc["method_settings"]["deepsvg"]["network"]
    assert all(r["iterations"] <= 3 for r in res.records)
    for options, msg in (({"kmeans": {}}, r"unknown method\(s\) \['kmeans'\]"),
                         ({"gmm": {"n_components": 3}}, r"may not set \['n_components'\]"),
                         ({"gmm": 3}, "must be a dict")):
        with pytest.raises(ValueError, match=msg):
            mt.run_table1(synth, tmp_path / "o", options=options)
    with pytest.raises(ValueError, match="unknown option"):
        mt.run_table1(synth, tmp_path / "bad-option", methods="gmm", options={"gmm": {"colour": 1}},
                      threads=1, progress=False)
    assert _load(tmp_path / "bad-option")["records"] == []


def test_output_folder_refusals(synth, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by deepgmm"):
        mt.run_table1(synth, foreign, overwrite=True, methods="gmm")
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="cannot resume: no results.json"):
        mt.run_table1(synth, tmp_path / "nothing", resume=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        mt.run_table1(synth, a_file, methods="gmm")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        mt.run_table1(synth, bad, resume=True)
    (bad / "results.json").write_text(json.dumps({"experiment": "myops-table2", "format_version": 1, "records": []}))
    with pytest.raises(ValueError, match="results of 'myops-table2', not 'myops-table1'"):
        mt.run_table1(synth, bad, resume=True)
    # an empty existing folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mt.run_table1(synth, empty, methods="gmm", cases=[1], threads=1, figures=False, progress=False).complete


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    first = _store.ResultsFolder(tmp_path / "o", experiment="x", resume=False, overwrite=False)
    first.check()
    first.start({"experiment": "x", "format_version": 1, "records": []})
    second = _store.ResultsFolder(tmp_path / "o", experiment="x", resume=True, overwrite=False)
    second.check()
    with pytest.raises(ValueError, match="in use by another deepgmm run"):
        second.start(second.stored)
    first.close()
    second.start(second.stored)
    second.close()


# ----------------------------------------------------------------------------- synthetic: CLI error paths
def test_cli_errors_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _cli("myops", "table1", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_cli_errors_unknown_method(synth, tmp_path):
    with pytest.raises(ValueError, match=r"--methods: unknown method\(s\) \['kmeans'\]"):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"), "--methods", "gmm,kmeans")
    with pytest.raises(ValueError, match="more than once"):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"), "--methods", "gmm,gmm")
    with pytest.raises(ValueError, match="--methods must be comma-separated"):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"), "--methods", "gmm,")
    with pytest.raises(SystemExit):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"), "--matching", "none")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cases, message", [
    ("abc", "--cases must be comma-separated case ids"),
    ("1,,3", "--cases must be comma-separated case ids"),
    ("1,1", r"names case\(s\) \[1\] more than once"),
    ("1,42", r"case\(s\) \[42\] not found .*available: \[1, 3\]"),
])
def test_cli_errors_bad_cases(synth, tmp_path, cases, message):
    with pytest.raises(ValueError, match=message):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"), "--cases", cases)
    assert not (tmp_path / "o").exists()


def test_cli_errors_bad_numbers_and_incomplete_data(synth, tmp_path):
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"), "--jobs", "0")
    with pytest.raises(ValueError, match="seed must be >= 0"):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"), "--seed", "-1")
    _write_case(synth, 5, skip=("T2",))
    with pytest.raises(FileNotFoundError, match=r"case 5 is incomplete: missing .*myops_training_005_T2"):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_cli_table1_options(synth, tmp_path):
    """--options: JSON per-method settings reach segment(), are recorded and named in table.md;
    bad JSON and a different value on --resume are errors."""
    out = tmp_path / "o"
    options = '{"svgmm": {"smooth_sigma": 2}}'
    assert _cli("myops", "table1", "--data", str(synth), "--out", str(out), "--methods", "svgmm", "--cases", "1",
                "--no-figures", "--options", options) == 0
    doc = _load(out)
    assert doc["config"]["options"] == {"svgmm": {"smooth_sigma": 2}}
    assert doc["method_settings"]["svgmm"]["smooth_sigma"] == 2
    table = (out / "table.md").read_text()
    assert "Settings on top of the defaults: SVGMM: smooth_sigma=2." in table and "--options" in table
    # the same slices without smoothing: a different fit
    plain = mt.run_table1(synth, tmp_path / "plain", methods="svgmm", cases=[1], figures=False, progress=False)
    assert [r["nll"] for r in plain.records] != [r["nll"] for r in doc["records"]]
    with pytest.raises(ValueError, match="cannot resume with options"):
        _cli("myops", "table1", "--data", str(synth), "--out", str(out), "--resume", "--options",
             '{"svgmm": {"smooth_sigma": 3}}')
    with pytest.raises(ValueError, match=r"--options is not valid JSON \(.*\); expected e.g."):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "p"), "--options", '{"svgmm": ')
    with pytest.raises(ValueError, match="options must map method names"):
        _cli("myops", "table1", "--data", str(synth), "--out", str(tmp_path / "p"), "--options", "[1]")
    assert not (tmp_path / "p").exists()


def test_cli_table2_errors(synth, tmp_path):
    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match=r"case\(s\) \[109, 114, 117, 120, 122\] not found"):
        _cli("myops", "table2", "--data", str(synth), "--out", out)
    with pytest.raises(ValueError, match=r"patient\(s\) \[1\] are both training and test"):
        _cli("myops", "table2", "--data", str(synth), "--out", out, "--train-cases", "1,3", "--test-cases", "1")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        _cli("myops", "table2", "--data", str(synth), "--out", out, "--epochs", "0")
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        _cli("myops", "table2", "--data", str(synth), "--out", out, "--ensemble", "0")
    with pytest.raises(ValueError, match="lam must be >= 0"):
        _cli("myops", "table2", "--data", str(synth), "--out", out, "--lam", "-1")
    with pytest.raises(ValueError, match="--train-cases must be comma-separated"):
        _cli("myops", "table2", "--data", str(synth), "--out", out, "--train-cases", "x")
    with pytest.raises(ValueError, match="train_options may not set"):
        mt.run_table2(synth, out, train_cases=[1], test_cases=[3], train_options={"lam": 2.0})
    with pytest.raises(ValueError, match="invalid training settings for deepsvg.*lr"):
        mt.run_table2(synth, out, train_cases=[1], test_cases=[3], train_options={"lr": -1.0})
    assert not Path(out).exists()


def test_cli_is_wired_into_deepgmm(synth, tmp_path, capsys):
    """Once deepgmm.cli registers the command: one-line errors and exit status 2 from ``deepgmm``."""
    from deepgmm import cli

    actions = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions or "myops" not in actions[0].choices:
        pytest.skip("deepgmm.cli does not register the myops command yet")
    assert cli.main(["myops", "table1", "--data", str(synth), "--out", str(tmp_path / "o"), "--cases", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case(s) [9] not found" in err[0]


# ----------------------------------------------------------------------------- pieces
def test_compute_mu_data_against_a_loop(synth):
    slices = myops.paper_slices(synth)
    mu, chosen = compute_mu_data(slices, n=4, seed=7)
    idx = sorted(np.random.default_rng(7).choice(len(slices), size=4, replace=False))
    assert chosen == [[slices[i].case, slices[i].slice_index] for i in idx]
    ref = np.zeros((4, 3))
    for i in idx:
        for k in range(4):
            for c in range(3):
                ref[k, c] += slices[i].image[c][slices[i].labels == k + 1].mean() / 4
    np.testing.assert_allclose(mu, ref, atol=1e-10)
    mu_all, chosen_all = compute_mu_data(slices, n=100, seed=0)
    assert len(chosen_all) == len(slices)
    with pytest.raises(ValueError, match="needs at least one slice"):
        compute_mu_data([])
    no_scar = myops.MyoPSSlice(1, 0, slices[0].image, np.where(slices[0].labels == 4, 2, slices[0].labels),
                               slices[0].mask, slices[0].crop)
    with pytest.raises(ValueError, match="slice 0 of patient 1 has no pixel of class scar"):
        compute_mu_data([no_scar])


def test_summarize_and_format_table_by_hand():
    def rec(method, case, d, matching="hungarian", **extra):
        return {"method": method, "case": case, "slice": 0, "dice": dict(zip(CLASSES, d)),
                "mean_dice": float(np.mean(d)), "nll": 1.0, "seconds": 2.0, "iterations": 10, "matching": matching,
                **extra}

    records = [rec("gmm", 1, [1.0, 0.5, 0.0, 0.5]), rec("gmm", 2, [0.5, 0.5, 0.5, 0.5]),
               rec("svgmm_mu", 1, [0.2, 0.2, 0.2, 0.2], "prior",
                   matched={"dice": dict(zip(CLASSES, [0.4] * 4)), "mean_dice": 0.4, "matching": "hungarian"})]
    s = _report.summarize(records, ["svgmm", "gmm", "svgmm_mu"])
    assert list(s) == ["gmm", "svgmm_mu"]
    assert s["gmm"]["dice"]["blood"] == {"mean": 0.75, "std": 0.25}
    assert s["gmm"]["dice"]["myocardium"] == {"mean": 0.5, "std": 0.0}
    assert s["gmm"]["mean_dice"]["mean"] == pytest.approx(0.5) and s["gmm"]["seconds"]["total"] == 4.0
    assert s["svgmm_mu"]["matched"]["mean_dice"]["mean"] == pytest.approx(0.4)
    table = _report.format_table(s, title="T")
    assert "| GMM | 0.750 ± 0.250 | 0.500 ± 0.000 | 0.250 ± 0.250 | 0.500 ± 0.000 | 0.500 ± 0.000 | hungarian |" \
        in table
    assert "| SVGMMμ | 0.200 ± 0.000 |" in table and "| SVGMMμ, matched | 0.400 ± 0.000 |" in table


def test_parse_cases():
    assert _run.parse_cases("101, 102") == [101, 102]
    assert _run.parse_cases(None) is None and _run.parse_cases([5, 3]) == [5, 3]
    for bad, msg in (("", "comma-separated"), ("-1", "non-negative"), ([1.5], "integer case ids"),
                     ([True], "integer case ids")):
        with pytest.raises(ValueError, match=msg):
            _run.parse_cases(bad)


# ----------------------------------------------------------------------------- table 2: --ensemble
def test_table2_ensemble_on_synthetic(synth, tmp_path):
    """``ensemble=2``: two networks per deep method (distinct seeds, one mu_data), segmenting with
    their mean soft labels; the setting is kept on resume."""
    from deepgmm.training import load_model

    out = tmp_path / "t2"
    kw = dict(train_cases=[1], test_cases=[3], epochs=1, batch_size=2, threads=1, figures=False, progress=False)
    res = mt.run_table2(synth, out, ensemble=2, lam=2.5, **kw)
    assert res.complete
    doc = _load(out)
    assert doc["config"]["ensemble"] == 2 and doc["config"]["mu_lam"] == 2.5
    assert json.loads((out / "models" / "deepsvg_mu-2" / "config.json").read_text())["lam"] == 2.5
    for m in ("deepsvg", "deepsvg_mu"):
        a = json.loads((out / "models" / m / "config.json").read_text())
        b = json.loads((out / "models" / f"{m}-2" / "config.json").read_text())
        assert a["seed"] == 0 and b["seed"] != a["seed"]
        assert a["mu_data"] == b["mu_data"]
        assert doc["method_settings"][m]["ensemble"] == [f"models/{m}", f"models/{m}-2"]
    assert set(res.training) == {"deepsvg", "deepsvg-2", "deepsvg_mu", "deepsvg_mu-2"}
    assert "mean soft labels of 2 networks" in (out / "table.md").read_text(encoding="utf-8")
    # deepSVGμ's labels (prior order, no matching) are the argmax of the members' mean soft labels
    members = [load_model(out / "models" / name) for name in ("deepsvg_mu", "deepsvg_mu-2")]
    for sl in myops.paper_slices(synth, [3]):
        probs = np.mean([mm.predict(sl.image, sl.mask).probabilities for mm in members], axis=0)
        expected = np.where(sl.mask, probs.argmax(0) + 1, 0)
        saved = np.load(out / "predictions" / f"3_z{sl.slice_index:03d}_deepsvg_mu.npy")
        np.testing.assert_array_equal(saved, expected)
    with pytest.raises(ValueError, match="cannot resume with --ensemble 1"):
        mt.run_table2(synth, out, resume=True, ensemble=1, **kw)
    with pytest.raises(ValueError, match="cannot resume with --lam 1.0"):
        mt.run_table2(synth, out, resume=True, lam=1.0, **kw)
    assert mt.run_table2(synth, out, resume=True, **kw).added == 0
    # a run stored before --ensemble existed (no such key) resumes as one network
    doc = _load(out)
    del doc["config"]["ensemble"]
    (out / "results.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="cannot resume with --ensemble 2: the run .* uses 1"):
        mt.run_table2(synth, out, resume=True, ensemble=2, lam=2.5, **kw)
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        mt.run_table2(synth, tmp_path / "o", ensemble=0, **kw)


# ----------------------------------------------------------------------------- table 2: --readout
def test_table2_posterior_readout_on_synthetic(synth, tmp_path):
    """``readout="posterior"``: the deep methods segment with the posteriors of the mixture their
    soft labels define on each test slice; the setting is recorded and kept on resume."""
    from deepgmm.training import load_model

    out = tmp_path / "t2"
    kw = dict(train_cases=[1], test_cases=[3], epochs=1, batch_size=2, threads=1, figures=False, progress=False)
    res = mt.run_table2(synth, out, readout="posterior", **kw)
    assert res.complete
    doc = _load(out)
    assert doc["config"]["readout"] == "posterior"
    for m in ("deepsvg", "deepsvg_mu"):
        assert doc["method_settings"][m]["readout"] == "posterior"
    assert "--readout posterior" in (out / "table.md").read_text(encoding="utf-8")
    # deepSVGμ's saved labels (prior order) are the argmax of the posteriors, not of the soft labels
    post, soft = (load_model(out / "models" / "deepsvg_mu", readout=r) for r in ("posterior", "soft_labels"))
    differs = False
    for sl in myops.paper_slices(synth, [3]):
        saved = np.load(out / "predictions" / f"3_z{sl.slice_index:03d}_deepsvg_mu.npy")
        np.testing.assert_array_equal(saved, post.predict(sl.image, sl.mask).labels)
        differs |= not np.array_equal(saved, soft.predict(sl.image, sl.mask).labels)
    assert differs
    with pytest.raises(ValueError, match="cannot resume with --readout 'soft_labels'"):
        mt.run_table2(synth, out, resume=True, readout="soft_labels", **kw)
    assert mt.run_table2(synth, out, resume=True, **kw).added == 0
    # a run stored before --readout existed (no such key) resumes with the soft labels
    doc = _load(out)
    del doc["config"]["readout"]
    (out / "results.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match="cannot resume with --readout 'posterior': the run .* uses 'soft_labels'"):
        mt.run_table2(synth, out, resume=True, readout="posterior", **kw)
    with pytest.raises(ValueError, match="readout must be one of 'soft_labels', 'posterior', got 'mean'"):
        mt.run_table2(synth, tmp_path / "o", readout="mean", **kw)
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        _cli("myops", "table2", "--data", str(synth), "--out", str(tmp_path / "p"), "--readout", "mean")
    assert not (tmp_path / "p").exists()


def test_table2_readout_choices_are_the_library_s():
    from deepgmm.training.predict import READOUTS

    parser = argparse.ArgumentParser(prog="deepgmm")
    sub = cli_myops.add_parser(parser.add_subparsers(dest="command", required=True))
    t2 = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["table2"]
    assert tuple(next(a for a in t2._actions if a.dest == "readout").choices) == READOUTS


def test_table2_spare_class_for_deepsvg_on_synthetic(synth, tmp_path):
    """``spare_classes=1``: deepSVG's network fits 5 classes and drops one per test slice; deepSVGμ
    (prior order) keeps exactly 4; recorded and kept on resume."""
    from deepgmm.training import load_model

    out = tmp_path / "t2"
    kw = dict(train_cases=[1], test_cases=[3], epochs=1, batch_size=2, threads=1, figures=False, progress=False)
    assert mt.run_table2(synth, out, spare_classes=1, **kw).complete
    doc = _load(out)
    assert doc["config"]["spare_classes"] == 1
    assert json.loads((out / "models" / "deepsvg" / "config.json").read_text())["spare_classes"] == 1
    assert json.loads((out / "models" / "deepsvg_mu" / "config.json").read_text())["spare_classes"] == 0
    assert "--spare-classes 1" in (out / "table.md").read_text(encoding="utf-8")
    model = load_model(out / "models" / "deepsvg")
    for sl in myops.paper_slices(synth, [3]):
        pred = model.predict(sl.image, sl.mask)
        assert len(pred.dropped_classes) == 1 and pred.labels.max() <= 4
        rec = next(r for r in doc["records"] if r["method"] == "deepsvg" and r["slice"] == sl.slice_index)
        assert set(rec["dice"]) == {"blood", "myocardium", "edema", "scar"}
    with pytest.raises(ValueError, match="cannot resume with --spare-classes 0"):
        mt.run_table2(synth, out, resume=True, spare_classes=0, **kw)
    assert mt.run_table2(synth, out, resume=True, **kw).added == 0
    with pytest.raises(ValueError, match="spare_classes must be >= 0"):
        mt.run_table2(synth, tmp_path / "o", spare_classes=-1, **kw)
    assert not (tmp_path / "o").exists()
