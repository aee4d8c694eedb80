"""One experiment run split over processes or batch jobs: shares, shard folders and their merge.

Two ways to split a run (see the README, "Cohorts across machines"):

* under ``torchrun`` every rank computes its share into ``OUT/shards/<rank + 1>-of-<world size>/``;
  rank 0 merges the shards into ``OUT`` once every rank is done;
* ``--shard I/N`` (counted from 1: ``1/N`` ... ``N/N``; e.g. one task of a batch scheduler's array
  job) computes share I of N into ``OUT/shards/I-of-N/``; a final ``--merge`` takes every shard into
  ``OUT``.

A shard folder is a results folder of its own (:class:`._store.ResultsFolder`: ``results.json``
with the run's ``config`` plus ``config["shard"]``, ``predictions/``, ``figures/``, for a
train/test run ``models/``), written atomically and resumable with ``--resume`` like any. A merge
first checks every shard (all N present, each complete, all of the same settings), then moves
their files into ``OUT``, writes their records into ``OUT/results.json`` and only then removes
``OUT/shards`` (one rename): a merge that stops half way is run again and ends the same. A
``--resume`` of ``OUT`` first takes in the shard folders left there (e.g. by a torchrun job that
stopped), complete or not, so that no finished fit is computed twice.

Shares are drawn by a deterministic greedy balance: the units of work, longest first (by an
estimated cost; ties by their order), each to the shard with the least work so far. Every process
and every array task computes the same shares from the same settings and data.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..training.checkpoint import MODEL_FILE
from ..training.distributed import DistInfo, broadcast_object
from ._run import Run, expected_keys
from ._store import FIGURES_DIR, PREDICTIONS_DIR, RESULTS_FILE, SCORE_KEYS, SHARDS_DIR, ResultsFolder, record_key

__all__ = ["SHARDS_DIR", "MODELS_DIR", "parse_shard", "shard_name", "shard_folder", "balance", "find_shards",
           "check_shard_set", "check_shards", "absorb", "take_in", "Taken", "send_plan", "receive_plan", "gather",
           "check_split", "refuse_under_torchrun", "shard_template"]

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
_NAME = re.compile(r"(\d+)-of-(\d+)")
_MOVED = (PREDICTIONS_DIR, FIGURES_DIR)
_NOT_SETTINGS = ("shard", "data")
"""Config entries that may differ between the shards of one run (the data folder: each machine its mount)."""


def parse_shard(value: str | Sequence[int]) -> tuple[int, int]:
    """``"2/4"`` (or ``(2, 4)``) -> ``(2, 4)``: shard I of N, counted from 1 (``1 <= I <= N``)."""
    text = value if isinstance(value, str) else "/".join(str(v) for v in value)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise ValueError(f"--shard must be I/N, shard I of N counted from 1 (e.g. 2/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ValueError(f"--shard {text}: I must be 1..N, shards are counted from 1 (1/{max(n, 1)} ... "
                         f"{max(n, 1)}/{max(n, 1)}), got I={i}, N={n}")
    return i, n


def shard_name(i: int, n: int) -> str:
    return f"{i}-of-{n}"


def shard_folder(out: str | Path, i: int, n: int) -> Path:
    return Path(out) / SHARDS_DIR / shard_name(i, n)


def refuse_under_torchrun(shard: Any, merge: bool, under_torchrun: bool) -> None:
    """Raise ``ValueError`` where ``--shard`` or ``--merge`` is given to a job of several torchrun
    processes. Every rank checks this before it joins the process group, so that each one stops
    with this message instead of waiting for (or losing) a peer that stopped."""
    if shard is not None and under_torchrun:
        raise ValueError("--shard and torchrun exclude each other: under torchrun the processes share the work "
                         "themselves; --shard I/N is for jobs started without torchrun (e.g. an array job)")
    if merge and under_torchrun:
        raise ValueError("--merge runs in one process, not under torchrun")


def check_split(shard: Any, dist: DistInfo | None, *, merge: bool, overwrite: bool) -> tuple[int, int] | None:
    """Check ``shard`` (None or I/N), the torchrun job ``dist`` and ``merge`` together; returns (I, N) or None."""
    share = parse_shard(shard) if shard is not None else None
    refuse_under_torchrun(share, merge, dist is not None and dist.world_size > 1)
    if merge and share is not None:
        raise ValueError("--merge and --shard exclude each other: run the shards with --shard I/N, then once --merge")
    if merge and overwrite:
        raise ValueError("--merge and --overwrite exclude each other (--overwrite would clear the shards)")
    return share


def balance(costs: Sequence[float], n: int) -> list[list[int]]:
    """Indices of ``costs`` split into ``n`` shares: longest first (ties: lower index first), each to
    the share with the least total so far (ties: the lower share). Deterministic."""
    heap = [(0.0, k) for k in range(n)]
    shares: list[list[int]] = [[] for _ in range(n)]
    for j in sorted(range(len(costs)), key=lambda j: (-float(costs[j]), j)):
        load, k = heapq.heappop(heap)
        shares[k].append(j)
        heapq.heappush(heap, (load + float(costs[j]), k))
    return [sorted(s) for s in shares]


def find_shards(out: str | Path) -> list[tuple[int, int, Path]]:
    """The shard folders ``I-of-N`` under ``OUT/shards``, sorted by N then I."""
    root = Path(out) / SHARDS_DIR
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _NAME.fullmatch(p.name)
            if m is not None and p.is_dir():
                found.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(found, key=lambda t: (t[1], t[0]))


def check_shard_set(found: Sequence[tuple[int, int, Path]], out: str | Path, *, hint: str = "") -> int:
    """All N shards of one split are present; returns N. The errors name what is missing."""
    root = Path(out) / SHARDS_DIR
    if not found:
        raise ValueError(f"nothing to merge: no shard folder (I-of-N) in {root}; run the shards with --shard I/N "
                         "first" + (" (or were they merged already?)" if (Path(out) / RESULTS_FILE).is_file() else ""))
    counts = sorted({n for _, n, _ in found})
    if len(counts) > 1:
        raise ValueError(f"cannot merge: {root} holds shards of different splits "
                         f"({', '.join(shard_name(i, n) for i, n, _ in found)}); remove the folders of the old one")
    n = counts[0]
    have = {i for i, _, _ in found}
    missing = [i for i in range(1, n + 1) if i not in have]
    if missing:
        names = ", ".join(f"{i}/{n} ({root / shard_name(i, n)})" for i in missing)
        raise ValueError(f"cannot merge: shard(s) {names} missing; run them with --shard I/N (or wait for them to "
                         f"finish){hint}")
    return n


def shard_template(found: Sequence[tuple[int, int, Path]], experiment: str, key_fields: Sequence[str],
                   score_keys: Sequence[str] = SCORE_KEYS) -> dict[str, Any]:
    """The ``config`` of the first shard (without its share): the settings a merge starts from
    (``score_keys``: the score fields its records hold)."""
    i, n, path = found[0]
    store = ResultsFolder(path, experiment=experiment, resume=True, overwrite=False, key_fields=key_fields,
                          score_keys=score_keys)
    doc = _read(path, experiment, key_fields, shard_name(i, n), store)
    return {k: v for k, v in doc["config"].items() if k != "shard"}


def _read(path: Path, experiment: str, key_fields: Sequence[str], name: str,
          store: ResultsFolder | None = None) -> dict[str, Any]:
    store = store or ResultsFolder(path, experiment=experiment, resume=True, overwrite=False, key_fields=key_fields)
    try:
        doc = store.check()
    except FileNotFoundError:
        raise ValueError(f"shard {name} ({path}) holds no {RESULTS_FILE} (it never started?); run it again") from None
    except ValueError as exc:
        raise ValueError(f"shard {name}: {str(exc).replace('cannot resume: ', '')}") from None
    assert doc is not None
    if not isinstance(doc.get("config"), dict) or "shard" not in doc["config"]:
        raise ValueError(f"{path / RESULTS_FILE} is not the results of a shard (no config['shard'])")
    return doc


def _differences(a: dict[str, Any], b: dict[str, Any], skip: Sequence[str]) -> list[str]:
    keys = sorted((set(a) | set(b)) - set(skip))
    return [f"{k}: {json.dumps(a.get(k))[:60]} vs {json.dumps(b.get(k))[:60]}" for k in keys if a.get(k) != b.get(k)]


def _check_shard(doc: dict[str, Any], path: Path, name: str, *, dataset: Any, config: dict[str, Any],
                 target: Path, complete: bool) -> None:
    """A shard may join the run of ``config`` in ``target``: same settings, complete if asked, no
    record the run does not expect, no model folder already there."""
    cfg = doc["config"]
    diff = _differences(cfg, config, _NOT_SETTINGS + ("methods", dataset.unit))
    if diff:
        raise ValueError(f"cannot merge shard {name}: it was run with other settings than {target} "
                         f"({'; '.join(diff[:3])}); merge only the shards of one run")
    share = cfg["shard"]
    keys = {record_key(r, dataset.key_fields) for r in doc["records"]}
    todo = expected_keys(cfg, dataset.unit) - keys
    unfinished = [m for m in share.get("models", []) if not (path / MODELS_DIR / m / MODEL_FILE).is_file()]
    if complete and (todo or unfinished):
        what = f"{len(todo)} of its {len(share['records'])} record(s)" if todo else f"model(s) {unfinished}"
        raise ValueError(f"cannot merge: shard {name} ({path}) is incomplete ({what} missing); rerun it with "
                         f"--shard {share['index']}/{share['count']} --resume")
    extra = sorted(keys - expected_keys({k: v for k, v in config.items() if k != "shard"}, dataset.unit))
    if extra:
        raise ValueError(f"cannot merge shard {name}: it holds records this run does not include, e.g. {extra[0]}; "
                         "give the same --methods and cases as the shards")
    for m in share.get("models", []):
        if (path / MODELS_DIR / m).is_dir() and (target / MODELS_DIR / m).exists():
            raise ValueError(f"cannot merge shard {name}: {target / MODELS_DIR / m} exists already; "
                             f"remove one of it and {path / MODELS_DIR / m}")


class Taken:
    """Shards checked against a run and locked (:func:`check_shards`), ready for :func:`absorb`."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Path, dict[str, Any]]] = []
        self.stores: list[ResultsFolder] = []

    def close(self) -> None:
        for s in self.stores:
            s.close()
        self.stores = []


