"""Writing files and folders so that a crash, a kill or a full disk never leaves a partial one under the final name.

A file is written to a temporary name in the same folder, flushed to disk (fsync) and renamed over the
target: the rename is atomic on one filesystem, so a reader sees the old file or the new one, never half
of one. A folder (a model package, a checkpoint) is built beside its target and swapped in when complete;
the old one is removed only after the swap. A run killed mid-way leaves its temporary name behind; the
next write to the same target removes it (or, for a swap killed between its two renames, puts the old
folder back) and says so.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bcaudio.errors import UserError

TEMP = ".bcaudio-tmp-"
OLD = ".bcaudio-old-"
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _temp_for(path: Path, mark: str = TEMP) -> Path:
    """``.NAME.bcaudio-tmp-PID.EXT``: hidden, owned by this process, and with the target's extension (writers such
    as soundfile pick the format from it)."""
    return path.with_name(f".{path.name}{mark}{os.getpid()}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier, failed attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(path: Path) -> Iterator[tuple[Path, str, int]]:
    """(entry, mark, pid) for each temporary or old copy of ``path`` that some run left in its folder."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return
    for mark in (TEMP, OLD):
        prefix = f".{path.name}{mark}"
        for entry in parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            digits = entry.name[len(prefix):].removesuffix(path.suffix) if path.suffix else entry.name[len(prefix):]
            if digits.isdigit():
                yield entry, mark, int(digits)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def clean_stale(path: Path, log: Log = _stderr) -> None:
    """Remove what interrupted runs left beside ``path``; restore an old folder whose replacement never arrived."""
    path = Path(path)
    for entry, mark, pid in list(_leftovers(path)):
        if _pid_alive(pid):
            log(f"note: {entry} belongs to a running bcaudio (pid {pid}); left alone")
            continue
        if mark == OLD and not path.exists():
            os.rename(entry, path)
            log(f"note: {path} restored from {entry.name}: an earlier run was stopped while replacing it")
            continue
        _remove(entry)
        if pid != os.getpid():
            log(f"note: removed {entry}, left by an interrupted run (pid {pid})")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _as_user_error(exc: BaseException, target: Path, kept: str) -> BaseException:
    """Disk full and permission errors become one line naming the target; other errors stay as they are."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{target}: disk full while writing it; {kept}. Free space and run again")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"{target}: cannot write ({exc.strerror}); {kept}. Choose a writable place")
    return exc


@contextmanager
def atomic_path(path: str | Path, log: Log = _stderr) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; it becomes ``path`` only when the block completes."""
    path = Path(path)
    clean_stale(path, log)
    tmp = _temp_for(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent if str(path.parent) else Path("."))
    except BaseException as exc:
        _remove(tmp)
        error = _as_user_error(exc, path, "the previous file, if any, is unchanged")
        if error is exc:
            raise
        raise error from None


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def append_line(path: str | Path, line: str) -> Path:
    """The file with one more line, swapped in whole: a kill mid-write never leaves half a line (files stay small:
    one line per turn)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    return write_bytes(path, old + line.rstrip("\n").encode("utf-8") + b"\n")


@contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False, what: str = "package",
                  log: Log = _stderr) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; when the block completes it replaces ``target``.

    An existing non-empty ``target`` needs ``overwrite``; it stays untouched until the new folder is complete
    (the caller verifies it inside the block), and is removed only after the swap.
    """
    target = Path(target)
    clean_stale(target, log)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; give a folder for the {what}")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise UserError(f"{target} exists: pass --overwrite to replace the {what} (the old one is kept until the new "
                        "one is complete), or choose a new folder")
    staging = _temp_for(target)
    staging.parent.mkdir(parents=True, exist_ok=True)  # a work folder's first package
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        old = None
        if target.exists():
            old = _temp_for(target, OLD)
            os.rename(target, old)
        os.rename(staging, target)
        _fsync(target.parent if str(target.parent) else Path("."))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"the previous {what} is unchanged" if target.exists() else f"no partial {what} was left"
        error = _as_user_error(exc, target, kept)
        if error is exc:
            raise
        raise error from None
