"""The paper's MyoPS 2020 tables (Schwab, Mayr & Haltmeier 2024), one command each.

**Table 1** (:func:`run_table1`, ``deepgmm myops table1``): single-image optimisation. Every
kept slice of the paper's protocol (:func:`deepgmm.datasets.myops.paper_slices`: 79 slices of
25 patients) is segmented into K = 4 classes by each method (``gmm``, ``deepg``, ``svgmm``,
``deepsvg``) with :func:`deepgmm.segment` at the library's *default* settings, on the
slice's z-scored image (``normalize="none"``: the loader already z-scored it over the crop)
inside its ground-truth left ventricle; every fit gets ``random_state = seed`` (the same for
every slice and method, whichever worker runs it), so any record can be reproduced with
``segment(slice.image, slice.mask, method=..., n_components=4, random_state=record["seed"])``.

**Table 2** (:func:`run_table2`, ``deepgmm myops table2``): one network per method is trained
on the 20 training patients (all but :data:`deepgmm.datasets.myops.TEST_CASES`) with
:func:`deepgmm.training.train` and applied to the slices of the five test patients:

* ``svgmm``: EM on each test slice (default settings), Hungarian matching;
* ``deepsvg``: a deepSVG network trained without prior, Hungarian matching;
* ``svgmm_mu``: EM started at ``mu_data`` (``init="means"``, ``means_init=mu_data``);
* ``deepsvg_mu``: a deepSVG network trained with the ``mu_prior`` regulariser (``lam = 1``);

``mu_data`` ``(4, 3)`` is the per-class, per-channel ground-truth mean averaged over 10 seeded
random slices of the *training* patients (:func:`compute_mu_data`). For the two μ variants the
class order is fixed by ``mu_data``: their records have ``matching = "prior"`` (no matching)
and carry the Hungarian-matched Dice as well (``record["matched"]``); the table shows both.

Outputs (the output folder is the run's working folder, see :mod:`._store`):

* ``results.json``: ``config``, ``method_settings`` (every method's resolved settings),
  ``records`` (one per ``(method, case, slice)``: ``dice`` per class ``blood``, ``myocardium``,
  ``edema``, ``scar``, ``mean_dice``, ``nll``, ``seconds``, ``iterations``, ``matching``,
  ``mapping``, ``seed``, ``converged``, ``warnings``), ``summary`` per method (mean ± std over
  slices), ``complete``, ``runs`` (wall time, machine, versions, command of every run);
* ``table.md`` laid out like the paper's tables; ``overview.png`` (box plots of Dice per class
  and method); ``figures/<case>_z<slice>.png`` per slice (channels, ground truth, each method's
  matched prediction, like the paper's Figure 2); ``predictions/<case>_z<slice>_<method>.npy``
  (each matched prediction, 0 outside the mask, 1..4 = blood..scar); Table 2 also ``mu_data.json``
  and ``models/<method>/`` (the trained model folders; with ``--ensemble N`` also
  ``models/<method>-2/`` ... ``models/<method>-N/``).

``results.json`` is rewritten atomically after every slice, so an interrupted run (Ctrl-C
included) loses at most the slice in progress; ``resume=True`` skips the records already there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ._report import CLASS_COLUMNS, display_name, format_table, overview_figure, slice_figure, summarize
from ._store import (FIGURES_DIR, OVERVIEW_FILE, PREDICTIONS_DIR, RESULTS_FILE, TABLE_FILE, FORMAT_VERSION,
                     ResultsFolder, plain, sort_records)

__all__ = [
    "TABLE1_METHODS",
    "TABLE2_METHODS",
    "TABLE1_MATCHINGS",
    "N_COMPONENTS",
    "MU_SLICES",
    "TABLE2_TRAIN_DEFAULTS",
    "TableResult",
    "run_table1",
    "run_table2",
    "compute_mu_data",
    "parse_cases",
    "add_parser",
    "RESULTS_FILE",
    "TABLE_FILE",
    "OVERVIEW_FILE",
    "FIGURES_DIR",
    "PREDICTIONS_DIR",
]

logger = logging.getLogger(__name__)

TABLE1_METHODS: tuple[str, ...] = ("gmm", "deepg", "svgmm", "deepsvg")
"""Methods of Table 1, in the paper's row order."""

TABLE2_METHODS: tuple[str, ...] = ("svgmm", "deepsvg", "svgmm_mu", "deepsvg_mu")
"""Methods of Table 2, in the paper's row order."""

TABLE1_MATCHINGS: tuple[str, ...] = ("hungarian", "greedy")
N_COMPONENTS = 4
MU_SLICES = 10
"""Number of random training slices ``mu_data`` is averaged over."""

TABLE2_TRAIN_DEFAULTS: dict[str, Any] = {"normalize": "image", "crop_size": [128, 128]}
"""Training settings of Table 2 on top of :class:`deepgmm.training.TrainConfig`'s defaults: those
``deepgmm train --layout myops`` uses (z-score over the 160x160 slice, 128x128 training windows)."""

MU_LAM = 1.0
"""Weight of the ``mu_prior`` regulariser of deepSVGμ (the paper's lam)."""

_TRAINED = {"deepsvg": None, "deepsvg_mu": "mu"}  # Table 2 methods that need a trained network


@dataclass
class TableResult:
    """What a table command did.

    out_dir : the output folder; records : all records in ``results.json`` (sorted);
    summary : per method (see :func:`deepgmm.experiments._report.summarize`); table : the Markdown
    of ``table.md``; added : records computed by this run; complete : every expected record exists;
    seconds : wall time of this run; training : Table 2's training summaries (else empty).
    """

    out_dir: Path
    records: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    table: str
    added: int
    complete: bool
    seconds: float
    training: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- small helpers
def _slice_name(case: int, slice_index: int) -> str:
    return f"{case}_z{slice_index:03d}"


