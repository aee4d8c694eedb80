"""Small synthetic jobs for each ``deepgmm`` command, run as fresh processes (the stress tests of this folder,
and ``benchmarks/bench_cli.py``, which times them).

Each :class:`Scenario` writes its data into a folder and gives the command's argv, what an
interrupted run may leave, the documented way on after an interruption, and the result that must
equal an uninterrupted run's. :func:`run_cli` runs ``python -m deepgmm`` in a process group of its
own, optionally sending it a signal after a delay.
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

SEGMENT_FILES = [".deepgmm-output", "labels.nii.gz", "probabilities.nii.gz", "summary.json"]
COHORT_FILES = [".deepgmm-output", "case00", "case01", "case02", "summary.csv", "summary.json"]


def _missing(folder: Path, want: list[str]) -> list[str]:
    """A problem when ``folder`` exists and does not hold exactly the entries ``want``."""
    names = sorted(p.name for p in folder.iterdir()) if folder.exists() else want
    return [] if names == want else [f"incomplete {folder.name}: {names}"]


TRAIN_EPOCHS = 6


def _save(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def _nifti(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


# ----------------------------------------------------------------------------- data
def _cohort(root: Path, n: int, seed: int) -> Path:
    """``root/caseNN/{A,B,mask}.nii.gz``: two classes in the halves of a rectangle, noise sd 0.5."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [3.0, -1.0], [-1.0, 3.0]])
    for c in range(n):
        d = root / f"case{c:02d}"
        d.mkdir(parents=True)
        truth = np.zeros((32, 32), int)
        truth[3 + c % 3:29, 3:16] = 1
        truth[3 + c % 3:29, 16:29] = 2
        img = means[truth].transpose(2, 0, 1) + rng.normal(0, 0.5, (2, 32, 32))
        for ch, a in zip("AB", img):
            _save(d / f"{ch}.nii.gz", a[..., None].astype(np.float32))
        _save(d / "mask.nii.gz", (truth > 0).astype(np.uint8)[..., None])
    return root


def _myops(root: Path, cases: tuple[int, ...], seed: int) -> Path:
    """MyoPS-layout patients whose 3 slices each hold background, the right ventricle and the four classes."""
    codes = np.zeros((24, 22, 3), dtype=np.int16)
    codes[5:19, 5:17] = 200
    codes[9:15, 8:14] = 500
    codes[5:7, 5:17] = 1220
    codes[17:19, 5:17] = 2221
    codes[0:2, 0:2] = 600
    cls = np.select([codes == 500, codes == 200, codes == 1220, codes == 2221], [1, 2, 3, 4], 0)
    means = np.array([[0, 0, 0], [5, 1, 6], [-2, 2, 0], [1, 5, 2], [5, 4, 1]], dtype=np.float64)
    (root / "train25").mkdir(parents=True)
    (root / "train25_myops_gd").mkdir(parents=True)
    for case in cases:
        rng = np.random.default_rng(seed + case)
        for c, ch in enumerate(("DE", "T2", "C0")):
            _save(root / "train25" / f"myops_training_{case:03d}_{ch}.nii.gz",
                  (means[cls, c] + rng.normal(0, 0.3, codes.shape)).astype(np.float32))
        _save(root / "train25_myops_gd" / f"myops_training_{case:03d}_gd.nii.gz", codes)
    return root


# ----------------------------------------------------------------------------- scenarios
class Scenario:
    """One command: its argv, what an interrupted run may leave, how to go on, and the final check."""

    def __init__(self, folder: Path, seed: int, env: dict[str, str]) -> None:
        self.folder = folder
        self.seed = seed
        self.env = env

    def argv(self, out: Path, *extra: str) -> list[str]:
        raise NotImplementedError

    def left(self, out: Path, status: int) -> list[str]:
        """Problems with what an interrupted (or finished) run left in ``out``."""
        return []

    def way_on(self, out: Path) -> list[str] | None:
        """The argv that finishes the job after an interruption (None: nothing to do)."""
        return None if out.exists() else self.argv(out)

    def result(self, out: Path) -> object:
        """What must equal the reference's once the job is finished."""
        raise NotImplementedError


