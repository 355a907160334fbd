"""The few collective steps of a multi-process shard job, on accelerate's ``PartialState``.

Why here and so small: rank, world size, device and barriers come from accelerate (which
``accelerate launch``, torchrun and Slurm through accelerate's launcher all set up); the shard
job adds only what accelerate lacks: a CPU-aware state with a barrier timeout long enough for
the slowest rank's shards, and "compute on the main process, give everyone the result" that
cannot leave a rank waiting forever when the main process fails.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Callable

logger = logging.getLogger(__name__)

BARRIER_TIMEOUT_ENV = "UDP_DATASETS_BARRIER_TIMEOUT"


def make_state() -> Any:
    """``accelerate.PartialState`` for this process (CPU-aware, long barrier timeout).

    On a machine without CUDA, ``PartialState()`` ignores the process group that
    ``accelerate launch --multi_gpu`` / torchrun set up, so ``cpu=True`` is passed
    there. Barriers wait for the slowest rank's shards: the timeout is 7 days
    (``UDP_DATASETS_BARRIER_TIMEOUT`` seconds to change it).
    """
    import datetime

    import torch
    from accelerate import PartialState

    seconds = float(os.environ.get(BARRIER_TIMEOUT_ENV, 7 * 24 * 3600))
    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(seconds=seconds))


def main_then_broadcast(state: Any, compute: Callable[[], Any], what: str) -> Any:
    """Run ``compute`` on the main process only and give every rank its result.

    An exception on the main process is sent instead and re-raised on every rank, so no
    rank waits forever at the next collective.
    """
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if state.is_main_process:
        try:
            box[0] = ("ok", compute())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            logger.debug("%s failed", what, exc_info=True)
            box[0] = ("error", _portable_error(exc))
    broadcast_object_list(box)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def _portable_error(exc: Exception) -> Exception:
    """An exception that survives pickling to the other ranks with its message."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")
