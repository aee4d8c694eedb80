"""Runner "fit every case of a data set with each method and score it" (e.g. MyoPS Table 1).

:func:`run_fit` segments every case of a :class:`~deepgmm.experiments.cases.DataSet` with each
method of a :class:`FitExperiment` (:func:`deepgmm.segment` at the library's defaults, K = the
data set's classes, plus per-method ``options``), every fit with ``random_state = seed``, and
scores it against the case's truth. One record per ``(method, *case key)`` goes to
``results.json`` (rewritten atomically after every case, so ``resume=True`` continues an
interrupted run), and the run ends with ``table.md``, ``overview.png``, ``figures/`` and
``predictions/`` (see :mod:`._store`). Cases are shared out to ``jobs`` worker processes; the
records do not depend on ``jobs``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .._validation import check_choice
from . import cases as _cases
from ._pool import available_cpus, progress_bar, run_tasks
from ._run import (
    Run,
    TableResult,
    check_int,
    check_options,
    close_run,
    draw_case,
    options_text,
    parse_cases,
    parse_methods,
    resolve,
    save_prediction,
    score_map,
    union,
)
from ._store import FIGURES_DIR, FORMAT_VERSION, PREDICTIONS_DIR, ResultsFolder
from .cases import Case, DataSet

__all__ = ["FitExperiment", "run_fit"]

logger = logging.getLogger(__name__)

RESERVED_OPTIONS = ("method", "n_components", "normalize", "random_state")
"""``segment()`` settings a runner fixes (``options`` may not set them)."""


@dataclass(frozen=True)
class FitExperiment:
    """One "fit every case with each method" experiment.

    name : the ``experiment`` of ``results.json`` (a resumed run must match); title : of
    ``table.md``; short : of the figures and the progress bar (e.g. "Table 1"); description :
    stored in ``results.json``; dataset : what it runs on; methods : ``segment()`` methods in table
    order; matchings : the matchings offered (the first is the default); entry : the function name
    of the default ``command`` record; default_methods : the methods run when none are named
    (None: all of ``methods``); also_matched : a second scoring of every fit (a matching, stored
    as ``record["matched"]`` and shown as the rows "<method>, matched") unless it is the run's
    matching.
    """

    name: str
    title: str
    short: str
    description: str
    dataset: DataSet
    methods: tuple[str, ...]
    matchings: tuple[str, ...] = ("hungarian", "greedy")
    entry: str = "run_fit"
    default_methods: tuple[str, ...] | None = None
    also_matched: str | None = None
    fits: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    unavailable: Callable[[str], str | None] | None = None


@dataclass
class FitTask:
    """The methods still to run on one case (picklable: it travels to a worker process)."""

    experiment: FitExperiment
    case: Case
    methods: list[str]
    seed: int
    matching: str
    options: dict[str, dict[str, Any]]
    out: str
    figures: bool
    figure_methods: list[str]
    known_scores: dict[str, float | None]


@dataclass
class FitTaskResult:
    case: Case
    records: list[dict[str, Any]]
    settings: dict[str, dict[str, Any]]


def run_fit_task(task: FitTask) -> FitTaskResult:
    """Fit every method of ``task`` on its case, save the predictions, draw the case's figure."""
    exp, case, out = task.experiment, task.case, Path(task.out)
    records, settings, fresh = [], {}, {}
    for method in task.methods:
        fit = exp.fits.get(method, _cases.segment_fit)(exp.dataset, case, method, task.seed, task.options.get(method, {}))
        also = exp.also_matched if exp.also_matched != task.matching else None
        record, matched = _cases.make_record(exp.dataset, method, case, fit, task.matching, task.seed,
                                             also_matched=also)
        save_prediction(out, case, method, matched)
        records.append(record)
        settings[method] = fit.settings
        fresh[method] = matched
    if task.figures:
        scores = dict(task.known_scores)
        scores.update({r["method"]: r[exp.dataset.scoring.key] for r in records})
        draw_case(out, exp.dataset, case, task.figure_methods, scores, fresh, title=exp.short)
    return FitTaskResult(case, records, settings)


def _open(exp: FitExperiment, out: Path, *, methods: list[str] | None, groups: list[int] | None,
          matching: str | None, seed: int | None, options: Mapping[str, Any] | None,
          opts: dict[str, Any], resume: bool, overwrite: bool) -> tuple[ResultsFolder, dict[str, Any], list[Case], list[str],
                                                          list[int] | None]:
    """Check the output folder and resolve the settings (a resumed run keeps its own); returns the
    store, the ``results.json`` document (config set), the cases, the methods to run and the groups."""
    ds = exp.dataset
    store = ResultsFolder(out, experiment=exp.name, resume=resume, overwrite=overwrite, key_fields=ds.key_fields,
                          score_keys=ds.scoring.record_keys)
    stored = store.check()
    scfg = stored["config"] if stored is not None else None
    matching = resolve(scfg, "matching", matching, exp.matchings[0], out)
    seed = resolve(scfg, "seed", seed, 0, out)
    opts = resolve(scfg, "options", opts if options is not None else None, {}, out, flag="options")
    run_methods = methods or (list(scfg["methods"]) if scfg else list(exp.default_methods or exp.methods))
    skipped = _skipped(exp, run_methods)
    run_methods = [m for m in run_methods if m not in skipped]
    if scfg is not None and groups is None:
        groups = sorted({int(k[0]) for k in scfg[ds.unit]})
    cases = ds.load(groups)
    keys = [tuple(int(v) for v in c.key) for c in cases]
    config = {
        "data": str(ds.root.absolute()),
        "methods": [m for m in exp.methods if m in union(scfg["methods"] if scfg else [], run_methods)],
        ds.unit: [list(k) for k in union([tuple(k) for k in scfg[ds.unit]] if scfg else [], keys)],
        "n_components": ds.n_classes,
        **ds.segment_options,
        "matching": matching,
        "seed": seed,
        "options": opts,
    }
    doc = stored if stored is not None else {"experiment": exp.name, "format_version": FORMAT_VERSION,
                                             "description": exp.description, "records": []}
    doc["config"] = config
    doc["skipped"] = skipped
    if stored is not None:
        logger.info("resuming %s: %d record(s) kept", out, len(stored["records"]))
    return store, doc, cases, run_methods, groups