def parse_cases(text: str | Sequence[int] | None, name: str = "--cases") -> list[int] | None:
    """``"101,102"`` -> ``[101, 102]`` (None stays None). Ids must be distinct positive integers."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [t.strip() for t in text.split(",")]
        try:
            ids = [int(t) for t in parts]
        except ValueError:
            raise ValueError(f"{name} must be comma-separated case ids such as 101,102, got {text!r}") from None
    else:
        ids = []
        for c in text:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise ValueError(f"{name} must be integer case ids such as 101, got {c!r}")
            ids.append(int(c))
    if not ids:
        raise ValueError(f"{name} names no case")
    if any(c < 0 for c in ids):
        raise ValueError(f"{name} must be non-negative case ids, got {ids}")
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise ValueError(f"{name} names case(s) {dup} more than once")
    return ids


def _parse_methods(methods: str | Sequence[str] | None, known: Sequence[str], name: str = "--methods") -> list[str] | None:
    if methods is None:
        return None
    items = [t.strip() for t in methods.split(",")] if isinstance(methods, str) else [str(m) for m in methods]
    if not items or any(not m for m in items):
        raise ValueError(f"{name} must be comma-separated method names from {', '.join(known)}, got {methods!r}")
    unknown = [m for m in items if m not in known]
    if unknown:
        raise ValueError(f"{name}: unknown method(s) {unknown}; choose from {', '.join(known)}")
    dup = sorted({m for m in items if items.count(m) > 1})
    if dup:
        raise ValueError(f"{name} names method(s) {dup} more than once")
    return [m for m in known if m in items]  # canonical (the paper's) order


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cpus_available": _available_cpus(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _versions() -> dict[str, str]:
    import torch

    from .._version import __version__

    return {"deepgmm_version": __version__, "torch_version": torch.__version__}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _resolve(stored: Mapping[str, Any] | None, key: str, given: Any, default: Any, source: Path,
             flag: str | None = None, added_later: bool = False) -> Any:
    """A setting of a resumed run: the stored one; a value given explicitly must equal it.

    ``added_later``: the setting is newer than some stored runs; one stored without it ran with
    ``default`` (the behaviour before the setting existed)."""
    if stored is None:
        return default if given is None else given
    value = stored.get(key, default) if added_later else stored.get(key)
    if given is not None and plain(given) != value:
        flag = flag or "--" + key.replace("_", "-")
        raise ValueError(f"cannot resume with {flag} {given!r}: the run in {source} uses {value!r} "
                         "(a resumed run keeps its settings; pass --overwrite to start again)")
    return value


def _union(stored: Sequence[Any], given: Sequence[Any] | None) -> list[Any]:
    return list(dict.fromkeys(list(stored) + list(given or [])))


def _check_int(name: str, value: Any, minimum: int) -> int:
    from .._validation import check_int

    return check_int(name, value, minimum=minimum)


def _load_slices(data: Path, cases: Sequence[int] | None) -> tuple[list[Any], list[int]]:
    """The paper's slices of ``cases`` (default: all training cases) and the case ids available."""
    from ..datasets import myops

    found = myops.find_cases(data, "train")
    if cases is not None:
        missing = [c for c in cases if c not in found]
        if missing:
            raise ValueError(f"cases: MyoPS case(s) {missing} not found under {data}; available: {sorted(found)}")
    slices = myops.paper_slices(data, cases)
    if not slices:
        raise ValueError(f"no slice of case(s) {cases if cases is not None else sorted(found)} under {data} "
                         "holds all four classes; nothing to evaluate")
    return slices, sorted(found)


def _settings_of(seg: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved settings of a fit (its estimator's parameters), without the seed."""
    model = getattr(seg, "model", None)
    params = dict(model.get_params()) if model is not None and hasattr(model, "get_params") else dict(seg.settings)
    for k in ("random_state", "progress"):
        params.pop(k, None)
    params.update(extra or {})
    return plain(params)


def _evaluate(pred: np.ndarray, truth: np.ndarray, matching: str) -> Any:
    from ..metrics import evaluate

    return evaluate(pred, truth, labels=list(range(1, N_COMPONENTS + 1)), names=list(CLASS_COLUMNS),
                    matching=matching, pred_labels=list(range(1, N_COMPONENTS + 1)))


def _dice_fields(ev: Any, matching: str) -> dict[str, Any]:
    d = ev.to_dict()
    return {"dice": d["dice"], "mean_dice": d["mean_dice"], "matching": matching, "mapping": d["mapping"]}


@dataclass
class _Fit:
    """One method's output on one slice, before evaluation."""

    labels: np.ndarray  # (H, W) 0 outside the mask, 1..K inside
    nll: float
    seconds: float
    iterations: int | None
    converged: bool | None
    settings: dict[str, Any]
    warnings: list[str]


def _caught(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    return list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))


def _segment_fit(sl: Any, method: str, seed: int, options: Mapping[str, Any]) -> _Fit:
    from ..segmentation import segment

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = segment(sl.image, sl.mask, method=method, n_components=N_COMPONENTS, normalize="none",
                      random_state=seed, **options)
    return _Fit(seg.labels, float(seg.nll), float(seg.seconds), int(seg.n_iter), bool(seg.converged),
                _settings_of(seg, {"normalize": "none"}), _caught(caught))


def _make_record(method: str, sl: Any, fit: _Fit, matching: str, seed: int,
                 also_matched: str | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """The record of one fit and its matched prediction ``(H, W)`` (labels in the truth's classes)."""
    from ..metrics import relabel

    if matching == "prior":
        ev = _evaluate(fit.labels, sl.labels, "none")
    else:
        ev = _evaluate(fit.labels, sl.labels, matching)
    record: dict[str, Any] = {"method": method, "case": int(sl.case), "slice": int(sl.slice_index)}
    record.update(_dice_fields(ev, matching))
    record.update(nll=fit.nll, seconds=fit.seconds, iterations=fit.iterations, converged=fit.converged, seed=seed,
                  warnings=fit.warnings)
    if also_matched is not None:
        ev2 = _evaluate(fit.labels, sl.labels, also_matched)
        record["matched"] = _dice_fields(ev2, also_matched)
    matched = relabel(fit.labels, ev.mapping).astype(np.uint8)
    return record, matched


def _save_prediction(out: Path, sl: Any, method: str, labels: np.ndarray) -> None:
    from ..io import save_labels

    save_labels(out / PREDICTIONS_DIR / f"{_slice_name(sl.case, sl.slice_index)}_{method}.npy", labels)


def _draw_slice(out: Path, sl: Any, methods: Sequence[str], scores: Mapping[str, float | None],
                fresh: Mapping[str, np.ndarray], *, title: str) -> bool:
    """Draw ``figures/<case>_z<slice>.png`` when every method's prediction is available; True if drawn."""
    from ..datasets import myops

    preds: dict[str, np.ndarray | None] = {}
    for m in methods:
        if m in fresh:
            preds[m] = fresh[m]
            continue
        f = out / PREDICTIONS_DIR / f"{_slice_name(sl.case, sl.slice_index)}_{m}.npy"
        if not f.is_file() or scores.get(m) is None:
            return False
        preds[m] = np.load(f, allow_pickle=False)
    slice_figure(out / FIGURES_DIR / f"{_slice_name(sl.case, sl.slice_index)}.png", sl.image, sl.labels, sl.mask,
                 preds, scores, channels=list(myops.CHANNELS),
                 title=f"{title}: patient {sl.case}, slice {sl.slice_index}")
    return True


# ----------------------------------------------------------------------------- Table 1 work units
@dataclass
class _Table1Task:
    """The methods still to run on one slice (picklable: it travels to a worker process)."""

    slice: Any  # MyoPSSlice
    methods: list[str]
    seed: int
    matching: str
    options: dict[str, dict[str, Any]]
    out: str
    figures: bool
    figure_methods: list[str]
    known_scores: dict[str, float | None]


@dataclass
class _TaskResult:
    case: int
    slice_index: int
    records: list[dict[str, Any]]
    settings: dict[str, dict[str, Any]]


def _run_table1_task(task: _Table1Task) -> _TaskResult:
    """Fit every method of ``task`` on its slice, save the predictions, draw the slice's figure."""
    sl, out = task.slice, Path(task.out)
    records, settings, fresh = [], {}, {}
    for method in task.methods:
        fit = _segment_fit(sl, method, task.seed, task.options.get(method, {}))
        record, matched = _make_record(method, sl, fit, task.matching, task.seed)
        _save_prediction(out, sl, method, matched)
        records.append(record)
        settings[method] = fit.settings
        fresh[method] = matched
    if task.figures:
        scores = dict(task.known_scores)
        scores.update({r["method"]: r["mean_dice"] for r in records})
        _draw_slice(out, sl, task.figure_methods, scores, fresh, title="Table 1")
    return _TaskResult(int(sl.case), int(sl.slice_index), records, settings)


def _worker_init(threads: int) -> None:
    """Worker processes: Ctrl-C is the parent's business; ``threads`` torch threads each."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


class _TorchThreads:
    """Set torch's thread count (None: leave it) for a block, then restore it."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        import torch

        self.saved = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.saved)


def _execute(tasks: Sequence[Any], fn: Callable[[Any], Any], on_result: Callable[[Any], None], *, jobs: int,
             threads: int | None) -> None:
    """Run ``fn`` on every task, in this process (``jobs == 1``) or in ``jobs`` spawned worker
    processes, calling ``on_result`` in this process as results arrive. On any exception (Ctrl-C
    included) the workers are stopped and the exception propagates."""
    if jobs == 1 or len(tasks) <= 1:
        with _TorchThreads(threads):
            for t in tasks:
                on_result(fn(t))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    executor = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=mp.get_context("spawn"),
                                   initializer=_worker_init, initargs=(threads or 1,))
    futures: list[Any] = []
    try:
        futures = [executor.submit(fn, t) for t in tasks]
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except BrokenProcessPool:
                raise ChildProcessError("a worker process died unexpectedly (killed, or out of memory?); the "
                                        "records so far are saved: rerun with --resume") from None
            on_result(result)
    except BaseException:
        for fut in futures:
            fut.cancel()
        # The workers ignore SIGINT and may be in the middle of a long fit: stop them now. The
        # executor has no public way to do it before Python 3.14 (terminate_workers).
        for proc in list(getattr(executor, "_processes", {}).values()):
            proc.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def _progress_bar(enabled: bool | None, total: int, desc: str) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="slice", dynamic_ncols=True, leave=True)


