"""Runner "train on some cases, test on others" (e.g. MyoPS Table 2).

A :class:`TrainTestPlan` names the networks to train (one :class:`deepgmm.training.TrainConfig`
per ensemble member), the training data and the test methods: EM fits of each test case
(:func:`deepgmm.segment`) or a trained network applied to it. :func:`run_train_test` trains the
networks into ``models/<name>/`` (an unfinished training continues from its checkpoint, a
finished one is reused), applies every method to every test case and scores it; records,
resume, lock, ``table.md`` and figures are those of :mod:`.fit_runner`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .._torch_settings import torch_settings
from ..io import save_json
from ..training import EnsembleModel, load_model, train
from ..training.checkpoint import CHECKPOINT_FILE, MODEL_FILE
from . import cases as _cases
from ._pool import progress_bar
from ._run import Run, TableResult, close_run, draw_case, save_prediction, score_map
from ._store import FIGURES_DIR, FORMAT_VERSION, PREDICTIONS_DIR, ResultsFolder, plain
from .cases import Case, DataSet

__all__ = ["TestMethod", "TrainTestPlan", "run_train_test", "member_seed", "member_name", "train_model"]

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


def _networks(plan: TrainTestPlan, run: Run, need: set[str], progress: bool | None) -> dict[str, Any]:
    """Train (or reuse) the networks of the methods in ``need``; returns them loaded (ensembles combined)."""
    models: dict[str, Any] = {}
    if not need & set(plan.networks):
        return models
    train_data = plan.train_data()
    for m in (t.name for t in plan.methods):
        if m not in need or m not in plan.networks:
            continue
        members = []
        for j, cfg in enumerate(plan.networks[m]):
            name = member_name(m, j)
            folder = run.store.path / "models" / name
            summary = train_model(name, cfg, train_data, folder, device=plan.device, progress=progress)
            if not summary.get("reused"):
                run.doc["training"][name] = summary
                run.store.save()
            members.append(load_model(folder, device=plan.device, readout=plan.readout))
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
                   command: str | None = None) -> TableResult:
    """Run ``plan`` in ``store`` (checked: ``stored`` is its stored document on resume, else None)."""
    doc = stored if stored is not None else {"experiment": plan.experiment, "format_version": FORMAT_VERSION,
                                             "description": plan.description, "records": []}
    doc["config"] = plan.config
    doc.setdefault("training", {})
    names = [t.name for t in plan.methods]
    run = Run(store, doc, plan.dataset, command=command, title=plan.title, methods_order=names)
    run.run.update(device=str(plan.device), threads=threads)
    error: BaseException | None = None
    bar = None
    try:
        with torch_settings(threads):
            for name, content in plan.files.items():
                save_json(store.path / name, content)
            (store.path / PREDICTIONS_DIR).mkdir(exist_ok=True)
            (store.path / FIGURES_DIR).mkdir(exist_ok=True)
            done = store.keys()
            todo = [c for c in plan.test_cases if any((m, *c.key) not in done for m in names)]
            need = {m for c in todo for m in names if (m, *c.key) not in done}
            models = _networks(plan, run, need, progress)
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
        result = close_run(run, error, bar, plan.test_cases if figures else None, names, plan.short, plan.notes)
    return result
