"""Runner "train on some cases, test on others" (e.g. MyoPS Table 2).

A :class:`TrainTestPlan` names the networks to train (one :class:`deepgmm.training.TrainConfig`
per ensemble member), the training data and the test methods: EM fits of each test case
(:func:`deepgmm.segment`) or a trained network applied to it. :func:`run_train_test` trains the
networks into ``models/<name>/`` (an unfinished training continues from its checkpoint, a
finished one is reused), applies every method to every test case and scores it; records,
resume, lock, ``table.md`` and figures are those of :mod:`.fit_runner`. Split over processes or
jobs (:func:`run_train_test_split`, :mod:`._shards`), the unit of a share is one network (one
ensemble member): ``shard="I/N"`` trains share I of them, the merge moves them into ``models/`` and
tests every case; under torchrun every rank trains its share into ``models/``, then rank 0 tests.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .._torch_settings import torch_settings
from ..io import save_json
from ..training import EnsembleModel, load_model, train
from ..training.checkpoint import CHECKPOINT_FILE, MODEL_FILE
from ..training.distributed import DistInfo
from . import cases as _cases
from ._pool import progress_bar
from ._run import Run, TableResult, close_run, draw_case, save_prediction, score_map
from ._shards import (MODELS_DIR, absorb, balance, check_shard_set, check_shards, find_shards, gather, receive_plan,
                      send_plan, shard_folder, shard_template, take_in)
from ._store import FIGURES_DIR, FORMAT_VERSION, KEY_FIELDS, PREDICTIONS_DIR, RESULTS_FILE, ResultsFolder, plain
from .cases import Case, DataSet

__all__ = ["TestMethod", "TrainTestPlan", "run_train_test", "run_train_test_split", "member_seed", "member_name",
           "train_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestMethod:
    """One row of a train/test table.

    name : its name in records; segment : the ``segment()`` method fitted on each test case, or
    None for the trained network named ``name``; options : further ``segment()`` settings;
    prior : the method fixes the class order (scored without matching, as ``"prior"``, and also
    with Hungarian matching in ``record["matched"]``).
    """

    name: str
    segment: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    prior: bool = False


@dataclass
class TrainTestPlan:
    """A resolved train/test run.

    experiment, title, short, description : as for :class:`.fit_runner.FitExperiment`; dataset :
    the test data set; test_cases : its cases to test on; methods : the table's rows, in order;
    networks : per network method, the ``TrainConfig`` of each ensemble member; train_data : builds
    the training data set (called only when a network must be trained); config : ``results.json``'s
    ``config``; files : JSON files written into the output folder at the start; notes : lines of
    ``table.md``.
    """

    experiment: str
    title: str
    short: str
    description: str
    dataset: DataSet
    test_cases: list[Case]
    methods: list[TestMethod]
    networks: dict[str, list[Any]]
    train_data: Callable[[], Any]
    config: dict[str, Any]
    seed: int
    matching: str
    readout: str
    device: str = "cpu"
    files: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def member_seed(seed: int, member: int) -> int:
    """Training seed of ensemble member ``member`` (0: the run's seed itself; others drawn from it,
    so that no member of one run repeats a member of a run with another seed)."""
    return seed if member == 0 else int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


def member_name(method: str, member: int) -> str:
    """Model folder (under ``models/``) and training key of ensemble member ``member``."""
    return method if member == 0 else f"{method}-{member + 1}"


def train_model(method: str, cfg: Any, dataset: Any, folder: Path, *, device: str,
                progress: bool | None) -> dict[str, Any]:
    """Train (or resume, or reuse) one network in ``folder``; returns its training summary."""
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


def _members(plan: TrainTestPlan) -> list[tuple[str, int, str]]:
    """``(method, member, name)`` of every network of ``plan``, in table order: the units of a split run."""
    return [(m, j, member_name(m, j)) for m in (t.name for t in plan.methods) if m in plan.networks
            for j in range(len(plan.networks[m]))]


def _train_members(plan: TrainTestPlan, folder: Path, names: Sequence[str], progress: bool | None, device: str,
                   record: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) the networks ``names`` into ``folder/models/<name>``; their
    training summaries (each also handed to ``record`` unless the model was reused)."""
    if not names:
        return {}
    train_data = plan.train_data()
    out = {}
    for m, j, name in _members(plan):
        if name in names:
            out[name] = train_model(name, plan.networks[m][j], train_data, folder / MODELS_DIR / name, device=device,
                                    progress=progress)
            if record is not None and not out[name].get("reused"):
                record(name, out[name])
    return out