# ----------------------------------------------------------------------------- shared run logic
class _Run:
    """Bookkeeping shared by both tables: records, settings checks, the final summary and files."""

    def __init__(self, store: ResultsFolder, doc: dict[str, Any], *, command: str | None, title: str,
                 methods_order: Sequence[str]) -> None:
        self.store = store
        self.t0 = time.perf_counter()
        self.added = 0
        self.title = title
        self.methods_order = list(methods_order)
        self.run = {"started": _now(), "finished": None, "wall_seconds": None, "records_added": 0,
                    "interrupted": False, "error": None, "command": command, "machine": _machine(), **_versions()}
        try:  # the store holds the folder's lock: release it if the run cannot start
            doc.setdefault("runs", []).append(self.run)
            doc.update(command=command, machine=self.run["machine"], **_versions())
            store.start(doc)
            self._refresh()
            store.save()
        except BaseException:
            store.close()
            raise

    @property
    def doc(self) -> dict[str, Any]:
        return self.store.doc

    def check_settings(self, settings: Mapping[str, Mapping[str, Any]]) -> None:
        stored = self.doc.setdefault("method_settings", {})
        for method, s in settings.items():
            prev = stored.get(method)
            if prev is None:
                stored[method] = dict(s)
                continue
            if prev != s:
                changed = sorted(k for k in set(prev) | set(s) if prev.get(k) != s.get(k))
                detail = ", ".join(f"{k}: {prev.get(k)!r} -> {s.get(k)!r}" for k in changed[:4])
                raise ValueError(f"{method}'s settings differ from those of its records in "
                                 f"{self.store.file(RESULTS_FILE)} ({detail}); the defaults changed since that run? "
                                 "start again with --overwrite")

    def add(self, records: Sequence[dict[str, Any]], settings: Mapping[str, Mapping[str, Any]]) -> None:
        self.check_settings(settings)
        for r in records:
            for w in r.get("warnings") or ():
                logger.info("%s on patient %d slice %d: %s", r["method"], r["case"], r["slice"], w)
        self.store.add(records)
        self.added += len(records)
        self.run["records_added"] = self.added
        self.run["wall_seconds"] = time.perf_counter() - self.t0
        self._refresh()
        self.store.save()

    def expected(self) -> set[tuple[str, int, int]]:
        cfg = self.doc["config"]
        return {(m, int(c), int(z)) for m in cfg["methods"] for c, z in cfg["slices"]}

    def _refresh(self) -> tuple[dict[str, Any], int]:
        """Sort the records; update the summary, ``complete``, ``missing`` and the total wall time."""
        doc = self.doc
        methods = [m for m in self.methods_order if m in doc["config"]["methods"]]
        doc["records"] = sort_records(doc["records"], methods)
        summary = summarize(doc["records"], methods)
        missing = len(self.expected() - self.store.keys())
        doc.update(summary=summary, complete=missing == 0, missing=missing)
        doc["wall_seconds"] = float(sum(r.get("wall_seconds") or 0.0 for r in doc["runs"]))
        return summary, missing

    def finish(self, error: BaseException | None, notes: Sequence[str] = ()) -> tuple[dict[str, Any], str, bool]:
        """Write the final ``results.json``, ``table.md`` and ``overview.png`` (also after an error)."""
        doc = self.doc
        self.run.update(finished=_now(), wall_seconds=time.perf_counter() - self.t0, records_added=self.added)
        if isinstance(error, KeyboardInterrupt):
            self.run["interrupted"] = True
        elif error is not None:
            self.run["error"] = " ".join(f"{type(error).__name__}: {error}".split())
        summary, missing = self._refresh()
        methods = list(summary)
        self.store.save()
        cfg = doc["config"]
        n_slices, n_cases = len(cfg["slices"]), len({c for c, _ in cfg["slices"]})
        lines = list(notes)
        if missing:
            lines.append(f"**Incomplete**: {missing} of {len(self.expected())} records missing "
                         "(run again with --resume to complete it).")
        lines.append(f"Command: `{self.run['command']}`" if self.run["command"] else "")
        lines.append(f"deepgmm {doc['deepgmm_version']}, torch {doc['torch_version']}, "
                     f"{doc['machine']['processor']} ({doc['machine']['cpus_available']} CPUs available), "
                     f"wall time {doc['wall_seconds']:.0f} s over {len(doc['runs'])} run(s).")
        table = format_table(summary, title=f"{self.title} ({n_slices} slices, {n_cases} patients)",
                             notes=[ln for ln in lines if ln])
        from ..io import atomic_write

        atomic_write(self.store.file(TABLE_FILE), lambda tmp: tmp.write_text(table, encoding="utf-8"))
        if doc["records"]:
            overview_figure(self.store.file(OVERVIEW_FILE), doc["records"], methods,
                            title=f"{self.title}: Dice over slices")
        return summary, table, missing == 0