class Segment(Scenario):
    def __init__(self, folder: Path, seed: int, env: dict[str, str]) -> None:
        super().__init__(folder, seed, env)
        gen = np.random.default_rng(seed)
        truth = gen.integers(0, 3, (24, 20))
        self.paths = []
        for c in range(2):
            self.paths.append(str(folder / f"ch{c}.nii.gz"))
            _save(Path(self.paths[-1]), (3.0 * truth + c + gen.normal(0, 0.5, truth.shape)).astype(np.float32)[..., None])

    def argv(self, out: Path, *extra: str) -> list[str]:
        return ["segment", *self.paths, "--method", "gmm", "-k", "3", "--out", str(out), *extra]

    def left(self, out: Path, status: int) -> list[str]:
        return _missing(out, SEGMENT_FILES)

    def result(self, out: Path) -> object:
        return _nifti(out / "labels.nii.gz").tolist()


class SegmentDeep(Segment):
    """``segment --method deepsvg`` (defaults) on the same image."""

    def argv(self, out: Path, *extra: str) -> list[str]:
        return ["segment", *self.paths, "--method", "deepsvg", "-k", "3", "--out", str(out), *extra]


class Train(Scenario):
    def __init__(self, folder: Path, seed: int, env: dict[str, str]) -> None:
        super().__init__(folder, seed, env)
        self.data = _cohort(folder / "cohort", 4, seed)

    def argv(self, out: Path, *extra: str) -> list[str]:
        return ["train", str(self.data), "--channels", "A,B", "--method", "deepsvg", "-k", "2", "--network",
                '{"features": [8, 16]}', "--epochs", str(TRAIN_EPOCHS), "--batch-size", "2", "--tol", "0",
                "--out", str(out), "--threads", "1", "--deterministic", "--no-progress", *extra]

    def left(self, out: Path, status: int) -> list[str]:
        if status == 0 and not (out / "model.pt").is_file():
            return ["finished without model.pt"]
        return []

    def way_on(self, out: Path) -> list[str] | None:
        if (out / "model.pt").is_file():
            return None
        if (out / "checkpoint.pt").is_file():
            return self.argv(out, "--resume")
        if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
            return self.argv(out, "--overwrite")
        return self.argv(out)

    def result(self, out: Path) -> object:
        from deepgmm.training import load_checkpoint

        state = load_checkpoint(out / "model.pt")["model"]
        log = [r["nll"] for r in csv.DictReader(open(out / "log.csv", encoding="utf-8"))]
        return {k: v.numpy().tobytes() for k, v in state.items()}, log


class TrainDefault(Train):
    """The same training without ``--deterministic`` (on the CPU it is repeatable all the same)."""

    def argv(self, out: Path, *extra: str) -> list[str]:
        return [a for a in super().argv(out, *extra) if a != "--deterministic"]


class Predict(Scenario):
    def __init__(self, folder: Path, seed: int, env: dict[str, str]) -> None:
        super().__init__(folder, seed, env)
        self.data = _cohort(folder / "cohort", 3, seed)
        self.model = folder / "model"
        status, err, _ = run_cli(Train(folder / "m", seed, env).argv(self.model), env)
        if status:
            raise SystemExit(f"training the model for predict failed: {err[-2000:]}")

    def argv(self, out: Path, *extra: str) -> list[str]:
        return ["predict", "--model", str(self.model), "--data", str(self.data), "--out", str(out), *extra]

    def left(self, out: Path, status: int) -> list[str]:
        problems = _missing(out, COHORT_FILES)
        return problems or [p for d in sorted(out.glob("case*")) for p in _missing(d, SEGMENT_FILES[1:])]

    def result(self, out: Path) -> object:
        return [_nifti(d / "labels.nii.gz").tolist() for d in sorted(out.glob("case*"))]


