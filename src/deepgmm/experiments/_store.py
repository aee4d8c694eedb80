"""The output folder of a table command, which is also its working folder.

A table run takes minutes to hours, so it must lose nothing when it is interrupted. Its
output folder is therefore written in place (not staged and renamed at the end like
:class:`deepgmm.io.OutputDir`): every file in it is written atomically (temporary file, fsync,
rename), ``results.json`` is rewritten after every slice with all records so far, and the
summary, ``table.md`` and the overview figure are rewritten at the end (also after an
interruption). So at every instant ``results.json`` is a complete, valid document.

Rules for the folder (checked by :meth:`ResultsFolder.check`, before any work):

* a new (or empty) folder is created; it gets the marker file :data:`deepgmm.io.MARKER`;
* an existing non-empty folder needs ``resume`` (continue the run stored in it) or
  ``overwrite`` (start again; only a folder carrying the marker is cleared);
* one run at a time: a lock (``fcntl.flock`` on ``.lock``) refuses a second run on the folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..io import MARKER, save_json

logger = logging.getLogger(__name__)

__all__ = ["RESULTS_FILE", "TABLE_FILE", "FIGURES_DIR", "PREDICTIONS_DIR", "OVERVIEW_FILE", "FORMAT_VERSION",
           "SHARDS_DIR", "ResultsFolder", "record_key", "plain", "KEY_FIELDS"]

RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
FIGURES_DIR = "figures"
PREDICTIONS_DIR = "predictions"
OVERVIEW_FILE = "overview.png"
LOCK_FILE = ".lock"
SHARDS_DIR = "shards"
"""Sub-folder of the shards of a run split over processes or batch jobs (see :mod:`._shards`)."""
FORMAT_VERSION = 1
"""Version of the ``results.json`` layout."""

KEY_FIELDS = ("case", "slice")
"""The record fields that name a case by default (MyoPS: patient and slice)."""
RECORD_KEYS = ("method", "nll", "seconds", "iterations")
SCORE_KEYS = ("dice", "mean_dice", "matching")
"""The score fields of a record by default (Dice; a data set's scoring may name others)."""


def record_key(record: Mapping[str, Any], key_fields: Sequence[str] = KEY_FIELDS) -> tuple[Any, ...]:
    """``(method, *case key)``, e.g. ``(method, case, slice)``: what identifies a record."""
    return (str(record["method"]),) + tuple(int(record[k]) for k in key_fields)


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON values (numpy scalars/arrays, tuples and paths converted; other
    objects by their ``repr``), so that settings compare equal after a round trip through JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


class ResultsFolder:
    """The working output folder of one experiment (e.g. ``"myops-table1"``); its records are
    identified by ``method`` and the ``key_fields`` (integers) of their case; each holds the
    ``score_keys`` (checked on resume)."""

    def __init__(self, path: str | Path, *, experiment: str, resume: bool, overwrite: bool,
                 key_fields: Sequence[str] = KEY_FIELDS, shards_only_is_new: bool = False,
                 score_keys: Sequence[str] = SCORE_KEYS) -> None:
        self.path = Path(path)
        self.shards_only_is_new = bool(shards_only_is_new)  # a folder holding only shards/ counts as new
        self.experiment = experiment
        self.key_fields = tuple(key_fields)
        self.score_keys = tuple(score_keys)
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self.stored: dict[str, Any] | None = None
        self.doc: dict[str, Any] = {}
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ checks (no writes)
    def check(self) -> dict[str, Any] | None:
        """Validate the folder against ``resume``/``overwrite``; return the stored document on resume."""
        p = self.path
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if p.name in ("", ".", ".."):
            raise ValueError(f"output folder {str(p)!r} must name a folder, not {p.name or '/'!r}")
        exists = os.path.lexists(p)
        if exists and (p.is_symlink() or not p.is_dir()):
            raise ValueError(f"output path {p} exists and is not a folder")
        if self.resume:
            results = p / RESULTS_FILE
            if not results.is_file():
                raise FileNotFoundError(f"cannot resume: no {RESULTS_FILE} in {p}")
            self.stored = self._read(results)
            return self.stored
        ignored = (LOCK_FILE, SHARDS_DIR) if self.shards_only_is_new else (LOCK_FILE,)
        if exists and any(e.name not in ignored for e in p.iterdir()):
            if not self.overwrite:
                raise ValueError(f"output folder {p} already exists; pass --resume to continue its run or "
                                 "--overwrite to start again")
            if not (p / MARKER).is_file():
                raise ValueError(f"refusing to overwrite {p}: it is not empty and was not written by deepgmm "
                                 f"(no {MARKER} file); remove it yourself or choose another folder")
        return None

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot resume: {path} is not valid JSON ({' '.join(str(exc).split())})") from None
        if not isinstance(doc, dict) or doc.get("experiment") != self.experiment:
            found = doc.get("experiment") if isinstance(doc, dict) else None
            raise ValueError(f"cannot resume: {path} holds the results of {found!r}, not {self.experiment!r}")
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"cannot resume: {path} has results format version {doc.get('format_version')!r}; "
                             f"this deepgmm reads version {FORMAT_VERSION}")
        records = doc.get("records")
        if not isinstance(records, list):
            raise ValueError(f"cannot resume: {path} has no list of records")
        seen = set()
        for i, r in enumerate(records):
            needed = RECORD_KEYS[:1] + self.key_fields + self.score_keys + RECORD_KEYS[1:]
            if not isinstance(r, dict) or any(k not in r for k in needed):
                raise ValueError(f"cannot resume: record {i} of {path} lacks some of the keys {list(needed)}")
            key = record_key(r, self.key_fields)
            if key in seen:
                raise ValueError(f"cannot resume: {path} holds two records for {key}")
            seen.add(key)
        return doc

    # ------------------------------------------------------------------ lifetime
    def start(self, doc: dict[str, Any]) -> None:
        """Create (or clear, on overwrite) the folder, take its lock and write the first ``results.json``."""
        p = self.path
        p.mkdir(parents=True, exist_ok=True)
        self._lock()
        if not self.resume and self.overwrite:
            for entry in p.iterdir():
                if entry.name == LOCK_FILE or (self.shards_only_is_new and entry.name == SHARDS_DIR):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            logger.info("cleared %s (--overwrite)", p)
        (p / MARKER).write_text("written by deepgmm\n", encoding="utf-8")
        self.doc = doc
        self.save()

    def lock(self) -> None:
        """Take the folder's lock without writing anything (e.g. to read a shard and merge it)."""
        self._lock()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(f"output folder {self.path} is in use by another deepgmm run; wait for it to finish") \
                from None
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the lock file is removed)."""
        if self._lock_fd is not None:
            try:
                os.unlink(self.path / LOCK_FILE)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ records
    @property
    def records(self) -> list[dict[str, Any]]:
        return self.doc["records"]

    def keys(self) -> set[tuple[Any, ...]]:
        return {record_key(r, self.key_fields) for r in self.records}

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (replacing any of the same key); :meth:`save` writes them."""
        new = {record_key(r, self.key_fields): r for r in records}
        self.doc["records"] = [r for r in self.records if record_key(r, self.key_fields) not in new] + list(new.values())

    def save(self) -> None:
        save_json(self.path / RESULTS_FILE, self.doc)

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)


def sort_records(records: Sequence[dict[str, Any]], methods: Sequence[str],
                 key_fields: Sequence[str] = KEY_FIELDS) -> list[dict[str, Any]]:
    """Records by method (in the order of ``methods``, others after), then by their case key."""
    order = {m: i for i, m in enumerate(methods)}
    return sorted(records, key=lambda r: (order.get(r["method"], len(order)), r["method"])
                  + tuple(r[k] for k in key_fields))