def _networks(plan: TrainTestPlan, run: Run, need: set[str], progress: bool | None,
              record: Callable[[str, dict[str, Any]], None]) -> dict[str, Any]:
    """Train (or reuse) the networks of the methods in ``need``; returns them loaded (ensembles combined)."""
    names = [name for m, _, name in _members(plan) if m in need]
    _train_members(plan, run.store.path, names, progress, plan.device, record)
    models: dict[str, Any] = {}
    for m in (t.name for t in plan.methods):
        if m not in need or m not in plan.networks:
            continue
        members = [load_model(run.store.path / MODELS_DIR / member_name(m, j), device=plan.device,
                              readout=plan.readout) for j in range(len(plan.networks[m]))]
        # members of an unsupervised network have no common class order: aligned by overlap (EnsembleModel's default)
        models[m] = members[0] if len(members) == 1 else EnsembleModel(members, readout=plan.readout)
    return models


def _fit(plan: TrainTestPlan, method: TestMethod, models: Mapping[str, Any], case: Case) -> _cases.Fit:
    if method.segment is not None:
        return _cases.segment_fit(plan.dataset, case, method.segment, plan.seed, method.options)
    model, n = models[method.name], len(plan.networks[method.name])
    fit = _cases.network_fit(plan.dataset, model, case)
    fit.settings = {"model": str(Path("models") / method.name), "trained": plain(model.config.to_dict()),
                    "readout": plan.readout}
    if n > 1:
        fit.settings["ensemble"] = [str(Path("models") / member_name(method.name, j)) for j in range(n)]
    return fit


def _test_case(plan: TrainTestPlan, run: Run, case: Case, models: Mapping[str, Any], done: set,
               known: Mapping[str, Any], figures: bool) -> None:
    """Every method not yet done on ``case``: fit, score, save the prediction, record; its figure."""
    records, settings, fresh = [], {}, {}
    for method in plan.methods:
        if (method.name, *case.key) in done:
            continue
        fit = _fit(plan, method, models, case)
        record, matched = _cases.make_record(plan.dataset, method.name, case, fit,
                                             "prior" if method.prior else plan.matching, plan.seed,
                                             also_matched="hungarian" if method.prior else None)
        save_prediction(run.store.path, case, method.name, matched)
        records.append(record)
        settings[method.name] = fit.settings
        fresh[method.name] = matched
    run.add(records, settings)
    if figures:
        scores = dict(known)
        scores.update({r["method"]: r["mean_dice"] for r in records})
        draw_case(run.store.path, plan.dataset, case, [t.name for t in plan.methods], scores, fresh,
                  title=plan.short)


def run_train_test(plan: TrainTestPlan, store: ResultsFolder, stored: dict[str, Any] | None, *,
                   threads: int | None = None, figures: bool = True, progress: bool | None = None,
                   command: str | None = None, before: Callable[[Run], None] | None = None,
                   train_only: Sequence[str] | None = None) -> TableResult:
    """Run ``plan`` in ``store`` (checked: ``stored`` is its stored document on resume, else None).
    ``before(run)`` is called once the run has started; ``train_only``: only train these networks
    (a shard's share), test nothing."""
    doc = stored if stored is not None else {"experiment": plan.experiment, "format_version": FORMAT_VERSION,
                                             "description": plan.description, "records": []}
    doc["config"] = plan.config
    doc.setdefault("training", {})
    names = [t.name for t in plan.methods]
    run = Run(store, doc, plan.dataset, command=command, title=plan.title, methods_order=names)
    run.run.update(device=str(plan.device), threads=threads)
    error: BaseException | None = None
    bar = None
    figure_cases = plan.test_cases if figures and train_only is None else None

    def record(name: str, summary: dict[str, Any]) -> None:
        run.doc["training"][name] = summary
        store.save()

    try:
        with torch_settings(threads):
            if before is not None:
                before(run)
            for name, content in plan.files.items():
                save_json(store.path / name, content)
            if train_only is not None:
                _train_members(plan, store.path, train_only, progress, plan.device, record)
            else:
                (store.path / PREDICTIONS_DIR).mkdir(exist_ok=True)
                (store.path / FIGURES_DIR).mkdir(exist_ok=True)
                done = store.keys()
                todo = [c for c in plan.test_cases if any((m, *c.key) not in done for m in names)]
                need = {m for c in todo for m in names if (m, *c.key) not in done}
                models = _networks(plan, run, need, progress, record)
                bar = progress_bar(progress, len(todo), f"{plan.short.lower().replace(' ', '')} test")
                scores = score_map(doc["records"], plan.dataset.key_fields)
                for case in todo:
                    _test_case(plan, run, case, models, done, scores.get(tuple(case.key), {}), figures)
                    if bar is not None:
                        bar.step(last=case.name)
    except BaseException as exc:
        error = exc
        raise
    finally:
        result = close_run(run, error, bar, figure_cases, names, plan.short, plan.notes)
    return result


