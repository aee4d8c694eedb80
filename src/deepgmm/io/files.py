"""The crash-safe file layer: atomic file writes and whole output folders.

Every writer is atomic: the file is written under a temporary name in the target's folder,
flushed to disk and renamed over the target, so a crash never leaves a half-written file
under the final name. :class:`OutputDir` does the same for a whole output folder.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import io as _io
import json
import logging
import math
import os
import secrets
import shutil
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Sequence, Union

import numpy as np

from .._signals import signals_deferred

__all__ = ["split_ext", "one_line", "atomic_write", "atomic_write_bytes", "atomic_write_csv", "save_json", "OutputDir", "MARKER"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def split_ext(path: Path) -> tuple[str, str]:
    """``("labels", ".nii.gz")`` for ``labels.nii.gz``; the extension keeps its case."""
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")], name[-len(".nii.gz"):]
    suffix = path.suffix
    return (name[: -len(suffix)] if suffix else name), suffix


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames) to disk where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path`` then rename it to ``path``.

    The temporary name keeps the extension (nibabel chooses the format from it).
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {target}: folder {folder} does not exist")
    base, ext = split_ext(target)
    tmp = folder / f".{base}.{secrets.token_hex(6)}.tmp{ext}"
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    return target


def atomic_write_bytes(path: PathLike, data: bytes | Callable[[Any], None]) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file object) to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)

    return atomic_write(path, write)


def atomic_write_csv(path: PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as CSV (UTF-8) to ``path`` atomically; the columns are the union of the rows'
    keys in order of first appearance, a missing or None value is an empty cell."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy values, paths and tuples made JSON-ready and NaN/Inf replaced by None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise ValueError(f"cannot write a value of type {type(obj).__name__} to JSON: {obj!r}")


def save_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically; NaN and Inf become ``null``."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, write)


# ----------------------------------------------------------------------------- output folder
MARKER = ".deepgmm-output"

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the OS or filesystem cannot do it (the caller then falls back to
    renaming the old folder aside); other failures raise ``OSError``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {b} with its new version: {os.strerror(err)}")


class OutputDir:
    """Write a whole output folder all at once, or not at all.

    ``with OutputDir(path, overwrite=...) as d:`` yields a hidden staging folder beside ``path``
    (same filesystem); write the files into ``d``. On a normal exit the staging folder is moved
    to ``path``; on any exception (KeyboardInterrupt included) it is removed and ``path`` is
    left as it was. With ``overwrite=True`` an existing ``path`` is replaced so that a partial
    folder never appears under the name: on Linux the two folders are swapped atomically
    (``renameat2(RENAME_EXCHANGE)``), so the complete old or the complete new folder exists
    at every instant; elsewhere the old folder is renamed aside, the new one renamed in (a
    moment without either name), then the old one deleted.

    A hidden marker file :data:`MARKER` is written into each output folder. To protect
    unrelated data, only an empty folder or one carrying the marker may be overwritten.
    Missing parent folders are created (and removed again on failure).
    """

    def __init__(self, path: PathLike, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self.staging: Path | None = None
        self._created: list[Path] = []

    def check(self) -> None:
        """Raise the errors :meth:`__enter__` would raise for the target, without creating anything."""
        target = self.path
        if target.name in ("", ".", ".."):
            raise ValueError(f"output folder {str(target)!r} must name a new folder, not {target.name or '/'!r}")
        if os.path.lexists(target):
            if target.is_symlink():  # replacing it would swap the link itself, not the folder it points to
                raise ValueError(f"output path {target} is a symbolic link (to {os.readlink(target)}); "
                                 "give a real folder, not a link")
            if not target.is_dir():
                raise ValueError(f"output path {target} exists and is not a folder")
            if not self.overwrite:
                raise ValueError(f"output folder {target} already exists; pass --overwrite to replace it")
            if any(target.iterdir()) and not (target / MARKER).is_file():
                raise ValueError(
                    f"refusing to replace output folder {target}: it is not empty and was not written by deepgmm "
                    f"(no {MARKER} file); remove it yourself or choose another folder"
                )
        parent = self._existing_ancestor()
        if not parent.is_dir():
            raise ValueError(f"cannot create output folder {target}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot create output folder {target}: folder {parent} is not writable")

    def _existing_ancestor(self) -> Path:
        parent = self.path.absolute().parent
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        return parent

    def __enter__(self) -> Path:
        self.check()
        try:  # a failure or a Ctrl-C here leaves nothing: __exit__ is not called when __enter__ raises
            with signals_deferred():  # nor between creating a folder and recording it for the clean-up
                self._create()
        except BaseException:
            self._cleanup()
            raise
        assert self.staging is not None
        return self.staging

    def _create(self) -> None:
        """Create the missing parents and the staging folder with its marker (recorded for :meth:`_cleanup`)."""
        parent = self.path.absolute().parent
        missing = []
        p = parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append(folder)
        while True:
            staging = parent / f".{self.path.name}.staging-{secrets.token_hex(4)}"
            try:
                staging.mkdir()
                break
            except FileExistsError:  # pragma: no cover - 32 random bits collided
                continue
        self.staging = staging
        (staging / MARKER).write_text("written by deepgmm\n", encoding="utf-8")

    def _cleanup(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        for folder in reversed(self._created):  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def _commit(self) -> None:
        with signals_deferred():  # a Ctrl-C arrives after the swap and the deletion of the old folder
            self._swap_in()

    def _swap_in(self) -> None:
        assert self.staging is not None
        target = self.path
        parent = target.absolute().parent
        if os.path.lexists(target):
            if not self.overwrite:
                raise ValueError(f"output folder {target} already exists; pass --overwrite to replace it")
            if _exchange(self.staging, target):  # the staging name now holds the old folder
                old, self.staging = self.staging, None
            else:
                old = parent / f".{target.name}.old-{secrets.token_hex(4)}"
                os.rename(target, old)
                try:
                    os.rename(self.staging, target)
                except BaseException:
                    os.rename(old, target)
                    raise
                self.staging = None
            _fsync_dir(parent)
            try:
                shutil.rmtree(old)
            except OSError as exc:
                logger.warning("could not delete the previous output folder moved to %s: %s", old, one_line(exc))
        else:
            os.rename(self.staging, target)
            self.staging = None
            _fsync_dir(parent)
        self._created = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is not None:
            self._cleanup()
            return False
        try:
            self._commit()
        except BaseException:
            self._cleanup()
            raise
        return False
