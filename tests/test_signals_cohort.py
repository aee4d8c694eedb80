"""Interruption safety of ``deepgmm train``, ``predict`` and ``myops table1``/``table2``: real SIGINT/SIGTERM.

Each test starts ``python -m deepgmm ...`` (``PYTHONPATH=src``, ``OMP_NUM_THREADS=1``) in a
process group of its own, waits for a marker (a file it polls, never a fixed sleep), sends the
signal to the group as a terminal's Ctrl-C or ``kill -TERM -PGID`` would, and checks that

* the exit status is 130 (SIGINT) or 143 (SIGTERM) with the one stderr line
  ``deepgmm: error: interrupted`` / ``terminated``;
* what is on disk is complete: the previous outputs or complete new ones, never a truncated
  file, and no temporary (``.*.tmp*``), staging (``.OUT.staging-*``) or aside (``.OUT.old-*``)
  entry anywhere;
* a second run (``--resume`` where the command has it) finishes the job, with the results of an
  uninterrupted run.

To hit a given phase reliably on a busy machine, some runs import a small hook module (written
to a temporary folder) before the real CLI: it wraps one library function so that it creates a
marker file and sleeps at the chosen moment (the signal handling, clean-up and resume under test
are the real ones). ``train`` is also interrupted unmodified, mid-training, once its first
checkpoint exists.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pytest
import torch

from _helpers import make_cohort
from deepgmm.cli import main
from deepgmm.training import FolderDataset, TrainConfig, load_checkpoint, train
from deepgmm.training.checkpoint import CHECKPOINT_FILE, MODEL_FILE

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 180.0  # seconds to reach a marker or to stop after the signal (generous: a busy 2-core machine)
HOLD_S = 300  # how long a hook holds a phase open (the signal ends it long before)

_SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]

# Run the real CLI after installing the named hooks of the module _sigtest_hooks (argv[1], comma-separated).
_WRAPPER = """
import sys
import _sigtest_hooks
for name in filter(None, sys.argv[1].split(",")):
    getattr(_sigtest_hooks, name)()
