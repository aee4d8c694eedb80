"""The paper's MyoPS 2020 tables (Schwab, Mayr & Haltmeier 2024) as configurations of the runners.

**Table 1** (:func:`run_table1`, ``deepgmm myops table1``): single-image optimisation, a
:func:`.fit_runner.run_fit` of :data:`TABLE1`. Every kept slice of the paper's protocol
(:func:`deepgmm.datasets.myops.paper_slices`: 79 slices of 25 patients) is segmented into K = 4
classes by each method (``gmm``, ``deepg``, ``svgmm``, ``deepsvg``) with :func:`deepgmm.segment`
at the library's *default* settings, on the slice's z-scored image (``normalize="none"``: the
loader already z-scored it over the crop) inside its ground-truth left ventricle; every fit gets
``random_state = seed``, so any record can be reproduced with ``segment(slice.image, slice.mask,
method=..., n_components=4, random_state=record["seed"])``.

**Table 2** (:func:`run_table2`, ``deepgmm myops table2``): a :func:`.train_runner.run_train_test`.
One network per method is trained on the 20 training patients (all but
:data:`deepgmm.datasets.myops.TEST_CASES`) and applied to the slices of the five test patients:

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

import functools
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._validation import check_choice, check_float, check_int, resolve_device
from ..choices import MYOPS_TABLE1_METHODS, MYOPS_TABLE2_METHODS, READOUTS, TABLE_MATCHINGS
from ..datasets import myops
from ..training import AugmentConfig, MyoPSDataset, TrainConfig
from ._report import CLASS_COLUMNS
from ._run import TableResult, parse_cases, resolve
from ..training.distributed import DistInfo
from ._shards import check_split
from ._store import RESULTS_FILE, plain
from .cases import Case, DataSet
from .fit_runner import FitExperiment, run_fit
from .train_runner import TestMethod, TrainTestPlan, member_seed, run_train_test_split

__all__ = ["TABLE1_METHODS", "TABLE2_METHODS", "TABLE1_MATCHINGS", "N_COMPONENTS", "MU_SLICES", "MU_LAM",
           "TABLE2_TRAIN_DEFAULTS", "myops_dataset", "table1", "run_table1", "run_table2", "compute_mu_data"]

logger = logging.getLogger(__name__)

TABLE1_METHODS = MYOPS_TABLE1_METHODS
TABLE2_METHODS = MYOPS_TABLE2_METHODS
TABLE1_MATCHINGS = TABLE_MATCHINGS
N_COMPONENTS = len(CLASS_COLUMNS)
MU_SLICES = 10
"""Number of random training slices ``mu_data`` is averaged over."""
MU_LAM = 1.0
"""Weight of the ``mu_prior`` regulariser of deepSVGμ (the paper's lam)."""
TABLE2_TRAIN_DEFAULTS: dict[str, Any] = {"normalize": "image", "crop_size": [128, 128]}
"""Training settings of Table 2 on top of :class:`deepgmm.training.TrainConfig`'s defaults: those
``deepgmm train --layout myops`` uses (z-score over the 160x160 slice, 128x128 training windows)."""


# ----------------------------------------------------------------------------- the data set
def _case(sl: myops.MyoPSSlice) -> Case:
    case, z = int(sl.case), int(sl.slice_index)
    return Case((case, z), f"{case}_z{z:03d}", f"patient {case}, slice {z}", sl.image, sl.mask, sl.labels, sl)


def load_slices(data: Path, cases: Sequence[int] | None) -> list[Case]:
    """The paper's slices of ``cases`` (default: all training patients) as :class:`Case` objects."""
    found = myops.find_cases(data, "train")
    if cases is not None:
        missing = [c for c in cases if c not in found]
        if missing:
            raise ValueError(f"cases: MyoPS case(s) {missing} not found under {data}; available: {sorted(found)}")
    slices = myops.paper_slices(data, cases)
    if not slices:
        raise ValueError(f"no slice of case(s) {cases if cases is not None else sorted(found)} under {data} "
                         "holds all four classes; nothing to evaluate")
    return [_case(sl) for sl in slices]


def myops_dataset(data: str | Path) -> DataSet:
    """The kept 2D slices of the MyoPS 2020 training patients under ``data`` (z-scored, cropped,
    masked by the ground-truth left ventricle; classes blood, myocardium, edema, scar)."""
    data = Path(data)
    return DataSet("myops", data, CLASS_COLUMNS, tuple(myops.CHANNELS), functools.partial(load_slices, data),
                   segment_options={"normalize": "none"})


def table1(data: str | Path) -> FitExperiment:
    """Table 1 on the MyoPS folder ``data``: a configuration of :func:`.fit_runner.run_fit`."""
    return FitExperiment(
        "myops-table1", "MyoPS 2020, Table 1: single-image optimisation", "Table 1",
        "MyoPS 2020, Table 1 of Schwab, Mayr & Haltmeier (2024): single-image optimisation of each method on "
        "every kept slice (K=4, ground-truth left-ventricle mask)",
        myops_dataset(data), TABLE1_METHODS, TABLE1_MATCHINGS, entry="run_table1")


def run_table1(data: str | Path, out: str | Path, **kwargs: Any) -> TableResult:
    """Table 1: every method on every kept slice, one record per ``(method, case, slice)``.

    Keyword arguments (all optional): methods : subset of :data:`TABLE1_METHODS` (default all);
    cases : patient ids (default: all 25 training patients); matching : "hungarian" (default) or
    "greedy" (the paper's class-by-class order); seed : ``random_state`` of every fit (default 0);
    jobs : worker processes (results do not depend on it); threads : torch threads per process
    (default: torch's own with ``jobs=1``, else ``max(1, cpus // jobs)``); resume : continue the
    run in ``out`` (records kept and skipped; ``methods``/``cases`` may add methods or patients,
    other settings must equal the stored ones); overwrite : clear ``out`` (a previous deepgmm
    output) and start again; figures : per-slice figures (the overview is always drawn);
    progress : progress bar (default: when stderr is a terminal); options : per-method
    :func:`deepgmm.segment` settings, e.g. ``{"deepsvg": {"max_steps": 50}}``; command : the
    command line to record.
    """
    return run_fit(table1(data), out, **kwargs)


# ----------------------------------------------------------------------------- Table 2
def compute_mu_data(slices: Sequence[Any], *, n: int = MU_SLICES, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """``mu_data`` ``(K, C)``: the per-class, per-channel ground-truth means of ``n`` slices drawn
    at random (``numpy.random.default_rng(seed)``, without replacement) from ``slices``, averaged
    over those slices. Returns it and the ``[case, slice]`` of the slices drawn.

    Pass the slices of the *training* patients only (the paper's code drew from all 25, a leak).
    """
    n = check_int("n", n, minimum=1)
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


def _train_config(settings: Mapping[str, Any], mu: np.ndarray | None, seed: int, method: str,
                  lam: float = MU_LAM, spare_classes: int = 0) -> Any:
    """The :class:`deepgmm.training.TrainConfig` of one Table 2 network (checked by ``finalize``)."""
    kwargs = dict(settings)
    if isinstance(kwargs.get("augment"), Mapping):
        kwargs["augment"] = AugmentConfig(**kwargs["augment"])
    kwargs.update(method="deepsvg", n_components=N_COMPONENTS, class_names=list(myops.CLASS_NAMES), seed=seed,
                  channels=list(myops.CHANNELS))
    if mu is not None:
        # mu_data is read off the loader's crops, which are z-scored already and which training's
        # z-score leaves as they are: the prior is in the units the network's mixture is fitted in
        kwargs.update(mu_data=mu.tolist(), lam=lam, prior_units="normalized")
    elif spare_classes:
        kwargs.update(spare_classes=spare_classes)
    try:
        return TrainConfig(**kwargs).finalize()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid training settings for {method}: {' '.join(str(exc).split())}") from None


def _check_table2_args(a: dict[str, Any]) -> None:
    """Validate the arguments of :func:`run_table2` (before any file is touched)."""
    if a["matching"] is not None:
        check_choice("matching", a["matching"], TABLE1_MATCHINGS)
    for name, minimum in (("seed", 0), ("epochs", 1), ("batch_size", 1), ("ensemble", 1)):
        if a[name] is not None:
            check_int(name, a[name], minimum=minimum)
    if a["lam"] is not None:
        a["lam"] = check_float("lam", a["lam"], minimum=0.0)
    if a["spare_classes"] is not None:
        check_int("spare_classes", a["spare_classes"], minimum=0)
    if a["readout"] is not None:
        check_choice("readout", a["readout"], READOUTS)
    resolve_device(a["device"])
    if a["threads"] is not None:
        a["threads"] = check_int("threads", a["threads"], minimum=1)
    a["train_cases"] = parse_cases(a["train_cases"], "train_cases")
    a["test_cases"] = parse_cases(a["test_cases"], "test_cases")
    opts = a["train_options"]
    if opts is not None and not isinstance(opts, Mapping):
        raise ValueError(f"train_options must be a dict of TrainConfig settings, got {type(opts).__name__}")
    reserved = sorted(set(opts or {}) & {"method", "n_components", "class_names", "seed", "mu_data", "lam",
                                         "epochs", "batch_size"})
    if reserved:
        raise ValueError(f"train_options may not set {reserved}: the table sets them")


def _resolve_table2(a: dict[str, Any], scfg: Mapping[str, Any] | None, data: Path, out: Path) -> dict[str, Any]:
    """The settings of a Table 2 run: the arguments, the stored ones on resume, else the defaults."""
    found = sorted(myops.find_cases(data, "train"))
    r: dict[str, Any] = {"test_cases": resolve(scfg, "test_cases", a["test_cases"], list(myops.TEST_CASES), out)}
    r["train_cases"] = resolve(scfg, "train_cases", a["train_cases"], [c for c in found if c not in r["test_cases"]],
                               out)
    missing = [c for c in list(r["train_cases"]) + list(r["test_cases"]) if c not in found]
    if missing:
        raise ValueError(f"MyoPS case(s) {missing} not found under {data}; available: {found}")
    overlap = sorted(set(r["train_cases"]) & set(r["test_cases"]))
    if overlap:
        raise ValueError(f"patient(s) {overlap} are both training and test patients")
    r["seed"] = resolve(scfg, "seed", a["seed"], 0, out)
    r["matching"] = resolve(scfg, "matching", a["matching"], "hungarian", out)
    r["ensemble"] = int(resolve(scfg, "ensemble", a["ensemble"], 1, out, added_later=True))
    r["mu_lam"] = float(resolve(scfg, "mu_lam", a["lam"], MU_LAM, out, flag="--lam"))
    r["readout"] = str(resolve(scfg, "readout", a["readout"], "soft_labels", out, added_later=True))
    r["spare_classes"] = int(resolve(scfg, "spare_classes", a["spare_classes"], 0, out, added_later=True))
    settings = dict(TABLE2_TRAIN_DEFAULTS)
    settings.update(plain(dict(a["train_options"] or {})))
    if a["epochs"] is not None:
        settings["epochs"] = a["epochs"]
    if a["batch_size"] is not None:
        settings["batch_size"] = a["batch_size"]
    given = plain(settings) if (a["train_options"] or a["epochs"] or a["batch_size"]) else None
    r["train_settings"] = resolve(scfg, "train_settings", given, plain(settings), out,
                                  flag="training settings (--epochs, --batch-size, train_options)")
    return r


def _table2_notes(r: Mapping[str, Any], mu_from: Sequence[Any]) -> list[str]:
    n = r["ensemble"]
    notes = [f"Training patients: {', '.join(map(str, r['train_cases']))}; test patients: "
             f"{', '.join(map(str, r['test_cases']))}. mu_data from {len(mu_from)} random training slices "
             f"(seed {r['seed']}); deepSVGμ trained with lam {r['mu_lam']:g}."]
    if n > 1:
        notes.append(f"deepSVG and deepSVGμ: mean soft labels of {n} networks each (--ensemble {n}); the paper "
                     "uses one.")
    if r["spare_classes"]:
        notes.append(f"deepSVG's networks fit {N_COMPONENTS + r['spare_classes']} classes and drop the smallest "
                     f"{r['spare_classes']} on each test slice (--spare-classes {r['spare_classes']}); the paper fits 4.")
    if r["readout"] == "posterior":
        notes.append("deepSVG and deepSVGμ read out the posteriors of the mixture their soft labels define on "
                     "each test slice (--readout posterior, one E-step); the paper reads out the soft labels.")
    return notes


def _table2_plan(data: Path, r: dict[str, Any], scfg: Mapping[str, Any] | None, out: Path, device: str) -> TrainTestPlan:
    """Table 2 as a :class:`.train_runner.TrainTestPlan`, from the resolved settings ``r``."""
    dataset = myops_dataset(data)
    train_slices = myops.paper_slices(data, r["train_cases"])
    test_slices = myops.paper_slices(data, r["test_cases"])
    if not train_slices or not test_slices:
        raise ValueError(f"no kept slice among the {'training' if not train_slices else 'test'} patients")
    seed, settings = r["seed"], r["train_settings"]
    mu, mu_from = compute_mu_data(train_slices, n=MU_SLICES, seed=seed)
    networks = {m: [_train_config(settings, mu if m == "deepsvg_mu" else None, member_seed(seed, j), m, r["mu_lam"],
                                  r["spare_classes"]) for j in range(r["ensemble"])]
                for m in ("deepsvg", "deepsvg_mu")}
    config = {"data": str(data.absolute()), "methods": list(TABLE2_METHODS), "train_cases": list(r["train_cases"]),
              "test_cases": list(r["test_cases"]),
              "slices": [[int(s.case), int(s.slice_index)] for s in test_slices], "n_components": N_COMPONENTS,
              "matching": r["matching"], "seed": seed, "ensemble": r["ensemble"], "train_settings": plain(settings),
              "mu_lam": r["mu_lam"], "readout": r["readout"], "spare_classes": r["spare_classes"],
              "mu_data": mu.tolist(), "mu_data_slices": mu_from}
    if scfg is not None and not np.allclose(np.asarray(scfg["mu_data"]), mu, rtol=0, atol=1e-9):
        raise ValueError(f"cannot resume: mu_data computed now differs from the one in {out / RESULTS_FILE}")
    methods = [TestMethod("svgmm", "svgmm"), TestMethod("deepsvg"),
               TestMethod("svgmm_mu", "svgmm", {"init": "means", "means_init": mu}, prior=True),
               TestMethod("deepsvg_mu", prior=True)]
    mu_file = {"mu_data": mu.tolist(), "classes": list(CLASS_COLUMNS), "channels": list(myops.CHANNELS),
               "slices": mu_from, "seed": seed, "train_cases": list(r["train_cases"])}
    return TrainTestPlan(
        "myops-table2", "MyoPS 2020, Table 2: trained networks, test patients", "Table 2",
        "MyoPS 2020, Table 2 of Schwab, Mayr & Haltmeier (2024): networks trained on the training patients, "
        "evaluated on the test patients (K=4, ground-truth left-ventricle mask)",
        dataset, [_case(sl) for sl in test_slices], methods, networks,
        functools.partial(MyoPSDataset, data, r["train_cases"], normalize=settings.get("normalize", "image"),
                          crop_size=settings.get("crop_size")),
        config, seed, r["matching"], r["readout"], device, files={"mu_data.json": mu_file},
        notes=_table2_notes(r, mu_from))


def run_table2(data: str | Path, out: str | Path, *, epochs: int | None = None, batch_size: int | None = None,
               seed: int | None = None, matching: str | None = None, train_cases: str | Sequence[int] | None = None,
               test_cases: str | Sequence[int] | None = None, train_options: Mapping[str, Any] | None = None,
               ensemble: int | None = None, lam: float | None = None, readout: str | None = None,
               spare_classes: int | None = None, device: str = "cpu", threads: int | None = None,
               resume: bool = False, overwrite: bool = False, figures: bool = True, progress: bool | None = None,
               command: str | None = None, shard: str | Sequence[int] | None = None, merge: bool = False,
               dist: DistInfo | None = None) -> TableResult:
    """Table 2: networks trained on the training patients, evaluated on the test patients.

    epochs, batch_size : training epochs and batch size (default: :class:`deepgmm.training.TrainConfig`'s);
    seed : seeds the ``mu_data`` draw, the training and the EM fits (default 0); matching : of
    SVGMM and deepSVG, "hungarian" (default) or "greedy" (the μ variants are scored in the prior's
    class order, "prior", and with Hungarian matching); train_cases, test_cases : default the
    paper's split (test: 109, 114, 117, 120, 122; training: every other patient found);
    train_options : further ``TrainConfig`` settings on top of :data:`TABLE2_TRAIN_DEFAULTS`;
    ensemble : networks per deep method (default 1; N > 1: training seeds ``seed`` and N - 1 drawn
    from it, mean soft labels of :class:`deepgmm.training.EnsembleModel`, member j > 1 in
    ``models/<method>-j``); lam : weight of deepSVGμ's ``mu_prior`` term (default :data:`MU_LAM`);
    readout : "soft_labels" (default, the paper's) or "posterior" (one E-step under the mixture the
    soft labels define); spare_classes : extra classes deepSVG's networks fit, dropped per test
    slice (default 0); device : "cpu", "cuda" or "auto"; threads : torch CPU threads for the run;
    resume, overwrite, figures, progress, command : as for :func:`run_table1` (on resume an
    unfinished training continues from its checkpoint, a finished one is reused); shard, merge,
    dist : a run split over batch jobs or torchrun's processes, the networks shared out
    (:func:`.train_runner.run_train_test_split`).
    Returns a TableResult whose ``training`` holds each network's training summary.
    """
    a = dict(epochs=epochs, batch_size=batch_size, seed=seed, matching=matching, train_cases=train_cases,
             test_cases=test_cases, train_options=train_options, ensemble=ensemble, lam=lam, readout=readout,
             spare_classes=spare_classes, device=device, threads=threads)
    _check_table2_args(a)
    share = check_split(shard, dist, merge=merge, overwrite=overwrite)
    data, out = Path(data), Path(out)

    def plan_for(scfg: Mapping[str, Any] | None) -> TrainTestPlan:
        return _table2_plan(data, _resolve_table2(a, scfg, data, out), scfg, out, device)

    if command is None:
        command = (f"run_table2({str(data)!r}, {str(out)!r}, epochs={epochs}, seed={seed}, matching={matching!r}"
                   + (f", shard={shard!r}" if shard is not None else "") + (", merge=True" if merge else "") + ")")
    return run_train_test_split(plan_for, "myops-table2", out, shard=share, merge=merge, dist=dist, resume=resume,
                                overwrite=overwrite, threads=a["threads"], figures=figures, progress=progress,
                                command=command)