def _score_map(records: Sequence[Mapping[str, Any]]) -> dict[tuple[int, int], dict[str, float | None]]:
    out: dict[tuple[int, int], dict[str, float | None]] = {}
    for r in records:
        out.setdefault((r["case"], r["slice"]), {})[r["method"]] = r["mean_dice"]
    return out


def _missing_figures(run: _Run, slices: Sequence[Any], methods: Sequence[str], title: str) -> None:
    """Draw the figure of every complete slice that has none (e.g. a run interrupted in between)."""
    scores = _score_map(run.doc["records"])
    for sl in slices:
        path = run.store.file(FIGURES_DIR, f"{_slice_name(sl.case, sl.slice_index)}.png")
        s = scores.get((sl.case, sl.slice_index), {})
        if not path.is_file() and all(m in s for m in methods):
            _draw_slice(run.store.path, sl, methods, s, {}, title=title)


def _close_run(run: _Run, error: BaseException | None, bar: Any, figure_slices: Sequence[Any] | None,
               methods: Sequence[str], title: str, notes: Sequence[str] = ()) -> tuple[dict[str, Any], str, bool]:
    """End a table run, also after an error: close the progress bar, draw the figures still missing
    (of ``figure_slices``; None: none; not after Ctrl-C), write the final files, release the folder."""
    if bar is not None:
        bar.close()
    try:
        if figure_slices is not None and not isinstance(error, KeyboardInterrupt):
            _missing_figures(run, figure_slices, methods, title)
        return run.finish(error, notes)
    finally:
        run.store.close()