from deepgmm.cli import main
raise SystemExit(main(sys.argv[2:]))
"""

# The hooks: each wraps one library function; _hold() creates the marker file $SIGTEST_MARKS/<name>
# and sleeps. The module is importable by spawned worker processes too (its folder is on PYTHONPATH).
_HOOKS = '''
import json
import os
import time
from pathlib import Path

HOLD_S = float(os.environ.get("SIGTEST_HOLD_S", "300"))
_held = set()


def _hold(name):
    Path(os.environ["SIGTEST_MARKS"], name).touch()
    time.sleep(HOLD_S)


def _once(name):
    if name in _held:
        return False
    _held.add(name)
    return True


def _wrap_atomic_write(should_hold, name):
    """Hold deepgmm.io.atomic_write once its temporary file is complete, before the rename."""
    import deepgmm.io.files as dfiles

    original = dfiles.atomic_write

    def atomic_write(path, write):
        def write_then_hold(tmp):
            write(tmp)
            if should_hold(Path(path), Path(tmp)) and _once(name):
                _hold(name)
        return original(path, write_then_hold)

    dfiles.atomic_write = atomic_write


def checkpoint_write():
    """Hold the write of the second checkpoint.pt (the first one exists)."""
    _wrap_atomic_write(lambda p, tmp: p.name == "checkpoint.pt" and p.exists(), "checkpoint-tmp")


def results_write():
    """Hold the first rewrite of results.json that holds a record."""
    _wrap_atomic_write(lambda p, tmp: p.name == "results.json" and bool(json.loads(tmp.read_text())["records"]),
                       "results-tmp")


def predict_write():
    """Hold after the SIGTEST_AT-th probabilities file was written (into the staging folder)."""
    import deepgmm.io as dio

    original = dio.save_probabilities
    calls = []

    def save_probabilities(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out)
        if len(calls) == int(os.environ.get("SIGTEST_AT", "1")):
            _hold("staged")
        return out

    dio.save_probabilities = save_probabilities


def _hold_at_call(module, attr, n, name):
    """Replace module.attr by a wrapper that holds (marker ``name``) before its n-th call."""
    original = getattr(module, attr)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            _hold(name)
        return original(*args, **kwargs)

    setattr(module, attr, wrapper)


def table_fit():
    """Hold the SIGTEST_AT-th (default: second) EM fit of a table run (in this process: --jobs 1)."""
    from deepgmm.experiments import cases

    _hold_at_call(cases, "segment_fit", int(os.environ.get("SIGTEST_AT", "2")), "fitting")


def table2_train():
    """Table 2: hold the training of the second network, once the first one is trained."""
    from deepgmm.experiments import train_runner

    _hold_at_call(train_runner, "train_model", 2, "training")


def table_workers():
    """--jobs N: the first task anywhere runs, every other one holds its worker process."""
    from deepgmm.experiments import fit_runner as mt

    mt._sigtest_original = mt.run_fit_task
    mt.run_fit_task = held_task


def held_task(task):
    from deepgmm.experiments import fit_runner as mt

    original = getattr(mt, "_sigtest_original", mt.run_fit_task)
    try:
        fd = os.open(Path(os.environ["SIGTEST_MARKS"], "first-task"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        _hold(f"busy-{os.getpid()}-{task.case.name}")
    return original(task)
'''


# ----------------------------------------------------------------------------- subprocess helpers
@pytest.fixture(scope="module")
def hooks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sigtest_hooks")
    (folder / "_sigtest_hooks.py").write_text(_HOOKS, encoding="utf-8")
    return folder


def _default_signals() -> None:
    """In the child before exec: SIGINT/SIGTERM at their defaults, whatever the test run inherited
    (a run started by ``(pytest &)`` has SIGINT ignored, and its children would keep ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Run:
    """A ``deepgmm`` subprocess in its own process group, its stdout/stderr in files."""

    def __init__(self, argv: list[str], folder: Path, hooks_dir: Path, hooks: str = "", **env: str) -> None:
        self.marks = folder / "marks"
        self.marks.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex  # in the environment of the process and of its children
        extra = [str(SRC)] + ([str(hooks_dir)] if hooks else []) + [os.environ.get("PYTHONPATH", "")]
        environ = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in extra if p), OMP_NUM_THREADS="1",
                       PYTHONUNBUFFERED="1", SIGTEST_MARKS=str(self.marks), SIGTEST_HOLD_S=str(HOLD_S),
                       SIGTEST_TOKEN=self.token, **env)
        cmd = ([sys.executable, "-c", _WRAPPER, hooks] if hooks else [sys.executable, "-m", "deepgmm"]) + argv
        self.out_file, self.err_file = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.out_file, "wb") as out, open(self.err_file, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=environ,
                                         start_new_session=True, preexec_fn=_default_signals)

    @property
    def stderr(self) -> str:
        return self.err_file.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        """Poll ``condition`` until it holds (the process must still be running then)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"the process ended (status {self.proc.returncode}) before {what}: "
                                     f"{self.stderr[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout:.0f} s")
            time.sleep(0.005)
        assert self.proc.poll() is None, f"the process ended (status {self.proc.returncode}) just after {what}"

    def wait_for_mark(self, name: str) -> None:
        self.wait_for(lambda: (self.marks / name).exists(), f"the marker {name!r}")

    def signal(self, sig: int, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Send ``sig`` to the process group; return the exit status and stderr."""
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the process did not stop within {timeout:.0f} s of the signal") from None
        return self.proc.returncode, self.stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


@pytest.fixture
def start(hooks_dir, tmp_path):
    """``start(argv, hooks="", **env)`` -> :class:`Run`; every process group left is killed at teardown."""
    runs: list[Run] = []

    def _start(argv: list[Any], hooks: str = "", **env: str) -> Run:
        run = Run([str(a) for a in argv], tmp_path / f"run{len(runs)}", hooks_dir, hooks, **env)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        run.kill()


def _expected(sig: int) -> tuple[int, str]:
    if sig == signal.SIGINT:
        return 130, "deepgmm: error: interrupted"
    return 143, "deepgmm: error: terminated"


def _check_exit(sig: int, status: int, err: str) -> None:
    code, line = _expected(sig)
    assert status == code, (status, err)
    assert err.strip().splitlines() == [line], err