class PredictImage(Predict):
    """``predict IMG... --mask M``: one case of the cohort, one output folder."""

    def argv(self, out: Path, *extra: str) -> list[str]:
        case = self.data / "case01"
        return ["predict", "--model", str(self.model), str(case / "A.nii.gz"), str(case / "B.nii.gz"), "--mask",
                str(case / "mask.nii.gz"), "--out", str(out), *extra]

    def left(self, out: Path, status: int) -> list[str]:
        return _missing(out, SEGMENT_FILES)

    def result(self, out: Path) -> object:
        return _nifti(out / "labels.nii.gz").tolist()


class SegmentData(Predict):
    """``segment --data``: the SVGMM on every case of a cohort of 3, one output folder."""

    def __init__(self, folder: Path, seed: int, env: dict[str, str]) -> None:
        Scenario.__init__(self, folder, seed, env)
        self.data = _cohort(folder / "cohort", 3, seed)

    def argv(self, out: Path, *extra: str) -> list[str]:
        return ["segment", "--data", str(self.data), "--channels", "A,B", "--method", "svgmm", "-k", "2", "--out",
                str(out), *extra]


class Table1(Scenario):
    def __init__(self, folder: Path, seed: int, env: dict[str, str]) -> None:
        super().__init__(folder, seed, env)
        self.data = _myops(folder / "myops", (1, 3), seed)

    def argv(self, out: Path, *extra: str) -> list[str]:
        return ["myops", "table1", "--data", str(self.data), "--out", str(out), "--methods", "gmm", "--threads", "1",
                "--no-figures", *extra]

    def left(self, out: Path, status: int) -> list[str]:
        path = out / "results.json"
        if path.exists():
            try:
                json.loads(path.read_text())
            except ValueError as e:
                return [f"results.json is not valid JSON: {e}"]
        return []

    def way_on(self, out: Path) -> list[str] | None:
        path = out / "results.json"
        if path.exists() and json.loads(path.read_text()).get("complete"):
            return None
        return self.argv(out, "--resume") if out.exists() else self.argv(out)

    def result(self, out: Path) -> object:
        records = json.loads((out / "results.json").read_text())["records"]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


class Table1Jobs2(Table1):
    """``myops table1 --jobs 2``: the same work in two worker processes (the experiments' pool)."""

    def argv(self, out: Path, *extra: str) -> list[str]:
        return super().argv(out, "--jobs", "2", *extra)


class Table2(Table1):
    """``myops table2``: train on synthetic patient 1 (3 epochs), test on patient 3 (4 methods x 3 slices)."""

    def argv(self, out: Path, *extra: str) -> list[str]:
        return ["myops", "table2", "--data", str(self.data), "--out", str(out), "--train-cases", "1", "--test-cases",
                "3", "--epochs", "3", "--batch-size", "2", "--threads", "1", "--no-figures", *extra]


SCENARIOS: dict[str, type[Scenario]] = {"segment": Segment, "segment-deepsvg": SegmentDeep, "train": Train,
                                        "train-default": TrainDefault,
                                        "segment-data": SegmentData, "predict": Predict, "predict-image": PredictImage,
                                        "table1": Table1, "table1-jobs2": Table1Jobs2, "table2": Table2}


def _default_signals() -> None:
    """In the child before exec: SIGINT and SIGTERM at their defaults. A shell starts ``(cmd &)`` with
    SIGINT ignored, the child would inherit that, and a stress run would then measure nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_cli(argv: list[str], env: dict[str, str], sig: int | None = None, delay: float = 0.0) -> tuple[int, str, float]:
    """Run ``python -m deepgmm argv`` in its own process group; with ``sig``, send it after ``delay`` s."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "deepgmm", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env, start_new_session=True,
                            preexec_fn=_default_signals)
    if sig is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, time.perf_counter() - t0
