"""Bookkeeping shared by the experiment runners: one run's records in its results folder,
settings of a resumed run, predictions, figures and the final ``table.md``."""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._validation import check_int
from .._version import __version__
from ..io import atomic_write, save_labels
from ._pool import available_cpus
from ._report import display_name
from ._store import (
    FIGURES_DIR,
    OVERVIEW_FILE,
    PREDICTIONS_DIR,
    RESULTS_FILE,
    TABLE_FILE,
    ResultsFolder,
    plain,
    sort_records,
)
from .cases import Case, DataSet

__all__ = ["TableResult", "Run", "close_run", "resolve", "union", "parse_cases", "parse_methods", "check_options",
           "options_text", "score_map", "save_prediction", "draw_case", "check_int", "expected_keys"]

logger = logging.getLogger(__name__)


@dataclass
class TableResult:
    """What a runner did.

    out_dir : the output folder; records : all records in ``results.json`` (sorted);
    summary : per method (see :func:`deepgmm.experiments._report.summarize`); table : the Markdown
    of ``table.md``; added : records computed by this run; complete : every expected record exists;
    seconds : wall time of this run; training : the training summaries of a train/test run (else empty).
    """

    out_dir: Path
    records: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    table: str
    added: int
    complete: bool
    seconds: float
    training: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- arguments and settings
def parse_cases(text: str | Sequence[int] | None, name: str = "--cases") -> list[int] | None:
    """``"101,102"`` -> ``[101, 102]`` (None stays None). Ids must be distinct non-negative integers."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            ids = [int(t.strip()) for t in text.split(",")]
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


def parse_methods(methods: str | Sequence[str] | None, known: Sequence[str], name: str = "--methods") -> list[str] | None:
    """``"gmm,svgmm"`` -> the named methods of ``known``, in the order of ``known`` (None stays None)."""
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
    return [m for m in known if m in items]


def check_options(options: Mapping[str, Mapping[str, Any]] | None, known: Sequence[str],
                  reserved: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-method ``segment()`` keyword arguments, as plain JSON values; ``reserved`` ones are refused."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"options must map method names to keyword arguments, got {type(options).__name__}")
    unknown = [m for m in options if m not in known]
    if unknown:
        raise ValueError(f"options: unknown method(s) {unknown}; choose from {', '.join(known)}")
    out = {}
    for m, kw in options.items():
        if not isinstance(kw, Mapping):
            raise ValueError(f"options[{m!r}] must be a dict of keyword arguments, got {kw!r}")
        bad = sorted(set(kw) & set(reserved))
        if bad:
            raise ValueError(f"options[{m!r}] may not set {bad}: the table fixes them")
        out[m] = plain(dict(kw))
    return out


def options_text(options: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"svgmm": {"smooth_sigma": 6}}`` -> ``SVGMM: smooth_sigma=6`` (for table.md)."""
    return "; ".join(f"{display_name(m)}: " + ", ".join(f"{k}={v}" for k, v in kw.items())
                     for m, kw in options.items() if kw)