def _leftovers(root: Path) -> list[str]:
    """Temporary, staging or moved-aside entries anywhere under ``root`` (marker files excepted)."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if ".tmp" in name or ".staging-" in name or ".old-" in name:
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _processes_with(token: str) -> list[int]:
    """Live processes whose environment holds ``token`` (Linux /proc; zombies have no environment)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if token.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _write_nifti(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ----------------------------------------------------------------------------- train
EPOCHS = 40  # ~0.05 s each here: the first checkpoint leaves a window of seconds to interrupt an epoch


@pytest.fixture(scope="module")
def train_case(tmp_path_factory):
    """The data, the argv of a deterministic training run, and the final weights of an uninterrupted run."""
    root = tmp_path_factory.mktemp("train")
    data = make_cohort(root / "data", n=8)

    def argv(out: Path, *extra: str) -> list[str]:
        return ["train", str(data), "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network",
                '{"features": [8, 16]}', "--epochs", str(EPOCHS), "--batch-size", "2", "--tol", "0",
                "--out", str(out), "--threads", "1", "--deterministic", "--no-progress", *extra]

    saved = torch.get_num_threads()
    try:
        assert main(argv(root / "reference")) == 0
    finally:
        torch.set_num_threads(saved)
    reference = load_checkpoint(root / "reference" / MODEL_FILE)["model"]
    log = list(csv.DictReader(open(root / "reference" / "log.csv", encoding="utf-8")))
    return argv, reference, log


def _check_interrupted_model_folder(out: Path) -> int:
    """An interrupted model folder: a loadable checkpoint, a log that is a prefix of its history, no model.pt."""
    assert _leftovers(out) == []
    assert not (out / MODEL_FILE).exists()
    ckpt = load_checkpoint(out / CHECKPOINT_FILE)  # verified: complete, checksum matches
    epoch = int(ckpt["epoch"])
    assert 1 <= epoch < EPOCHS and not ckpt["finished"]
    assert [r["epoch"] for r in ckpt["history"]] == list(range(1, epoch + 1))
    # log.csv is written just after the checkpoint: the signal may fall in between (even before the first one)
    rows = list(csv.DictReader(open(out / "log.csv", encoding="utf-8"))) if (out / "log.csv").exists() else []
    assert len(rows) in (epoch - 1, epoch), (len(rows), epoch)
    assert [float(r["nll"]) for r in rows] == [h["nll"] for h in ckpt["history"][:len(rows)]]
    return epoch


def _resume_and_compare(argv: Callable[..., list[str]], out: Path, reference: dict, ref_log: list, capsys) -> None:
    assert main(argv(out, "--resume")) == 0
    capsys.readouterr()
    assert _leftovers(out) == []
    final = load_checkpoint(out / MODEL_FILE)["model"]
    assert final.keys() == reference.keys()
    for k in reference:
        assert torch.equal(final[k], reference[k]), k
    rows = list(csv.DictReader(open(out / "log.csv", encoding="utf-8")))
    assert [r["nll"] for r in rows] == [r["nll"] for r in ref_log]
    assert json.loads((out / "summary.json").read_text())["epochs"] == EPOCHS


@pytest.mark.parametrize("sig", _SIGNALS)
def test_train_interrupted_after_a_checkpoint_then_resumed(train_case, start, tmp_path, sig, capsys):
    """The unmodified CLI, interrupted mid-training once its first checkpoint exists."""
    argv, reference, ref_log = train_case
    out = tmp_path / "model"
    run = start(argv(out))
    run.wait_for(lambda: (out / CHECKPOINT_FILE).exists(), "the first checkpoint")
    status, err = run.signal(sig)
    _check_exit(sig, status, err)
    _check_interrupted_model_folder(out)
    _resume_and_compare(argv, out, reference, ref_log, capsys)


@pytest.mark.parametrize("sig", _SIGNALS)
def test_train_interrupted_while_writing_a_checkpoint_keeps_the_previous_one(train_case, start, tmp_path, sig,
                                                                            capsys):
    """The signal arrives while the second checkpoint sits complete in its temporary file, not yet renamed."""
    argv, reference, ref_log = train_case
    out = tmp_path / "model"
    run = start(argv(out), hooks="checkpoint_write")
    run.wait_for_mark("checkpoint-tmp")
    assert [p.name for p in out.iterdir() if p.name.startswith(".checkpoint.") and ".tmp" in p.name], "no temporary checkpoint"
    status, err = run.signal(sig)
    _check_exit(sig, status, err)
    assert _check_interrupted_model_folder(out) == 1  # the previous checkpoint, intact
    _resume_and_compare(argv, out, reference, ref_log, capsys)


# ----------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def predict_case(tmp_path_factory):
    """A tiny trained model (one epoch) and a data folder of three cases."""
    root = tmp_path_factory.mktemp("predict")
    data = make_cohort(root / "data", n=3)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(method="deepsvg", n_components=2, network={"features": (8, 16)}, epochs=1, batch_size=2)
        train(cfg, FolderDataset(data, ["A", "B"]), root / "model")
    finally:
        torch.set_num_threads(saved)
    return root / "model", data


def _predict_argv(predict_case, out: Path, mode: str, *extra: str) -> list[str]:
    model, data = predict_case
    if mode == "data":
        return ["predict", "--model", str(model), "--data", str(data), "--out", str(out), *extra]
    case = data / "case01"
    return ["predict", "--model", str(model), str(case / "A.nii.gz"), str(case / "B.nii.gz"), "--mask",
            str(case / "mask.nii.gz"), "--out", str(out), *extra]


def _check_predict_output(out: Path, mode: str) -> None:
    """A complete output folder: every file present and readable to its end."""
    assert (out / ".deepgmm-output").is_file()
    if mode == "data":
        names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        assert names == ["case00", "case01", "case02", "summary.csv", "summary.json"], names
        summary = json.loads((out / "summary.json").read_text())
        assert [r["name"] for r in summary["per_unit"]] == ["case00", "case01", "case02"]
        assert len(list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))) == 3
        folders = [out / n for n in names[:3]]
    else:
        folders = [out]
    for f in folders:
        assert sorted(p.name for p in f.iterdir() if not p.name.startswith(".")) == \
            ["labels.nii.gz", "probabilities.nii.gz", "summary.json"]
        labels = np.asanyarray(nib.load(str(f / "labels.nii.gz")).dataobj)
        probs = np.asanyarray(nib.load(str(f / "probabilities.nii.gz")).dataobj)
        assert labels.shape == (32, 32, 1) and probs.shape == (32, 32, 1, 2)
        assert np.isfinite(json.loads((f / "summary.json").read_text())["nll"])


