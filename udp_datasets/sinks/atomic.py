"""Temp-then-rename: the one way anything in udp-datasets puts a file or folder under its final name.

Why: a job can be killed at any moment (SIGKILL, a lost node, a full disk), and readers
(``datasets``, ``verify``, a resumed shard job) trust whatever carries a final name. So every
writer fills a hidden temporary sibling, fsyncs it, and only then renames it over the final
name (``os.replace`` is atomic on POSIX) and fsyncs the folder, so the rename survives a power
cut too. A crash leaves either the old state or the complete new one, plus at most a
temporary that :func:`is_temp_name` recognises and a re-run removes.

One naming rule for every temporary (``.NAME.tmp-PID-RANDOM``), one fsync, one cleanup:
:func:`atomic_file` for files (shards, markers, manifests) and :func:`atomic_directory` for
whole output folders (the dataset job's DST, a fitted surrogate).

A run killed while it fills a temporary folder (SIGKILL, a lost node) leaves it behind. The
next :func:`atomic_directory` for the same destination removes such leftovers, safely: only
names of this rule for that destination, and only those no live run holds. A run holds its
temporary folder with an exclusive ``flock`` on it for as long as it works in it; the kernel
drops the lock when the process dies however it dies, so a folder whose lock can be taken
is abandoned (where the file system has no locks, nothing is removed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

TEMP_TAG = ".tmp-"
logger = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    """The destination exists and overwriting was not asked for."""


class OutputWriteError(OSError):
    """The output could not be written (a full disk, no permission, a read-only file system); the
    message is one line naming the path, and the destination was left as it was."""

    @classmethod
    def from_error(cls, exc: OSError, destination: str | os.PathLike) -> "OutputWriteError":
        where = exc.filename or destination
        reason = (exc.strerror or str(exc) or type(exc).__name__) + (f" (errno {exc.errno})" if exc.errno else "")
        return cls(exc.errno, f"cannot write {where}: {reason}; {destination} was left as it was: free space "
                              "or fix the permission, then run the command again")

    def __str__(self) -> str:
        return str(self.strerror)


def is_temp_name(name: str) -> bool:
    """Whether a file or folder name is one of our temporaries (hidden and tagged)."""
    return name.startswith(".") and TEMP_TAG in name


def temp_sibling(final: Path) -> Path:
    """A fresh hidden name next to ``final``, unique per process and call (nothing is created)."""
    return final.with_name(f".{final.name}{TEMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_path(path: Path) -> None:
    """Remove a temporary, file or folder, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file below ``root``, then ``root`` itself."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fsync_path(path)
    fsync_path(root)


@contextlib.contextmanager
def _renamed_into_place(final: Path, tmp: Path) -> Iterator[Path]:
    """Yield ``tmp``; on success fsync it and rename it over ``final``; on failure remove it."""
    try:
        yield tmp
        if tmp.is_dir():
            fsync_tree(tmp)
        else:
            fsync_path(tmp)
        if tmp.is_dir() and final.exists():  # a folder cannot be renamed over a non-empty one
            old = temp_sibling(final)
            os.replace(final, old)
            os.replace(tmp, final)
            remove_path(old)
        else:
            os.replace(tmp, final)
        fsync_path(final.parent)
    except BaseException:
        remove_path(tmp)
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; fsync and rename it into place on success.

    On any exception the temporary file is removed and ``final`` is untouched. A body that
    writes nothing still produces a (empty) file: an empty result is a result.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    with _renamed_into_place(final, tmp):
        yield tmp
        if not tmp.exists():
            tmp.touch()


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; rename it to ``final`` on success.

    On any exception the temporary folder is removed and ``final`` is untouched. An existing
    ``final`` is refused (:class:`OutputExistsError`) unless ``overwrite``; then it is
    replaced only once the new folder is complete.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} already exists; choose another destination or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    with contextlib.ExitStack() as stack:
        lock = _hold(tmp)  # held until the folder has its final name (or is removed)
        if lock is not None:
            stack.callback(os.close, lock)
        stack.enter_context(_renamed_into_place(final, tmp))
        remove_stale_temporaries(final)
        yield tmp


def _hold(folder: Path) -> int | None:
    """An exclusive ``flock`` on ``folder`` for as long as the returned descriptor is open."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:  # no locks on this file system: nothing to clean up safely either
        os.close(fd)
        return None


def remove_stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders of ``final`` that earlier, dead runs left (see the module
    docstring): names ``.FINAL.tmp-PID-RANDOM`` only, and only folders no live run holds locked."""
    final = Path(final)
    pattern = re.compile(re.escape(f".{final.name}{TEMP_TAG}") + r"\d+-[0-9a-f]{8}")
    removed = []
    for path in final.parent.iterdir() if final.parent.is_dir() else ():
        if not pattern.fullmatch(path.name) or not path.is_dir() or path.is_symlink():
            continue
        fd = _hold(path)
        if fd is None:  # held by a live run (or no locks here): leave it
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d temporary folder(s) of %s left by an interrupted run", len(removed), final)
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Sorted, indented, UTF-8 JSON (the shard job's markers and summary)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode())