def resolve(stored: Mapping[str, Any] | None, key: str, given: Any, default: Any, source: Path,
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


def union(stored: Sequence[Any], given: Sequence[Any] | None) -> list[Any]:
    return list(dict.fromkeys(list(stored) + list(given or [])))


# ----------------------------------------------------------------------------- predictions and figures
def save_prediction(out: Path, case: Case, method: str, labels: np.ndarray) -> None:
    save_labels(out / PREDICTIONS_DIR / f"{case.name}_{method}.npy", labels)


def score_map(records: Sequence[Mapping[str, Any]], key_fields: Sequence[str],
              key: str = "mean_dice") -> dict[tuple, dict[str, Any]]:
    """``{case key: {method: record[key]}}`` of ``records`` (``key``: the headline score, e.g. mean Dice)."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in key_fields), {})[r["method"]] = r[key]
    return out


def draw_case(out: Path, dataset: DataSet, case: Case, methods: Sequence[str], scores: Mapping[str, float | None],
              fresh: Mapping[str, np.ndarray], *, title: str) -> bool:
    """Draw ``figures/<case name>.png`` when every method's prediction is available; True if drawn."""
    preds: dict[str, np.ndarray | None] = {}
    for m in methods:
        if m in fresh:
            preds[m] = fresh[m]
            continue
        f = out / PREDICTIONS_DIR / f"{case.name}_{m}.npy"
        if not f.is_file() or scores.get(m) is None:
            return False
        preds[m] = np.load(f, allow_pickle=False)
    dataset.scoring.case_figure(out / FIGURES_DIR / f"{case.name}.png", dataset, case, preds, scores,
                                title=f"{title}: {case.title}")
    return True


# ----------------------------------------------------------------------------- one run
def expected_keys(config: Mapping[str, Any], unit: str) -> set[tuple[Any, ...]]:
    """The ``(method, *case key)`` of every record a run of ``config`` should hold: each method on
    each case of ``config[unit]``, or for a shard (``config["shard"]``) those of its share."""
    share = config.get("shard")
    if share is not None:
        return {(str(r[0]),) + tuple(int(v) for v in r[1:]) for r in share["records"]}
    return {(m,) + tuple(int(v) for v in key) for m in config["methods"] for key in config[unit]}


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cpus_available": available_cpus(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _versions() -> dict[str, str]:
    return {"deepgmm_version": __version__, "torch_version": torch.__version__}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Run:
    """One run of a runner in its results folder: records, settings checks, the final summary and files.

    ``doc["config"]`` must hold ``methods`` and, under the data set's ``unit``, the keys of every
    case the run expects records of."""

    def __init__(self, store: ResultsFolder, doc: dict[str, Any], dataset: DataSet, *, command: str | None,
                 title: str, methods_order: Sequence[str]) -> None:
        self.store = store
        self.dataset = dataset
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
            if "precision" in s and "precision" not in prev:  # stored before the setting existed: float32
                prev = dict(prev, precision="float32")
            if prev != s:
                changed = sorted(k for k in set(prev) | set(s) if prev.get(k) != s.get(k))
                detail = ", ".join(f"{k}: {prev.get(k)!r} -> {s.get(k)!r}" for k in changed[:4])
                hint = ("the network's precision differs between the machines (or $DEEPGMM_PRECISION): set "
                        "DEEPGMM_PRECISION=float32 or bfloat16 for every part of the run" if "precision" in changed
                        else "the defaults changed since that run? start again with --overwrite")
                raise ValueError(f"{method}'s settings differ from those of its records in "
                                 f"{self.store.file(RESULTS_FILE)} ({detail}); {hint}")

    def add(self, records: Sequence[dict[str, Any]], settings: Mapping[str, Mapping[str, Any]]) -> None:
        self.check_settings(settings)
        for r in records:
            for w in r.get("warnings") or ():
                logger.info("%s on %s: %s", r["method"], {k: r[k] for k in self.dataset.key_fields}, w)
        self.store.add(records)
        self.added += len(records)
        self.run["records_added"] = self.added
        self.run["wall_seconds"] = time.perf_counter() - self.t0
        self._refresh()
        self.store.save()

    def expected(self) -> set[tuple[Any, ...]]:
        """The ``(method, *case key)`` of every record the run should hold (a shard: those of its share)."""
        return expected_keys(self.doc["config"], self.dataset.unit)

    def _refresh(self) -> tuple[dict[str, Any], int]:
        """Sort the records; update the summary, ``complete``, ``missing`` and the total wall time."""
        doc = self.doc
        methods = [m for m in self.methods_order if m in doc["config"]["methods"]]
        doc["records"] = sort_records(doc["records"], methods, self.dataset.key_fields)
        summary = self.dataset.scoring.summarize(doc["records"], methods, self.dataset)
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
        self.store.save()
        lines = list(notes)
        if missing:
            lines.append(f"**Incomplete**: {missing} of {len(self.expected())} records missing "
                         "(run again with --resume to complete it).")
        lines.append(f"Command: `{self.run['command']}`" if self.run["command"] else "")
        lines.append(f"deepgmm {doc['deepgmm_version']}, torch {doc['torch_version']}, "
                     f"{doc['machine']['processor']} ({doc['machine']['cpus_available']} CPUs available), "
                     f"wall time {doc['wall_seconds']:.0f} s over {len(doc['runs'])} run(s).")
        keys = doc["config"][self.dataset.unit]
        unit, group = self.dataset.unit, self.dataset.group
        size = f"{len(keys)} {unit}" + (f", {len({k[0] for k in keys})} {group}" if group != unit else "")
        table = self.dataset.scoring.table(summary, title=f"{self.title} ({size})", notes=[ln for ln in lines if ln],
                                           dataset=self.dataset)
        atomic_write(self.store.file(TABLE_FILE), lambda tmp: tmp.write_text(table, encoding="utf-8"))
        if doc["records"]:
            self.dataset.scoring.overview(self.store.file(OVERVIEW_FILE), doc["records"], list(summary),
                                          title=self.title, dataset=self.dataset)
        return summary, table, missing == 0

    def missing_figures(self, cases: Sequence[Case], methods: Sequence[str], title: str) -> None:
        """Draw the figure of every complete case that has none (e.g. a run interrupted in between)."""
        scores = score_map(self.doc["records"], self.dataset.key_fields, self.dataset.scoring.key)
        for case in cases:
            s = scores.get(tuple(case.key), {})
            if not self.store.file(FIGURES_DIR, f"{case.name}.png").is_file() and all(m in s for m in methods):
                draw_case(self.store.path, self.dataset, case, methods, s, {}, title=title)

    def result(self, summary: dict[str, Any], table: str, complete: bool) -> TableResult:
        return TableResult(self.store.path, self.doc["records"], summary, table, self.added, complete,
                           time.perf_counter() - self.t0, dict(self.doc.get("training", {})))


def close_run(run: Run, error: BaseException | None, bar: Any, figure_cases: Sequence[Case] | None,
              methods: Sequence[str], title: str, notes: Sequence[str] = ()) -> TableResult:
    """End a run, also after an error: close the progress (:class:`deepgmm.progress.Progress` or None),
    draw the figures still missing (of ``figure_cases``; None: none; not after Ctrl-C), write the final
    files, release the folder."""
    if bar is not None:
        bar.close(ok=error is None)
    try:
        if figure_cases is not None and not isinstance(error, KeyboardInterrupt):
            run.missing_figures(figure_cases, methods, title)
        return run.result(*run.finish(error, notes))
    finally:
        run.store.close()
