"""One writer per destination: a lock beside DST, held from a job's start to its end.

Two ``protect`` runs into one DST would replace each other's finished output (the datasets
path) or mix two configs in one dataset (the shard path). So every job takes an exclusive
``flock`` on ``.DST.udp-lock`` beside DST (beside, not inside: the datasets path creates DST
only by its final rename) before it reads or writes anything there, and a second live run is
refused with :class:`DestinationBusyError` naming the holder. The kernel drops a ``flock`` when
its process dies, so the lock file a crashed or killed run leaves is free: the next run takes it
over (and says so), as it removes that run's temporaries. The file is removed when the job ends;
a run that opened it just before is made to retry on the new file (same inode check), so no two
runs ever hold locks on two different files for one DST.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from .atomic import OutputExistsError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".udp-lock"


class DestinationBusyError(OutputExistsError):
    """Another live run holds the destination's lock (exit 2 on the command line)."""


def lock_path(dst: str | os.PathLike) -> Path:
    """``.NAME.udp-lock`` beside ``dst`` (hidden, so globs and ``datasets`` do not see it), symbolic
    links resolved: two spellings of one destination share one lock."""
    dst = Path(dst).expanduser().resolve()
    return dst.with_name(f".{dst.name}{LOCK_SUFFIX}")


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}"
    except (OSError, ValueError, AttributeError):
        return "a process that has not written its name yet"


@contextlib.contextmanager
def destination_lock(dst: str | os.PathLike) -> Iterator[Path]:
    """Hold DST's lock for the ``with`` block; :class:`DestinationBusyError` if another run holds it."""
    path = lock_path(dst)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DestinationBusyError(
                f"{dst} is being written by another protect run ({holder}; lock {path}); wait for it to end, "
                "or choose another destination") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by the run that held it: lock the new one
    try:
        stale = os.pread(fd, 4096, 0)
        if stale:
            logger.info("taking over the lock %s left by a run that ended (%s)", path, _holder(fd))
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
