"""Runner "fit every case of a data set with each method and score it" (e.g. MyoPS Table 1).

:func:`run_fit` segments every case of a :class:`~deepgmm.experiments.cases.DataSet` with each
method of a :class:`FitExperiment` (:func:`deepgmm.segment` at the library's defaults, K = the
data set's classes, plus per-method ``options``), every fit with ``random_state = seed``, and
scores it against the case's truth. One record per ``(method, *case key)`` goes to
``results.json`` (rewritten atomically after every case, so ``resume=True`` continues an
interrupted run), and the run ends with ``table.md``, ``overview.png``, ``figures/`` and
``predictions/`` (see :mod:`._store`). Cases are shared out to ``jobs`` worker processes; the
records do not depend on ``jobs``. A run can also be split over the processes of a torchrun job or
over batch jobs (``shard="I/N"``, then ``merge=True``), see :mod:`._shards`; the unit of a share is
one case with the methods still to run on it, shares balanced by the voxels in the masks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .._validation import check_choice
from . import cases as _cases
from ._pool import available_cpus, progress_bar, run_tasks
from ._run import (
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
from ..training.distributed import DistInfo, barrier
from ._run import Run
from ._shards import (SHARDS_DIR, absorb, balance, check_shard_set, check_shards, check_split, find_shards,
                      receive_plan, send_plan, shard_folder, shard_template, take_in)
from ._store import FIGURES_DIR, FORMAT_VERSION, PREDICTIONS_DIR, RESULTS_FILE, ResultsFolder
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


@dataclass(frozen=True)
class _Args:
    """The checked arguments of :func:`run_fit`."""

    out: Path
    methods: list[str] | None
    groups: list[int] | None
    matching: str | None
    seed: int | None
    jobs: int
    threads: int | None
    options: Mapping[str, Any] | None
    opts: dict[str, Any]
    resume: bool
    overwrite: bool
    figures: bool
    progress: bool | None
    command: str | None


def _open(exp: FitExperiment, out: Path, a: _Args, *, template: Mapping[str, Any] | None = None,
          merging: bool = False) -> tuple[ResultsFolder, dict[str, Any], list[Case], list[str],
                                                     list[int] | None]:
    """Check the output folder and resolve the settings (a resumed run keeps its own; a merge,
    ``merging``, with no ``results.json`` yet takes those of the shards, ``template``, and skips no
    method that cannot run here: it runs none); returns the store, the ``results.json`` document (config set), the
    cases, the methods to run and the groups."""
    ds = exp.dataset
    store = ResultsFolder(out, experiment=exp.name, resume=a.resume, overwrite=a.overwrite, key_fields=ds.key_fields,
                          shards_only_is_new=merging, score_keys=ds.scoring.record_keys)
    stored = store.check()
    scfg = stored["config"] if stored is not None else template
    matching = resolve(scfg, "matching", a.matching, exp.matchings[0], out)
    seed = resolve(scfg, "seed", a.seed, 0, out)
    opts = resolve(scfg, "options", a.opts if a.options is not None else None, {}, out, flag="options")
    run_methods = a.methods or (list(scfg["methods"]) if scfg else list(exp.default_methods or exp.methods))
    skipped = _skipped(exp, run_methods) if not merging else {}
    run_methods = [m for m in run_methods if m not in skipped]
    groups = a.groups
    if scfg is not None and groups is None:
        groups = sorted({int(k[0]) for k in scfg[ds.unit]})
    cases = ds.load(groups)
    keys = [tuple(int(v) for v in c.key) for c in cases]
    smethods = stored["config"]["methods"] if stored else []
    config = {
        "data": str(ds.root.absolute()),
        "methods": [m for m in exp.methods if m in union(smethods, run_methods)],
        ds.unit: [list(k) for k in union([tuple(k) for k in stored["config"][ds.unit]] if stored else [], keys)],
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
           config: Mapping[str, Any], out: Path, figures: bool, only: set | None = None) -> list[FitTask]:
    tasks = []
    for case in cases:
        todo = [m for m in run_methods if (m, *case.key) not in done and (only is None or (m, *case.key) in only)]
        if todo:
            tasks.append(FitTask(exp, case, todo, config["seed"], config["matching"], config["options"], str(out),
                                 figures, list(config["methods"]), dict(scores.get(tuple(case.key), {}))))
    return tasks


def _check(exp: FitExperiment, out: str | Path, methods: Any, cases: Any, matching: str | None, seed: int | None,
           jobs: int, threads: int | None, options: Any, **kw: Any) -> _Args:
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
    return _Args(Path(out), methods_l, groups, matching, seed, jobs, threads, options, opts, **kw)


def run_fit(exp: FitExperiment, out: str | Path, *, methods: str | Sequence[str] | None = None,
            cases: str | Sequence[int] | None = None, matching: str | None = None, seed: int | None = None,
            jobs: int = 1, threads: int | None = None, resume: bool = False, overwrite: bool = False,
            figures: bool = True, progress: bool | None = None,
            options: Mapping[str, Mapping[str, Any]] | None = None, command: str | None = None,
            shard: str | Sequence[int] | None = None, merge: bool = False, dist: DistInfo | None = None) -> TableResult:
    """Every method of ``exp`` on every case of its data set (``cases``: the groups to use, e.g.
    patients; default: all), one record per ``(method, *case key)``. The arguments are those of
    :func:`deepgmm.experiments.myops.run_table1`, and (see :mod:`._shards`): ``dist`` : this
    process's place in a torchrun job (:func:`deepgmm.training.distributed.init_distributed`; more
    than one process: each computes its share, rank 0 merges); ``shard`` : ``"I/N"``, compute share
    I of N (from 1) into ``out/shards/I-of-N`` (``resume``/``overwrite`` apply to that folder);
    ``merge`` : take the N shards of ``out/shards`` into ``out`` (no fit is computed). Returns what
    rank 0 (or the one process) wrote; a shard's own result on the other ranks and for ``shard``."""
    a = _check(exp, out, methods, cases, matching, seed, jobs, threads, options, resume=resume, overwrite=overwrite,
               figures=figures, progress=progress, command=command)
    share = check_split(shard, dist, merge=merge, overwrite=overwrite)
    if merge:
        return _merge(exp, a)
    if dist is not None and dist.world_size > 1:
        return _run_ranks(exp, a, dist)
    if share is not None:
        return _run_shard(exp, a, *share)
    store, doc, case_list, run_methods, groups = _open(exp, a.out, a)
    return _execute(exp, a, store, doc, case_list, run_methods, groups, before=_leftovers if a.resume else None)