@pytest.mark.parametrize("mode", ["data", "image"])
@pytest.mark.parametrize("sig", _SIGNALS)
def test_predict_interrupted_while_writing_leaves_no_output(predict_case, start, tmp_path, sig, mode, capsys):
    """Held after the second case (--data) or the image's probabilities were staged: nothing is left."""
    out = tmp_path / "out"
    run = start(_predict_argv(predict_case, out, mode), hooks="predict_write",
                SIGTEST_AT="2" if mode == "data" else "1")
    run.wait_for_mark("staged")
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging-")]
    assert staging, "the write phase was not reached"
    if mode == "data":
        assert (staging[0] / "case00" / "summary.json").is_file()  # one case complete, the next one half-written
    status, err = run.signal(sig)
    _check_exit(sig, status, err)
    assert not out.exists()
    assert _leftovers(tmp_path) == []
    assert main(_predict_argv(predict_case, out, mode)) == 0  # a second run completes (no --overwrite needed)
    capsys.readouterr()
    _check_predict_output(out, mode)


@pytest.mark.parametrize("sig", _SIGNALS)
def test_predict_interrupted_while_overwriting_keeps_the_previous_output(predict_case, start, tmp_path, sig, capsys):
    out = tmp_path / "out"
    assert main(_predict_argv(predict_case, out, "data")) == 0
    capsys.readouterr()
    before = _snapshot(out)
    run = start(_predict_argv(predict_case, out, "data", "--overwrite"), hooks="predict_write", SIGTEST_AT="2")
    run.wait_for_mark("staged")
    status, err = run.signal(sig)
    _check_exit(sig, status, err)
    assert _snapshot(out) == before  # the complete previous output, byte for byte
    assert _leftovers(tmp_path) == []
    assert main(_predict_argv(predict_case, out, "data", "--overwrite")) == 0
    capsys.readouterr()
    _check_predict_output(out, "data")