# ----------------------------------------------------------------------------- Table 1
def run_table1(
    data: str | Path,
    out: str | Path,
    *,
    methods: str | Sequence[str] | None = None,
    cases: str | Sequence[int] | None = None,
    matching: str | None = None,
    seed: int | None = None,
    jobs: int = 1,
    threads: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    figures: bool = True,
    progress: bool | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    command: str | None = None,
) -> TableResult:
    """Table 1: every method on every kept slice, one record per ``(method, case, slice)``.

    Parameters
    ----------
    data : the MyoPS 2020 folder (``train25/``, ``train25_myops_gd/``)
    out : the output folder (created; see the module docstring for its files)
    methods : subset of :data:`TABLE1_METHODS` (default: all four)
    cases : patient ids (default: all 25 training patients)
    matching : "hungarian" (default) or "greedy" (the paper's class-by-class order)
    seed : ``random_state`` of every fit (default 0)
    jobs : worker processes (slices are shared out; results do not depend on ``jobs``)
    threads : torch threads per process (default: torch's own setting with ``jobs=1``, else
        ``max(1, cpus // jobs)`` per worker)
    resume : continue the run stored in ``out``: records already in ``results.json`` are kept and
        skipped; ``methods``/``cases`` given here may add methods or patients, other settings must
        equal the stored ones. Without ``resume`` an existing non-empty ``out`` needs ``overwrite``.
    overwrite : clear ``out`` (a previous deepgmm output) and start again
    figures : draw the per-slice figures (the overview figure is always drawn)
    progress : progress bar on stderr (default: when stderr is a terminal)
    options : per-method keyword arguments for :func:`deepgmm.segment` on top of its
        defaults, e.g. ``{"deepsvg": {"max_steps": 50}}`` (recorded in ``results.json``)
    command : the command line to record (default: a description of this call)

    Returns
    -------
    TableResult
    """
    data, out = Path(data), Path(out)
    methods_l = _parse_methods(methods, TABLE1_METHODS)
    cases_l = parse_cases(cases, "cases")
    if matching is not None:
        from .._validation import check_choice

        check_choice("matching", matching, TABLE1_MATCHINGS)
    if seed is not None:
        _check_int("seed", seed, 0)
    jobs = _check_int("jobs", jobs, 1)
    if threads is not None:
        threads = _check_int("threads", threads, 1)
    elif jobs > 1:
        threads = max(1, _available_cpus() // jobs)
    opts = _check_options(options, TABLE1_METHODS)

    store = ResultsFolder(out, experiment="myops-table1", resume=resume, overwrite=overwrite)
    stored = store.check()
    scfg = stored["config"] if stored is not None else None
    matching = _resolve(scfg, "matching", matching, "hungarian", out)
    seed = _resolve(scfg, "seed", seed, 0, out)
    opts = _resolve(scfg, "options", opts if options is not None else None, {}, out, flag="options")
    run_methods = methods_l or (list(scfg["methods"]) if scfg else list(TABLE1_METHODS))
    if scfg is not None and cases_l is None:
        cases_l = sorted({int(c) for c, _ in scfg["slices"]})
    slices, _ = _load_slices(data, cases_l)

    slice_keys = [[int(s.case), int(s.slice_index)] for s in slices]
    all_methods = [m for m in TABLE1_METHODS if m in _union(scfg["methods"] if scfg else [], run_methods)]
    config = {
        "data": str(data.absolute()),
        "methods": all_methods,
        "slices": _union([tuple(k) for k in scfg["slices"]] if scfg else [], [tuple(k) for k in slice_keys]),
        "n_components": N_COMPONENTS,
        "normalize": "none",
        "matching": matching,
        "seed": seed,
        "options": opts,
    }
    config["slices"] = [list(k) for k in config["slices"]]
    doc = stored if stored is not None else {
        "experiment": "myops-table1",
        "format_version": FORMAT_VERSION,
        "description": "MyoPS 2020, Table 1 of Schwab, Mayr & Haltmeier (2024): single-image optimisation of "
                       "each method on every kept slice (K=4, ground-truth left-ventricle mask)",
        "records": [],
    }
    doc["config"] = config
    if command is None:
        command = (f"run_table1({str(data)!r}, {str(out)!r}, methods={run_methods}, cases={cases_l}, "
                   f"matching={matching!r}, seed={seed}, jobs={jobs})")
    if stored is not None:
        logger.info("resuming %s: %d record(s) kept", out, len(stored["records"]))

    run = _Run(store, doc, command=command, title="MyoPS 2020, Table 1: single-image optimisation",
               methods_order=TABLE1_METHODS)
    run.run.update(jobs=jobs, threads=threads)
    error: BaseException | None = None
    bar = None
    try:
        (out / PREDICTIONS_DIR).mkdir(exist_ok=True)
        (out / FIGURES_DIR).mkdir(exist_ok=True)
        done = store.keys()
        scores = _score_map(doc["records"])
        tasks = []
        for sl in slices:
            todo = [m for m in run_methods if (m, sl.case, sl.slice_index) not in done]
            if todo:
                tasks.append(_Table1Task(sl, todo, seed, matching, opts, str(out), figures, all_methods,
                                         dict(scores.get((sl.case, sl.slice_index), {}))))
        skipped = len(slices) * len(run_methods) - sum(len(t.methods) for t in tasks)
        logger.info("table 1: %d slice(s) of %d patient(s), methods %s: %d fit(s) to run, %d already done; "
                    "%d job(s) x %s thread(s)", len(slices), len({s.case for s in slices}), ",".join(run_methods),
                    len(slices) * len(run_methods) - skipped, skipped, jobs, threads or "torch's default")
        bar = _progress_bar(progress, len(tasks), "table1")

        def on_result(res: _TaskResult) -> None:
            run.add(res.records, res.settings)
            msg = ", ".join(f"{r['method']} {r['mean_dice']:.3f}" for r in res.records)
            logger.info("patient %d slice %d: mean Dice %s", res.case, res.slice_index, msg)
            if bar is not None:
                bar.set_postfix_str(f"{res.case} z{res.slice_index}: {msg}", refresh=False)
                bar.update(1)

        _execute(tasks, _run_table1_task, on_result, jobs=jobs, threads=threads)
    except BaseException as exc:
        error = exc
        raise
    finally:
        notes = [f"Settings on top of the defaults: {_options_text(opts)}."] if opts else []
        summary, table, complete = _close_run(run, error, bar, slices if figures else None, all_methods, "Table 1",
                                              notes)
    return TableResult(out, run.doc["records"], summary, table, run.added, complete, time.perf_counter() - run.t0)


def _options_text(options: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"svgmm": {"smoothing": 6}}`` -> ``SVGMM: smoothing=6`` (for table.md)."""
    return "; ".join(f"{display_name(m)}: " + ", ".join(f"{k}={v}" for k, v in kw.items())
                     for m, kw in options.items() if kw)


def _check_options(options: Mapping[str, Mapping[str, Any]] | None, known: Sequence[str]) -> dict[str, dict[str, Any]]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"options must map method names to keyword arguments, got {type(options).__name__}")
    unknown = [m for m in options if m not in known]
    if unknown:
        raise ValueError(f"options: unknown method(s) {unknown}; choose from {', '.join(known)}")
    reserved = {"method", "n_components", "normalize", "random_state"}
    out = {}
    for m, kw in options.items():
        if not isinstance(kw, Mapping):
            raise ValueError(f"options[{m!r}] must be a dict of keyword arguments, got {kw!r}")
        bad = sorted(set(kw) & reserved)
        if bad:
            raise ValueError(f"options[{m!r}] may not set {bad}: the table fixes them")
        out[m] = plain(dict(kw))
    return out


# ----------------------------------------------------------------------------- Table 2
def compute_mu_data(slices: Sequence[Any], *, n: int = MU_SLICES, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """``mu_data`` ``(K, C)``: the per-class, per-channel ground-truth means of ``n`` slices drawn
    at random (``numpy.random.default_rng(seed)``, without replacement) from ``slices``, averaged
    over those slices. Returns it and the ``[case, slice]`` of the slices drawn.

    Pass the slices of the *training* patients only (the paper's code drew from all 25, a leak).
    """
    n = _check_int("n", n, 1)
    if not slices:
        raise ValueError("compute_mu_data needs at least one slice")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(slices), size=min(n, len(slices)), replace=False))
    chosen = [slices[i] for i in idx]
    C = chosen[0].image.shape[0]
    img = np.stack([s.image for s in chosen]).reshape(len(chosen), C, -1).astype(np.float64)  # (S, C, P)
    lab = np.stack([s.labels for s in chosen]).reshape(len(chosen), -1)  # (S, P)
    onehot = (lab[:, None, :] == np.arange(1, N_COMPONENTS + 1)[None, :, None]).astype(np.float64)  # (S, K, P)
    counts = onehot.sum(2)  # (S, K)
    if (counts == 0).any():
        s, k = np.argwhere(counts == 0)[0]
        raise ValueError(f"slice {chosen[s].slice_index} of patient {chosen[s].case} has no pixel of class "
                         f"{CLASS_COLUMNS[k]}; cannot compute mu_data from it")
    means = np.einsum("skp,scp->skc", onehot, img) / counts[..., None]  # (S, K, C)
    return means.mean(0), [[int(s.case), int(s.slice_index)] for s in chosen]


def _network_fit(model: Any, sl: Any) -> _Fit:
    from ..datasets import myops

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = model.predict(sl.image, sl.mask, channels=list(myops.CHANNELS))
    return _Fit(np.asarray(pred.labels), float(pred.nll), time.perf_counter() - t0, None, None, {},
                _caught(caught))


def _member_seed(seed: int, member: int) -> int:
    """Training seed of ensemble member ``member`` (0: the run's seed itself; others drawn from it,
    so that no member of one run repeats a member of a run with another seed)."""
    return seed if member == 0 else int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


def _member_name(method: str, member: int) -> str:
    """Model folder (under ``models/``) and training key of ensemble member ``member``."""
    return method if member == 0 else f"{method}-{member + 1}"


def _train_config(settings: Mapping[str, Any], mu: np.ndarray | None, seed: int, method: str,
                  lam: float = MU_LAM, spare_classes: int = 0) -> Any:
    """The :class:`deepgmm.training.TrainConfig` of one Table 2 network (checked by ``finalize``)."""
    from ..datasets import myops
    from ..training import AugmentConfig, TrainConfig

    kwargs = dict(settings)
    if isinstance(kwargs.get("augment"), Mapping):
        kwargs["augment"] = AugmentConfig(**kwargs["augment"])
    kwargs.update(method="deepsvg", n_components=N_COMPONENTS, class_names=list(myops.CLASS_NAMES), seed=seed,
                  channels=list(myops.CHANNELS))
    if mu is not None:
        kwargs.update(mu_data=mu.tolist(), lam=lam)
    elif spare_classes:
        kwargs.update(spare_classes=spare_classes)
    try:
        return TrainConfig(**kwargs).finalize()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid training settings for {method}: {' '.join(str(exc).split())}") from None


def _train_model(method: str, cfg: Any, dataset: Any, folder: Path, *, device: str,
                 progress: bool | None) -> dict[str, Any]:
    """Train (or resume, or reuse) one Table 2 network in ``folder``; returns its training summary."""
    from ..training import train
    from ..training.checkpoint import CHECKPOINT_FILE, MODEL_FILE

    if (folder / MODEL_FILE).is_file():
        logger.info("%s: using the trained model in %s", method, folder)
        return {"model": str(folder), "reused": True}
    resume = (folder / CHECKPOINT_FILE).is_file()
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("%s: %s training in %s", method, "resuming" if resume else "starting", folder)
    show = sys.stderr.isatty() if progress is None else progress
    res = train(cfg, dataset, folder, resume=resume, overwrite=not resume, device=device, progress=show)
    return {"model": str(folder), "reused": False, "epochs": res.epochs, "converged": res.converged,
            "final_nll": res.final_nll, "seconds": res.seconds, "resumed_from_epoch": res.resumed_from}


def run_table2(
    data: str | Path,
    out: str | Path,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    matching: str | None = None,
    train_cases: str | Sequence[int] | None = None,
    test_cases: str | Sequence[int] | None = None,
    train_options: Mapping[str, Any] | None = None,
    ensemble: int | None = None,
    lam: float | None = None,
    readout: str | None = None,
    spare_classes: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    figures: bool = True,
    progress: bool | None = None,
    command: str | None = None,
) -> TableResult:
    """Table 2: networks trained on the training patients, evaluated on the test patients.

    Parameters
    ----------
    data, out : the MyoPS 2020 folder and the output folder (as for :func:`run_table1`)
    epochs, batch_size : training epochs and batch size (default: :class:`deepgmm.training.TrainConfig`'s)
    seed : seeds the ``mu_data`` draw, the training and the EM fits (default 0)
    matching : of SVGMM and deepSVG, "hungarian" (default) or "greedy"; the μ variants are
        scored in the prior's class order ("prior") and with Hungarian matching
    train_cases, test_cases : default: the paper's split (test: 109, 114, 117, 120, 122;
        training: every other patient found); other values are for quick checks
    train_options : further :class:`deepgmm.training.TrainConfig` settings (on top of
        :data:`TABLE2_TRAIN_DEFAULTS`), e.g. ``{"lr": 1e-3, "augment": AugmentConfig.off()}``
    ensemble : networks per deep method (default 1, the paper's protocol). With N > 1 each deep
        method trains N networks (training seeds: ``seed`` and N - 1 drawn from it; the same
        ``mu_data``) and segments with their mean soft labels (:class:`deepgmm.training.EnsembleModel`;
        deepSVG's members are aligned to the first by overlap, no ground truth). Member j > 1 lives in
        ``models/<method>-j``.
    lam : weight of deepSVGμ's ``mu_prior`` term (default :data:`MU_LAM`, the paper's 1)
    readout : what the deep methods segment with (:data:`deepgmm.training.predict.READOUTS`):
        "soft_labels" (default, the paper's: the argmax of the network's soft labels) or
        "posterior" (one E-step under the mixture the soft labels define on the test slice)
    spare_classes : extra classes deepSVG's networks fit, dropped per test slice (the smallest)
        until 4 remain (default 0, the paper's; deepSVGμ's prior fixes its classes: none)
    device : where the networks are trained and applied ("cpu", "cuda", "auto")
    threads : torch CPU threads for the whole run (default: torch's own setting)
    resume, overwrite, figures, progress, command : as for :func:`run_table1`; on resume an
        unfinished training continues from its checkpoint and a finished one is reused

    Returns
    -------
    TableResult (``training`` holds each network's training summary)
    """
    from .._validation import check_choice, resolve_device
    from ..datasets import myops

    data, out = Path(data), Path(out)
    if matching is not None:
        check_choice("matching", matching, TABLE1_MATCHINGS)
    if seed is not None:
        _check_int("seed", seed, 0)
    if epochs is not None:
        _check_int("epochs", epochs, 1)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
    if ensemble is not None:
        _check_int("ensemble", ensemble, 1)
    if lam is not None:
        from .._validation import check_float

        lam = check_float("lam", lam, minimum=0.0)
    if spare_classes is not None:
        _check_int("spare_classes", spare_classes, 0)
    if readout is not None:
        from ..training.predict import READOUTS

        check_choice("readout", readout, READOUTS)
    resolve_device(device)
    if threads is not None:
        threads = _check_int("threads", threads, 1)
    train_l = parse_cases(train_cases, "train_cases")
    test_l = parse_cases(test_cases, "test_cases")
    if train_options is not None and not isinstance(train_options, Mapping):
        raise ValueError(f"train_options must be a dict of TrainConfig settings, got {type(train_options).__name__}")
    reserved = sorted(set(train_options or {}) & {"method", "n_components", "class_names", "seed", "mu_data", "lam",
                                                  "epochs", "batch_size"})
    if reserved:
        raise ValueError(f"train_options may not set {reserved}: the table sets them")

    store = ResultsFolder(out, experiment="myops-table2", resume=resume, overwrite=overwrite)
    stored = store.check()
    scfg = stored["config"] if stored is not None else None
    found = sorted(myops.find_cases(data, "train"))
    default_test = [c for c in myops.TEST_CASES]
    test_l = _resolve(scfg, "test_cases", test_l, default_test, out)
    train_l = _resolve(scfg, "train_cases", train_l, [c for c in found if c not in test_l], out)
    missing = [c for c in list(train_l) + list(test_l) if c not in found]
    if missing:
        raise ValueError(f"MyoPS case(s) {missing} not found under {data}; available: {found}")
    overlap = sorted(set(train_l) & set(test_l))
    if overlap:
        raise ValueError(f"patient(s) {overlap} are both training and test patients")
    seed = _resolve(scfg, "seed", seed, 0, out)
    matching = _resolve(scfg, "matching", matching, "hungarian", out)
    n_members = int(_resolve(scfg, "ensemble", ensemble, 1, out, added_later=True))
    mu_lam = float(_resolve(scfg, "mu_lam", lam, MU_LAM, out, flag="--lam"))
    readout = str(_resolve(scfg, "readout", readout, "soft_labels", out, added_later=True))
    n_spare = int(_resolve(scfg, "spare_classes", spare_classes, 0, out, added_later=True))
    settings = dict(TABLE2_TRAIN_DEFAULTS)
    settings.update(plain(dict(train_options or {})))
    if epochs is not None:
        settings["epochs"] = epochs
    if batch_size is not None:
        settings["batch_size"] = batch_size
    settings = _resolve(scfg, "train_settings", plain(settings) if (train_options or epochs or batch_size) else None,
                        plain(settings), out, flag="training settings (--epochs, --batch-size, train_options)")

    train_slices = myops.paper_slices(data, train_l)
    test_slices = myops.paper_slices(data, test_l)
    if not train_slices or not test_slices:
        raise ValueError(f"no kept slice among the {'training' if not train_slices else 'test'} patients")
    mu, mu_from = compute_mu_data(train_slices, n=MU_SLICES, seed=seed)
    train_configs = {(m, j): _train_config(settings, mu if _TRAINED[m] == "mu" else None, _member_seed(seed, j), m,
                                           mu_lam, n_spare)
                     for m in _TRAINED for j in range(n_members)}

    config = {
        "data": str(data.absolute()),
        "methods": list(TABLE2_METHODS),
        "train_cases": list(train_l),
        "test_cases": list(test_l),
        "slices": [[int(s.case), int(s.slice_index)] for s in test_slices],
        "n_components": N_COMPONENTS,
        "matching": matching,
        "seed": seed,
        "ensemble": n_members,
        "train_settings": plain(settings),
        "mu_lam": mu_lam,
        "readout": readout,
        "spare_classes": n_spare,
        "mu_data": mu.tolist(),
        "mu_data_slices": mu_from,
    }
    if scfg is not None and not np.allclose(np.asarray(scfg["mu_data"]), mu, rtol=0, atol=1e-9):
        raise ValueError(f"cannot resume: mu_data computed now differs from the one in {out / RESULTS_FILE}")
    doc = stored if stored is not None else {
        "experiment": "myops-table2",
        "format_version": FORMAT_VERSION,
        "description": "MyoPS 2020, Table 2 of Schwab, Mayr & Haltmeier (2024): networks trained on the training "
                       "patients, evaluated on the test patients (K=4, ground-truth left-ventricle mask)",
        "records": [],
    }
    doc["config"] = config
    doc.setdefault("training", {})
    if command is None:
        command = f"run_table2({str(data)!r}, {str(out)!r}, epochs={epochs}, seed={seed}, matching={matching!r})"

    run = _Run(store, doc, command=command, title="MyoPS 2020, Table 2: trained networks, test patients",
               methods_order=TABLE2_METHODS)
    run.run.update(device=str(device), threads=threads)
    error: BaseException | None = None
    bar = None
    torch_threads = _TorchThreads(threads)
    try:
        torch_threads.__enter__()
        from ..io import save_json
        from ..training import EnsembleModel, MyoPSDataset, load_model

        save_json(out / "mu_data.json", {"mu_data": mu.tolist(), "classes": list(CLASS_COLUMNS),
                                         "channels": list(myops.CHANNELS), "slices": mu_from, "seed": seed,
                                         "train_cases": list(train_l)})
        (out / PREDICTIONS_DIR).mkdir(exist_ok=True)
        (out / FIGURES_DIR).mkdir(exist_ok=True)
        done = store.keys()
        todo_slices = [s for s in test_slices if any((m, s.case, s.slice_index) not in done for m in TABLE2_METHODS)]
        models: dict[str, Any] = {}
        need = {m for s in todo_slices for m in TABLE2_METHODS if (m, s.case, s.slice_index) not in done}
        if need & set(_TRAINED):
            dataset = MyoPSDataset(data, train_l, normalize=settings.get("normalize", "image"),
                                   crop_size=settings.get("crop_size"))
            for m in TABLE2_METHODS:
                if m not in need or m not in _TRAINED:
                    continue
                members = []
                for j in range(n_members):
                    name = _member_name(m, j)
                    folder = out / "models" / name
                    summary = _train_model(name, train_configs[(m, j)], dataset, folder, device=device,
                                           progress=progress)
                    if not summary.get("reused"):
                        doc["training"][name] = summary
                        store.save()
                    members.append(load_model(folder, device=device, readout=readout))
                # deepSVG's members have no common class order: aligned by overlap (EnsembleModel's default)
                models[m] = members[0] if n_members == 1 else EnsembleModel(members, readout=readout)

        bar = _progress_bar(progress, len(todo_slices), "table2 test")
        scores = _score_map(doc["records"])
        for sl in todo_slices:
            records, settings_m, fresh = [], {}, {}
            for m in TABLE2_METHODS:
                if (m, sl.case, sl.slice_index) in done:
                    continue
                if m == "svgmm":
                    fit = _segment_fit(sl, "svgmm", seed, {})
                elif m == "svgmm_mu":
                    fit = _segment_fit(sl, "svgmm", seed, {"init": "means", "means_init": mu})
                else:
                    fit = _network_fit(models[m], sl)
                    fit.settings = {"model": str(Path("models") / m), "trained": plain(models[m].config.to_dict()),
                                    "readout": readout}
                    if n_members > 1:
                        fit.settings["ensemble"] = [str(Path("models") / _member_name(m, j)) for j in range(n_members)]
                prior = m.endswith("_mu")
                record, matched = _make_record(m, sl, fit, "prior" if prior else matching, seed,
                                               also_matched="hungarian" if prior else None)
                _save_prediction(out, sl, m, matched)
                records.append(record)
                settings_m[m] = fit.settings
                fresh[m] = matched
            run.add(records, settings_m)
            if figures:
                s = dict(scores.get((sl.case, sl.slice_index), {}))
                s.update({r["method"]: r["mean_dice"] for r in records})
                _draw_slice(out, sl, TABLE2_METHODS, s, fresh, title="Table 2")
            if bar is not None:
                bar.update(1)
    except BaseException as exc:
        error = exc
        raise
    finally:
        notes = [f"Training patients: {', '.join(map(str, train_l))}; test patients: "
                 f"{', '.join(map(str, test_l))}. mu_data from {len(mu_from)} random training slices "
                 f"(seed {seed}); deepSVGμ trained with lam {mu_lam:g}."]
        if n_members > 1:
            notes.append(f"deepSVG and deepSVGμ: mean soft labels of {n_members} networks each (--ensemble "
                         f"{n_members}); the paper uses one.")
        if n_spare:
            notes.append(f"deepSVG's networks fit {N_COMPONENTS + n_spare} classes and drop the smallest "
                         f"{n_spare} on each test slice (--spare-classes {n_spare}); the paper fits 4.")
        if readout == "posterior":
            notes.append("deepSVG and deepSVGμ read out the posteriors of the mixture their soft labels define on "
                         "each test slice (--readout posterior, one E-step); the paper reads out the soft labels.")
        try:
            summary, table, complete = _close_run(run, error, bar, test_slices if figures else None,
                                                  list(TABLE2_METHODS), "Table 2", notes)
        finally:
            torch_threads.__exit__()
    return TableResult(out, run.doc["records"], summary, table, run.added, complete, time.perf_counter() - run.t0,
                       dict(run.doc.get("training", {})))


# ----------------------------------------------------------------------------- command line
def _add_common(parser: argparse.ArgumentParser) -> None:
    """``-v``/``--debug`` as the other sub-commands have them (not resetting a value given earlier)."""
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log the library's progress (INFO) to stderr")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="the MyoPS 2020 folder (train25/, train25_myops_gd/)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (results.json, table.md, figures/)")
    p.add_argument("--matching", choices=TABLE1_MATCHINGS,
                   help="how predicted classes are matched to the truth (default: hungarian; greedy: the paper's "
                        "class-by-class order)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of every fit (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in DIR: keep the records of results.json, compute the missing ones")
    p.add_argument("--overwrite", action="store_true", help="clear DIR (a previous deepgmm output) and start again")
    p.add_argument("--no-figures", dest="figures", action="store_false",
                   help="skip the per-slice figures (the overview figure is always drawn)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``myops`` command (sub-commands ``table1`` and ``table2``) to ``subparsers``
    (the object returned by ``ArgumentParser.add_subparsers``); each sets ``func``."""
    from ..choices import READOUTS as READOUT_CHOICES

    p = subparsers.add_parser(
        "myops", help="reproduce the paper's MyoPS 2020 tables",
        description="Reproduce the tables of Schwab, Mayr & Haltmeier (2024) on MyoPS 2020: Table 1 (single-image "
                    "optimisation on the 79 slices) and Table 2 (networks trained on 20 patients, tested on five).")
    _add_common(p)
    sub = p.add_subparsers(dest="myops_command", metavar="TABLE", required=True)

    t1 = sub.add_parser(
        "table1", help="single-image optimisation on every kept slice",
        description="Segment every kept slice of the paper's protocol with each method at the library's default "
                    "settings (K=4, ground-truth left-ventricle mask) and write results.json, table.md, "
                    "overview.png and one figure per slice into DIR. Interrupted runs continue with --resume.")
    _add_run_options(t1)
    t1.add_argument("--methods", metavar="M1,M2,...",
                    help=f"methods to run, from {','.join(TABLE1_METHODS)} (default: all)")
    t1.add_argument("--cases", metavar="ID,ID,...", help="patients to use, e.g. 101,102 (default: all 25)")
    t1.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="worker processes, each with max(1, cpus // N) torch threads (default 1); the results "
                         "do not depend on N")
    t1.add_argument("--threads", type=int, metavar="T",
                    help="torch threads per process (default: torch's setting for --jobs 1, else cpus // N)")
    t1.add_argument("--options", metavar="JSON",
                    help="per-method settings on top of the defaults, as JSON, e.g. '{\"svgmm\": {\"smoothing\": "
                         "6}}' (recorded in results.json; a resumed run must give the same)")
    _add_common(t1)
    t1.set_defaults(func=cmd_table1)

    t2 = sub.add_parser(
        "table2", help="networks trained on 20 patients, tested on five",
        description="Train deepSVG and deepSVGμ (mu_data prior, lam 1) on the training patients, compute mu_data "
                    "from 10 random training slices, and evaluate SVGMM, deepSVG, SVGMMμ and deepSVGμ on the test "
                    "patients 109, 114, 117, 120, 122. Writes results.json, table.md, mu_data.json, models/, "
                    "figures into DIR.")
    _add_run_options(t2)
    t2.add_argument("--epochs", type=int, metavar="E", help="training epochs (default: deepgmm train's, 100)")
    t2.add_argument("--batch-size", dest="batch_size", type=int, metavar="B",
                    help="training batch size (default: deepgmm train's, 4)")
    t2.add_argument("--ensemble", type=int, metavar="N",
                    help="networks per deep method, segmenting with their mean soft labels (default 1, the paper's)")
    t2.add_argument("--lam", type=float, metavar="L",
                    help="weight of deepSVGμ's mu_prior term (default 1, the paper's)")
    t2.add_argument("--readout", choices=READOUT_CHOICES,
                    help="what the deep methods segment with: the networks' soft labels (default, the paper's) or "
                         "the posteriors of the mixture they define on the test slice (one E-step)")
    t2.add_argument("--spare-classes", dest="spare_classes", type=int, metavar="N",
                    help="extra classes deepSVG's networks fit, dropped (the smallest) on each test slice (default "
                         "0, the paper's; deepSVGμ's prior fixes its classes)")
    t2.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                    help="where the networks are trained and applied (default: cpu)")
    t2.add_argument("--threads", type=int, metavar="T", help="torch CPU threads (default: torch's setting)")
    t2.add_argument("--train-cases", dest="train_cases", metavar="ID,ID,...",
                    help="training patients (default: all but the test patients; for quick checks)")
    t2.add_argument("--test-cases", dest="test_cases", metavar="ID,ID,...",
                    help="test patients (default: 109,114,117,120,122; for quick checks)")
    _add_common(t2)
    t2.set_defaults(func=cmd_table2)
    return p


def _command_line(args: argparse.Namespace, names: Sequence[str]) -> str:
    """The equivalent command line of ``args`` (the options in ``names`` that were set)."""
    import shlex

    parts = ["deepgmm", "myops", args.myops_command]
    for name in names:
        value = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        if name == "figures":
            if value is False:
                parts.append("--no-figures")
        elif isinstance(value, bool):
            if value:
                parts.append(flag)
        elif value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def cmd_table1(args: argparse.Namespace) -> int:
    """``deepgmm myops table1``."""
    command = _command_line(args, ["data", "out", "methods", "cases", "matching", "seed", "jobs", "threads",
                                   "options", "resume", "overwrite", "figures"])
    options = None
    if args.options is not None:
        try:
            options = json.loads(args.options)
        except ValueError as exc:
            raise ValueError(f"--options is not valid JSON ({exc}); expected e.g. "
                             '\'{"svgmm": {"smoothing": 6}}\'') from None
    res = run_table1(args.data, args.out, methods=args.methods, cases=parse_cases(args.cases), matching=args.matching,
                     seed=args.seed, jobs=args.jobs, threads=args.threads, resume=args.resume,
                     overwrite=args.overwrite, figures=args.figures, options=options, command=command)
    print(res.table, end="")
    print(f"{res.added} record(s) computed in {res.seconds:.1f} s; wrote {Path(args.out) / RESULTS_FILE}, "
          f"{TABLE_FILE}, {OVERVIEW_FILE}")
    return 0


def cmd_table2(args: argparse.Namespace) -> int:
    """``deepgmm myops table2``."""
    command = _command_line(args, ["data", "out", "epochs", "batch_size", "matching", "seed", "ensemble", "lam",
                                   "readout", "spare_classes", "device", "threads", "train_cases", "test_cases",
                                   "resume", "overwrite", "figures"])
    res = run_table2(args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                     matching=args.matching, ensemble=args.ensemble, lam=args.lam, readout=args.readout,
                     spare_classes=args.spare_classes,
                     train_cases=parse_cases(args.train_cases, "--train-cases"),
                     test_cases=parse_cases(args.test_cases, "--test-cases"), device=args.device, threads=args.threads,
                     resume=args.resume, overwrite=args.overwrite, figures=args.figures, command=command)
    print(res.table, end="")
    print(f"{res.added} record(s) computed in {res.seconds:.1f} s; wrote {Path(args.out) / RESULTS_FILE}, "
          f"{TABLE_FILE}, {OVERVIEW_FILE}")
    return 0