def _leftovers(run: Run, bars: list) -> None:
    """A resumed run takes in the shard folders left in its folder (records of a stopped torchrun job)."""
    found = find_shards(run.store.path)
    if found:
        logger.info("taking in %d shard folder(s) left in %s", len(found), run.store.path / SHARDS_DIR)
        take_in(run, found, complete=False, keep_runs=False)


def _execute(exp: FitExperiment, a: _Args, store: ResultsFolder, doc: dict[str, Any], case_list: list[Case],
             run_methods: list[str], groups: list[int] | None, *, only: set | None = None,
             before: Callable[[Run, list], None] | None = None, compute: bool = True) -> TableResult:
    """Start the run in ``store``, call ``before(run, bars)``, compute the missing records (those in
    ``only``, if given), then write the final files (also after an error)."""
    cfg = doc["config"]
    skipped = doc.pop("skipped")
    command = a.command
    if command is None:
        command = (f"{exp.entry}({str(exp.dataset.root)!r}, {str(store.path)!r}, methods={run_methods}, "
                   f"cases={groups}, matching={cfg['matching']!r}, seed={cfg['seed']}, jobs={a.jobs})")
    run = Run(store, doc, exp.dataset, command=command, title=exp.title, methods_order=exp.methods)
    run.run.update(jobs=a.jobs, threads=a.threads, skipped=skipped)
    error: BaseException | None = None
    bars: list[Any] = []
    try:
        (store.path / PREDICTIONS_DIR).mkdir(exist_ok=True)
        (store.path / FIGURES_DIR).mkdir(exist_ok=True)
        if before is not None:
            before(run, bars)
        if compute:
            _compute(exp, a, run, case_list, run_methods, only, bars)
    except BaseException as exc:
        error = exc
        raise
    finally:
        notes = [f"Settings on top of the defaults: {options_text(cfg['options'])}."] if cfg["options"] else []
        notes += [f"{m}: {reason}." for m, reason in run.run["skipped"].items()]
        result = close_run(run, error, bars[0] if bars else None, case_list if a.figures else None, cfg["methods"],
                           exp.short, notes)
    return result