@pytest.mark.parametrize("sig", _SIGNALS)
def test_segment_data_interrupted_while_writing_leaves_no_output(predict_case, start, tmp_path, sig, capsys):
    """``segment --data`` (a cohort, one output folder): held after the second case was staged."""
    _, data = predict_case
    out = tmp_path / "out"

    def argv() -> list[str]:
        return ["segment", "--data", str(data), "--channels", "A,B", "--method", "svgmm", "-k", "2", "--out",
                str(out)]

    run = start(argv(), hooks="predict_write", SIGTEST_AT="2")
    run.wait_for_mark("staged")
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging-")]
    assert staging and (staging[0] / "case00" / "summary.json").is_file()
    status, err = run.signal(sig)
    _check_exit(sig, status, err)
    assert not out.exists()
    assert _leftovers(tmp_path) == []
    assert main(argv()) == 0
    capsys.readouterr()
    _check_predict_output(out, "data")


# ----------------------------------------------------------------------------- myops table1
def _myops_case(root: Path, case: int, shape: tuple[int, int, int] = (24, 22, 3)) -> None:
    """A MyoPS-layout case: every slice holds background, the right ventricle and the four classes."""
    codes = np.zeros(shape, dtype=np.int16)
    codes[5:19, 5:17] = 200  # myocardium
    codes[9:15, 8:14] = 500  # blood pool
    codes[5:7, 5:17] = 1220  # edema
    codes[17:19, 5:17] = 2221  # scar
    codes[0:2, 0:2] = 600  # right ventricle (background)
    cls = np.select([codes == 500, codes == 200, codes == 1220, codes == 2221], [1, 2, 3, 4], 0)
    means = np.array([[0, 0, 0], [5, 1, 6], [-2, 2, 0], [1, 5, 2], [5, 4, 1]], dtype=np.float64)  # (class, channel)
    rng = np.random.default_rng(case)
    (root / "train25").mkdir(parents=True, exist_ok=True)
    (root / "train25_myops_gd").mkdir(parents=True, exist_ok=True)
    for c, ch in enumerate(("DE", "T2", "C0")):
        _write_nifti(root / "train25" / f"myops_training_{case:03d}_{ch}.nii.gz",
                     (means[cls, c] + rng.normal(0, 0.3, shape)).astype(np.float32))
    _write_nifti(root / "train25_myops_gd" / f"myops_training_{case:03d}_gd.nii.gz", codes)


N_RECORDS = 6  # gmm on 2 cases x 3 slices


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def table_case(tmp_path_factory):
    """Synthetic MyoPS folders, the table argv, and the records of an uninterrupted run."""
    root = tmp_path_factory.mktemp("myops")
    for case in (1, 3):
        _myops_case(root / "data", case)

    def argv(out: Path, *extra: str) -> list[str]:
        return ["myops", "table1", "--data", str(root / "data"), "--out", str(out), "--methods", "gmm",
                "--threads", "1", "--no-figures", *extra]

    assert main(argv(root / "reference")) == 0
    doc = json.loads((root / "reference" / "results.json").read_text())
    assert doc["complete"] and len(doc["records"]) == N_RECORDS
    return argv, doc["records"]


def _check_interrupted_table(out: Path, n_records: int) -> dict:
    assert _leftovers(out) == []
    assert not (out / ".lock").exists()
    doc = json.loads((out / "results.json").read_text())  # valid JSON
    assert len(doc["records"]) == n_records and not doc["complete"] and doc["missing"] == N_RECORDS - n_records
    assert doc["runs"][-1]["interrupted"] is True
    assert "**Incomplete**" in (out / "table.md").read_text()  # rewritten (atomically) after the interruption
    return doc


def _resume_table(argv: Callable[..., list[str]], out: Path, reference: list[dict], capsys) -> None:
    assert main(argv(out, "--resume")) == 0
    capsys.readouterr()
    assert _leftovers(out) == []
    doc = json.loads((out / "results.json").read_text())
    assert doc["complete"] and len(doc["runs"]) == 2 and doc["runs"][-1]["interrupted"] is False
    assert _strip(doc["records"]) == _strip(reference)


@pytest.mark.parametrize("phase", ["fit", "results-write"])
@pytest.mark.parametrize("sig", _SIGNALS)
def test_table1_interrupted_keeps_the_finished_records_then_resumes(table_case, start, tmp_path, sig, phase, capsys):
    """Held during the second slice's fit, or while results.json's first record sits in its temporary file."""
    argv, reference = table_case
    out = tmp_path / "t1"
    run = start(argv(out), hooks="table_fit" if phase == "fit" else "results_write")
    run.wait_for_mark("fitting" if phase == "fit" else "results-tmp")
    if phase == "fit":
        assert len(json.loads((out / "results.json").read_text())["records"]) == 1
    else:
        assert [p for p in out.iterdir() if p.name.startswith(".results.") and ".tmp" in p.name], "no temporary results.json"
    status, err = run.signal(sig)
    _check_exit(sig, status, err)
    doc = _check_interrupted_table(out, 1)  # the interrupted rewrite's record is kept by the final save
    assert _strip(doc["records"]) == _strip(reference[:1])
    _resume_table(argv, out, reference, capsys)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find worker processes")