def check_shards(found: Sequence[tuple[int, int, Path]], *, experiment: str, dataset: Any, config: dict[str, Any],
                 target: Path, complete: bool, method_settings: dict[str, Any] | None = None) -> Taken:
    """Read, lock and check every shard of ``found`` for the run of ``config`` in ``target`` (before
    anything is written). ``complete``: every shard must hold its whole share; ``method_settings``:
    the resolved settings of the run's records so far (each shard's must agree with them and with
    the other shards')."""
    taken = Taken()
    seen = {m: (s, str(target)) for m, s in (method_settings or {}).items()}
    try:
        for i, n, path in found:
            name = shard_name(i, n)
            store = ResultsFolder(path, experiment=experiment, resume=True, overwrite=False,
                                  key_fields=dataset.key_fields, score_keys=dataset.scoring.record_keys)
            doc = _read(path, experiment, dataset.key_fields, name, store)
            store.lock()
            taken.stores.append(store)
            _check_shard(doc, path, name, dataset=dataset, config=config, target=target, complete=complete)
            for m, s in doc.get("method_settings", {}).items():
                prev, where = seen.setdefault(m, (s, f"shard {name}"))
                if prev != s:
                    changed = sorted(k for k in set(prev) | set(s) if prev.get(k) != s.get(k))
                    raise ValueError(f"cannot merge shard {name}: {m}'s resolved settings differ from those of "
                                     f"{where} ({', '.join(changed[:4])}); another deepgmm version or defaults?")
            taken.items.append((name, path, doc))
    except BaseException:
        taken.close()
        raise
    return taken