def _compute(exp: FitExperiment, a: _Args, run: Run, case_list: list[Case], run_methods: list[str],
             only: set | None, bars: list) -> None:
    """Fit the missing records of ``run`` (in worker processes with ``a.jobs > 1``)."""
    out, cfg = run.store.path, run.doc["config"]
    scores = score_map(run.doc["records"], exp.dataset.key_fields, exp.dataset.scoring.key)
    tasks = _tasks(exp, case_list, run_methods, run.store.keys(), scores, cfg, out, a.figures, only)
    n_fits = len(case_list) * len(run_methods) if only is None else len(only)
    todo = sum(len(t.methods) for t in tasks)
    logger.info("%s: %d %s of %d %s, methods %s: %d fit(s) to run, %d already done; %d job(s) x %s "
                "thread(s)", exp.short, len(case_list), exp.dataset.unit, len({c.key[0] for c in case_list}),
                exp.dataset.group, ",".join(run_methods), todo, n_fits - todo, a.jobs, a.threads or "torch's default")
    bar = progress_bar(a.progress, len(tasks), exp.short.lower().replace(" ", ""))
    bars.append(bar)

    def on_result(res: FitTaskResult) -> None:
        run.add(res.records, res.settings)
        scoring = exp.dataset.scoring
        msg = ", ".join(f"{r['method']} {r[scoring.key]:.3f}" for r in res.records)
        logger.info("%s: %s %s", res.case.title, scoring.label, msg)
        if bar is not None:
            bar.step(last=f"{res.case.name}: {msg}")

    run_tasks(tasks, run_fit_task, on_result, jobs=a.jobs, threads=a.threads)


# ----------------------------------------------------------------------------- shards
def _cost(case: Case) -> int:
    """Estimated cost of one fit of ``case``: its voxels in the mask."""
    return int(case.mask.sum()) if case.mask is not None else int(case.truth.size)


def _shares(units: Sequence[tuple[Case, list[str]]], n: int) -> list[list[list[Any]]]:
    """``(case, methods)`` units split into ``n`` shares (:func:`._shards.balance` on voxels x methods);
    each share as ``[[method, *case key], ...]``."""
    parts = balance([_cost(c) * len(ms) for c, ms in units], n)
    return [[[m, *[int(v) for v in units[j][0].key]] for j in part for m in units[j][1]] for part in parts]


def _key_set(records: Sequence[Sequence[Any]]) -> set[tuple[Any, ...]]:
    return {(str(r[0]),) + tuple(int(v) for v in r[1:]) for r in records}


def _run_shard(exp: FitExperiment, a: _Args, i: int, n: int) -> TableResult:
    """``--shard I/N``: share I of every (method, case) into ``out/shards/I-of-N``."""
    sdir = shard_folder(a.out, i, n)
    store, doc, case_list, run_methods, groups = _open(exp, sdir, a)
    cfg = doc["config"]
    share = {"index": i, "count": n, "records": _shares([(c, list(cfg["methods"])) for c in case_list], n)[i - 1]}
    prev = store.stored["config"].get("shard") if store.stored is not None else None
    if prev is not None and prev != share:
        raise ValueError(f"cannot resume shard {i}/{n} in {sdir}: its share of the work differs from the stored one "
                         "(other data or settings?); pass --overwrite to run it again")
    cfg["shard"] = share
    logger.info("shard %d/%d: %d fit(s) of %d", i, n, len(share["records"]),
                len(case_list) * len(cfg["methods"]))
    return _execute(exp, a, store, doc, case_list, run_methods, groups, only=_key_set(share["records"]))


