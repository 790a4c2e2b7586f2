"""Atomic file writes: a reader (or a crash) never sees half a file.

Each writer goes to a temporary file in the same folder, fsyncs, then
``os.replace``s it over the target, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path next to ``target``; move it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:  # name the file: a full disk says "problem writing element 39936 to file" in numpy
        if e.errno:
            raise OSError(e.errno, f"cannot write {target}: {e.strerror or e}") from e
        raise OSError(f"cannot write {target}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(folder: str | os.PathLike, error: type[Exception] = PermissionError) -> None:
    """Raise ``error`` now, not after hours of work, where ``folder`` (which may not exist yet: its
    nearest existing ancestor) cannot take a new file (callers pass their input error). Creates
    nothing that stays."""
    d = Path(folder).resolve()
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".shiftbench-probe-", dir=d)  # the real test: permissions, read-only mounts
    except OSError as e:  # (the message names the folder, not the probe file)
        raise error(f"cannot write to {folder}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


STALE_S = 3600  # a temporary folder this old is no run's work in progress: one killed (SIGKILL) left it


def remove_stale(folder: str | os.PathLike, prefix: str, older_than_s: float = STALE_S) -> None:
    """Remove the temporary folders ``folder/prefix*`` that a killed run left behind (an hour old:
    a run still writing one is seconds into it)."""
    now = time.time()
    for d in Path(folder).glob(f"{glob.escape(prefix)}*"):
        if not re.fullmatch(r"[a-z0-9_]{8}", d.name[len(prefix):]):  # tempfile.mkdtemp's names only
            continue
        try:
            if d.is_dir() and not d.is_symlink() and now - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


def write_with(target: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``target``."""
    with atomic_path(target) as tmp:
        writer(tmp)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_with(target, lambda p: Path(p).write_text(text, encoding="utf-8"))


def write_json(target: str | os.PathLike, obj) -> None:
    write_text(target, json_text(obj) + "\n")


def json_text(obj, indent: int | None = 2) -> str:
    """Strict JSON (what jq and other languages read): NaN and infinities become null."""
    return json.dumps(_finite(obj), indent=indent, default=to_jsonable, allow_nan=False)


def _finite(o):
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    return o


def save_npy(target: str | os.PathLike, array: np.ndarray) -> None:
    """np.save to ``target`` atomically."""
    def writer(p: str) -> None:
        with open(p, "wb") as f:
            np.save(f, array)
    write_with(target, writer)


def save_npz(target: str | os.PathLike, **arrays: np.ndarray) -> None:
    """np.savez to ``target`` atomically (arrays must load without pickle)."""
    def writer(p: str) -> None:
        with open(p, "wb") as f:
            np.savez(f, **arrays)
    write_with(target, writer)


def to_jsonable(o):
    """``json.dumps`` ``default`` for numpy scalars and arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