def _move_files(src: Path, dst: Path) -> None:
    """Move the predictions, figures and model folders of a shard into the run's folder (renames)."""
    for sub in _MOVED:
        if (src / sub).is_dir():
            (dst / sub).mkdir(exist_ok=True)
            for f in (src / sub).iterdir():
                os.replace(f, dst / sub / f.name)
    if (src / MODELS_DIR).is_dir():
        (dst / MODELS_DIR).mkdir(exist_ok=True)
        for d in (src / MODELS_DIR).iterdir():
            os.replace(d, dst / MODELS_DIR / d.name)


def _remove(out: Path, paths: Sequence[Path]) -> None:
    """Remove merged shard folders: all of ``OUT/shards`` in one rename when it holds nothing else."""
    root = out / SHARDS_DIR
    trash = out / f".{SHARDS_DIR}-merged"
    if trash.exists():
        shutil.rmtree(trash)
    if {p.name for p in root.iterdir()} == {p.name for p in paths}:
        os.replace(root, trash)
    else:
        trash.mkdir()
        for p in paths:
            os.replace(p, trash / p.name)
    shutil.rmtree(trash)


def absorb(run: Run, taken: Taken, *, keep_runs: bool) -> int:
    """Take the checked shards into ``run`` (its store started and locked): move their files, add
    their records (and training summaries), then remove them; ``keep_runs``: list the shards' runs
    in ``runs``. Returns the number of records taken in."""
    try:
        added = 0
        for name, path, doc in taken.items:
            _move_files(path, run.store.path)
            run.add(doc["records"], doc.get("method_settings", {}))
            added += len(doc["records"])
            if doc.get("training"):
                run.doc.setdefault("training", {}).update(doc["training"])
            if keep_runs:
                run.doc["runs"][-1:-1] = [{**r, "shard": name} for r in doc.get("runs", [])]
            logger.info("merged shard %s: %d record(s)", name, len(doc["records"]))
        run.store.save()
        if taken.items:
            _remove(run.store.path, [p for _, p, _ in taken.items])
        return added
    finally:
        taken.close()