def _merge(exp: FitExperiment, a: _Args) -> TableResult:
    """``--merge``: the shards of ``out/shards`` into ``out`` (a new run, or added to the one there)."""
    found = find_shards(a.out)
    check_shard_set(found, a.out)
    template = shard_template(found, exp.name, exp.dataset.key_fields, exp.dataset.scoring.record_keys)
    resume = (a.out / RESULTS_FILE).is_file()
    groups = a.groups if a.groups is not None else sorted({int(k[0]) for k in template[exp.dataset.unit]})
    a = replace(a, resume=resume, methods=a.methods or list(template["methods"]), groups=groups)
    store, doc, case_list, run_methods, groups = _open(exp, a.out, a, template=template, merging=True)
    taken = check_shards(found, experiment=exp.name, dataset=exp.dataset, config=doc["config"], target=a.out,
                         complete=True, method_settings=doc.get("method_settings"))
    try:
        return _execute(exp, a, store, doc, case_list, run_methods, groups,
                        before=lambda run, bars: absorb(run, taken, keep_runs=True), compute=False)
    finally:
        taken.close()


def _run_ranks(exp: FitExperiment, a: _Args, dist: DistInfo) -> TableResult:
    """Under torchrun: rank 0 opens ``out`` (taking in shards left there on resume) and draws the
    shares of the missing fits; every rank computes its share into ``out/shards/<rank+1>-of-<W>``;
    rank 0 merges the shards once all ranks are done."""
    if not dist.is_main:
        plan = receive_plan(dist)
        result = _rank_share(exp, a, dist, plan, exp.dataset.load(plan["groups"]))
        barrier(dist)
        return result
    try:
        store, doc, case_list, run_methods, groups = _open(exp, a.out, a)
    except (ValueError, OSError) as exc:
        send_plan(dist, exc, None)
        raise

    def ranks(run: Run, bars: list) -> None:
        plan, error = None, None
        run.run.update(processes=dist.world_size)
        try:
            if a.resume:
                _leftovers(run, bars)
            done = run.store.keys()
            units = [(c, [m for m in run_methods if (m, *c.key) not in done]) for c in case_list]
            plan = {"config": dict(run.doc["config"]), "groups": groups, "run_methods": run_methods,
                    "shares": _shares([u for u in units if u[1]], dist.world_size)}
        except (ValueError, OSError) as exc:
            error = exc
        send_plan(dist, error, plan)
        if error is not None:
            raise error
        _rank_share(exp, a, dist, plan, case_list)
        barrier(dist)
        found = find_shards(run.store.path)
        check_shard_set(found, run.store.path, hint="; under torchrun the output folder must be on a file system "
                        "that every node sees")
        take_in(run, found, complete=True, keep_runs=False)

    return _execute(exp, a, store, doc, case_list, run_methods, groups, before=ranks, compute=False)


def _rank_share(exp: FitExperiment, a: _Args, dist: DistInfo, plan: dict[str, Any],
                case_list: list[Case]) -> TableResult:
    """This rank's share of a torchrun run, into its own shard folder."""
    i, n = dist.rank + 1, dist.world_size
    store = ResultsFolder(shard_folder(a.out, i, n), experiment=exp.name, resume=False, overwrite=True,
                          key_fields=exp.dataset.key_fields)
    store.check()
    records = plan["shares"][dist.rank]
    doc = {"experiment": exp.name, "format_version": FORMAT_VERSION, "description": exp.description, "records": [],
           "config": {**plan["config"], "shard": {"index": i, "count": n, "records": records}}, "skipped": {}}
    logger.info("rank %d of %d: %d fit(s)", dist.rank, n, len(records))
    return _execute(exp, a, store, doc, case_list, plan["run_methods"], plan["groups"], only=_key_set(records))