@pytest.mark.parametrize("sig", _SIGNALS)
def test_table1_jobs2_interrupted_stops_its_workers_then_resumes(table_case, start, tmp_path, sig, capsys):
    """--jobs 2: both workers are mid-task when the whole process group gets the signal."""
    argv, reference = table_case
    out = tmp_path / "t1"
    run = start(argv(out, "--jobs", "2"), hooks="table_workers")

    def ready() -> bool:
        busy = [p for p in run.marks.iterdir() if p.name.startswith("busy-")]
        try:
            records = json.loads((out / "results.json").read_text())["records"]
        except (OSError, ValueError):
            return False
        return len(busy) == 2 and len(records) == 1

    run.wait_for(ready, "one record and two busy workers")
    status, err = run.signal(sig)
    _check_exit(sig, status, err)
    deadline = time.monotonic() + 30  # the workers (and multiprocessing's helper) are gone
    while _processes_with(run.token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(run.token) == []
    doc = _check_interrupted_table(out, 1)
    assert _strip(doc["records"])[0] in _strip(reference)  # whichever task ran first
    _resume_table(argv, out, reference, capsys)


# ----------------------------------------------------------------------------- myops table2
N_RECORDS_T2 = 12  # 4 methods x the 3 slices of the test patient


@pytest.fixture(scope="module")
def table2_case(tmp_path_factory):
    """Synthetic MyoPS folders (train on patient 1, test on 3), the argv, and an uninterrupted run's records."""
    root = tmp_path_factory.mktemp("myops2")
    for case in (1, 3):
        _myops_case(root / "data", case)

    def argv(out: Path, *extra: str) -> list[str]:
        return ["myops", "table2", "--data", str(root / "data"), "--out", str(out), "--train-cases", "1",
                "--test-cases", "3", "--epochs", "3", "--batch-size", "2", "--threads", "1", "--no-figures", *extra]

    saved = torch.get_num_threads()
    try:
        assert main(argv(root / "reference")) == 0
    finally:
        torch.set_num_threads(saved)
    doc = json.loads((root / "reference" / "results.json").read_text())
    assert doc["complete"] and len(doc["records"]) == N_RECORDS_T2
    return argv, doc["records"]


@pytest.mark.parametrize("phase", ["training", "testing"])
@pytest.mark.parametrize("sig", _SIGNALS)
def test_table2_interrupted_then_resumed(table2_case, start, tmp_path, sig, phase, capsys):
    """Held while the second network trains (the first is finished), or during the second test slice."""
    argv, reference = table2_case
    out = tmp_path / "t2"
    if phase == "training":
        run = start(argv(out), hooks="table2_train")
        run.wait_for_mark("training")
    else:  # EM fits 1 and 2 belong to the first slice (SVGMM, SVGMMμ); the third is the second slice's
        run = start(argv(out), hooks="table_fit", SIGTEST_AT="3")
        run.wait_for_mark("fitting")
    status, err = run.signal(sig)
    _check_exit(sig, status, err)
    assert _leftovers(out) == []
    assert not (out / ".lock").exists()
    doc = json.loads((out / "results.json").read_text())
    n_done = 0 if phase == "training" else 4
    assert len(doc["records"]) == n_done and not doc["complete"] and doc["runs"][-1]["interrupted"] is True
    finished = out / "models" / "deepsvg" / MODEL_FILE
    assert load_checkpoint(finished)["model"]  # the finished network, complete
    stamp = finished.stat().st_mtime_ns
    assert "**Incomplete**" in (out / "table.md").read_text()
    assert main(argv(out, "--resume")) == 0
    capsys.readouterr()
    assert _leftovers(out) == []
    done = json.loads((out / "results.json").read_text())
    assert done["complete"] and done["runs"][-1]["interrupted"] is False
    assert finished.stat().st_mtime_ns == stamp  # trained once, reused on resume
    assert _strip(done["records"]) == _strip(reference)