def take_in(run: Run, found: Sequence[tuple[int, int, Path]], *, complete: bool, keep_runs: bool) -> int:
    """:func:`check_shards` against ``run``, then :func:`absorb`."""
    taken = check_shards(found, experiment=run.store.experiment, dataset=run.dataset, config=run.doc["config"],
                         target=run.store.path, complete=complete, method_settings=run.doc.get("method_settings"))
    return absorb(run, taken, keep_runs=keep_runs)


_ERRORS = {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError, "OSError": OSError}


def send_plan(dist: DistInfo, error: BaseException | None, plan: Any) -> None:
    """Rank 0 of a torchrun job: hand every rank the plan of the run (picklable), or the one-line
    error (ValueError, OSError) that stops it."""
    kind = None if error is None else next(k for k, t in _ERRORS.items() if isinstance(error, t))
    broadcast_object((None if error is None else (kind, str(error)), plan), dist)


def receive_plan(dist: DistInfo) -> Any:
    """The other ranks: rank 0's plan, or its error raised here too."""
    error, plan = broadcast_object(None, dist)
    if error is not None:
        raise _ERRORS[error[0]](error[1])
    return plan


def gather(obj: Any, dist: DistInfo) -> list[Any]:
    """``obj`` of every rank (picklable), in rank order, on every rank; a barrier too."""
    return [broadcast_object(obj if dist.rank == r else None, dist, src=r) for r in range(dist.world_size)]