def _skipped(exp: FitExperiment, methods: Sequence[str]) -> dict[str, str]:
    """The methods of ``methods`` that cannot run here, with the reason (one log line each)."""
    skipped = {}
    for m in methods:
        reason = exp.unavailable(m) if exp.unavailable is not None else None
        if reason is not None:
            logger.warning("%s %s", m, reason)
            skipped[m] = reason
    return skipped


def _tasks(exp: FitExperiment, cases: Sequence[Case], run_methods: Sequence[str], done: set, scores: Mapping,
           config: Mapping[str, Any], out: Path, figures: bool) -> list[FitTask]:
    tasks = []
    for case in cases:
        todo = [m for m in run_methods if (m, *case.key) not in done]
        if todo:
            tasks.append(FitTask(exp, case, todo, config["seed"], config["matching"], config["options"], str(out),
                                 figures, list(config["methods"]), dict(scores.get(tuple(case.key), {}))))
    return tasks


def run_fit(exp: FitExperiment, out: str | Path, *, methods: str | Sequence[str] | None = None,
            cases: str | Sequence[int] | None = None, matching: str | None = None, seed: int | None = None,
            jobs: int = 1, threads: int | None = None, resume: bool = False, overwrite: bool = False,
            figures: bool = True, progress: bool | None = None,
            options: Mapping[str, Mapping[str, Any]] | None = None, command: str | None = None) -> TableResult:
    """Every method of ``exp`` on every case of its data set (``cases``: the groups to use, e.g.
    patients; default: all), one record per ``(method, *case key)``. The arguments are those of
    :func:`deepgmm.experiments.myops.run_table1`."""
    out = Path(out)
    methods_l = parse_methods(methods, exp.methods)
    groups = parse_cases(cases, "cases")
    if matching is not None:
        check_choice("matching", matching, exp.matchings)
    if seed is not None:
        check_int("seed", seed, minimum=0)
    jobs = check_int("jobs", jobs, minimum=1)
    if threads is not None:
        threads = check_int("threads", threads, minimum=1)
    elif jobs > 1:
        threads = max(1, available_cpus() // jobs)
    opts = check_options(options, exp.methods, RESERVED_OPTIONS)
    store, doc, case_list, run_methods, groups = _open(exp, out, methods=methods_l, groups=groups, matching=matching, seed=seed,
                                  options=options, opts=opts, resume=resume, overwrite=overwrite)
    cfg = doc["config"]
    skipped = doc.pop("skipped")
    if command is None:
        command = (f"{exp.entry}({str(exp.dataset.root)!r}, {str(out)!r}, methods={run_methods}, cases={groups}, "
                   f"matching={cfg['matching']!r}, seed={cfg['seed']}, jobs={jobs})")
    run = Run(store, doc, exp.dataset, command=command, title=exp.title, methods_order=exp.methods)
    run.run.update(jobs=jobs, threads=threads, skipped=skipped)
    error: BaseException | None = None
    bar = None
    try:
        (out / PREDICTIONS_DIR).mkdir(exist_ok=True)
        (out / FIGURES_DIR).mkdir(exist_ok=True)
        scores = score_map(doc["records"], exp.dataset.key_fields, exp.dataset.scoring.key)
        tasks = _tasks(exp, case_list, run_methods, store.keys(), scores, cfg, out, figures)
        n_fits = len(case_list) * len(run_methods)
        todo = sum(len(t.methods) for t in tasks)
        logger.info("%s: %d %s of %d %s, methods %s: %d fit(s) to run, %d already done; %d job(s) x %s "
                    "thread(s)", exp.short, len(case_list), exp.dataset.unit, len({c.key[0] for c in case_list}),
                    exp.dataset.group, ",".join(run_methods), todo, n_fits - todo, jobs, threads or "torch's default")
        bar = progress_bar(progress, len(tasks), exp.short.lower().replace(" ", ""))

        def on_result(res: FitTaskResult) -> None:
            run.add(res.records, res.settings)
            scoring = exp.dataset.scoring
            msg = ", ".join(f"{r['method']} {r[scoring.key]:.3f}" for r in res.records)
            logger.info("%s: %s %s", res.case.title, scoring.label, msg)
            if bar is not None:
                bar.step(last=f"{res.case.name}: {msg}")

        run_tasks(tasks, run_fit_task, on_result, jobs=jobs, threads=threads)
    except BaseException as exc:
        error = exc
        raise
    finally:
        notes = [f"Settings on top of the defaults: {options_text(cfg['options'])}."] if cfg["options"] else []
        notes += [f"{m}: {reason}." for m, reason in run.run["skipped"].items()]
        result = close_run(run, error, bar, case_list if figures else None, cfg["methods"], exp.short, notes)
    return result