# ----------------------------------------------------------------------------- split over processes or jobs
def run_train_test_split(plan_for: Callable[[dict[str, Any] | None], TrainTestPlan], experiment: str, out: Path, *,
                         shard: tuple[int, int] | None = None, merge: bool = False, dist: DistInfo | None = None,
                         resume: bool = False, overwrite: bool = False, **kw: Any) -> TableResult:
    """:func:`run_train_test` of the plan ``plan_for(settings)`` (the stored settings on resume, a
    shard's on a merge, else None), in one process, as shard I of N (``shard``: train share I of
    the networks into ``out/shards/I-of-N``), as the merge of the N shards, or under torchrun
    (``dist``: the networks to train shared over the ranks, trained into ``out/models``; rank 0
    tests). ``kw``: ``threads``, ``figures``, ``progress``, ``command``."""
    if dist is not None and dist.world_size > 1:
        return _ranks(plan_for, experiment, out, dist, resume=resume, overwrite=overwrite, **kw)
    found = None
    if merge:
        found = find_shards(out)
        check_shard_set(found, out)
        resume = (out / RESULTS_FILE).is_file()
    folder = shard_folder(out, *shard) if shard is not None else out
    store = ResultsFolder(folder, experiment=experiment, resume=resume, overwrite=overwrite, shards_only_is_new=merge)
    stored = store.check()
    template = shard_template(found, experiment, KEY_FIELDS) if found and stored is None else None
    plan = plan_for(stored["config"] if stored is not None else template)
    if shard is not None:
        i, n = shard
        names = [name for _, _, name in _members(plan)]
        mine = [names[j] for j in balance([1.0] * len(names), n)[i - 1]]
        share = {"index": i, "count": n, "records": [], "models": mine}
        prev = stored["config"].get("shard") if stored is not None else None
        if prev is not None and prev != share:
            raise ValueError(f"cannot resume shard {i}/{n} in {folder}: its share differs from the stored one "
                             "(other settings?); pass --overwrite to run it again")
        plan.config["shard"] = share
        return run_train_test(plan, store, stored, train_only=share["models"], **kw)
    if found is not None:
        taken = check_shards(found, experiment=experiment, dataset=plan.dataset, config=plan.config, target=out,
                             complete=True, method_settings=(stored or {}).get("method_settings"))
        try:
            return run_train_test(plan, store, stored, before=lambda run: absorb(run, taken, keep_runs=True), **kw)
        finally:
            taken.close()
    return run_train_test(plan, store, stored, before=_leftovers if resume else None, **kw)


def _leftovers(run: Run) -> None:
    found = find_shards(run.store.path)
    if found:
        take_in(run, found, complete=False, keep_runs=False)


def _rank_device(device: str, dist: DistInfo) -> str:
    """A CUDA device of this rank's own (``cuda:LOCAL_RANK`` modulo the devices), else ``device``."""
    import torch

    if str(device) in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{dist.local_rank % torch.cuda.device_count()}"
    return str(device)


def _ranks(plan_for: Callable[[dict[str, Any] | None], TrainTestPlan], experiment: str, out: Path, dist: DistInfo, *,
           resume: bool, overwrite: bool, **kw: Any) -> TableResult:
    """Under torchrun: the networks still to train shared over the ranks (into ``out/models``), then
    rank 0 tests every case. The other ranks return an empty result."""
    progress = kw.get("progress")
    if not dist.is_main:
        got = receive_plan(dist)
        plan = plan_for(got["settings"])
        mine = _train_members(plan, out, got["shares"][dist.rank], progress, _rank_device(plan.device, dist))
        gather(mine, dist)
        return TableResult(out, [], {}, "", 0, False, 0.0)
    try:
        store = ResultsFolder(out, experiment=experiment, resume=resume, overwrite=overwrite)
        stored = store.check()
        plan = plan_for(stored["config"] if stored is not None else None)
    except (ValueError, OSError) as exc:
        send_plan(dist, exc, None)
        raise

    def before(run: Run) -> None:
        shares, error = None, None
        try:
            if resume:
                _leftovers(run)
            done, names = run.store.keys(), [t.name for t in plan.methods]
            need = {m for c in plan.test_cases for m in names if (m, *c.key) not in done}
            todo = [name for m, _, name in _members(plan) if m in need
                    and not (out / MODELS_DIR / name / MODEL_FILE).is_file()]
            shares = [[todo[j] for j in part] for part in balance([1.0] * len(todo), dist.world_size)]
        except (ValueError, OSError) as exc:
            error = exc
        send_plan(dist, error, None if error else {"settings": stored["config"] if stored else None, "shares": shares})
        if error is not None:
            raise error
        mine = _train_members(plan, out, shares[0], progress, _rank_device(plan.device, dist))
        for part in gather(mine, dist):
            run.doc["training"].update({k: v for k, v in part.items() if not v.get("reused")})
        run.run.update(processes=dist.world_size)

    return run_train_test(plan, store, stored, before=before, **kw)
