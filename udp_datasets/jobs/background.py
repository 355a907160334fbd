"""Overlap reading and writing with protection, in bounded memory.

Why: protecting a chunk is the slow step (PGD on the surrogate); reading and grouping the next
tar samples or Parquet rows, and encoding and writing the last chunk, would otherwise wait for
it. :class:`ReadAhead` reads ``depth`` chunks ahead and :class:`WriteBehind` writes finished
chunks in order behind the protector, each on its own thread; both queues are bounded, so at
most a few chunks are in memory whatever the shard's size, and an error on either thread is
re-raised in the job's thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator


class ReadAhead:
    """Run an iterator in a thread, ``depth`` items ahead; exceptions re-raise in the consumer."""

    _END = object()

    def __init__(self, iterable: Iterable[Any], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), daemon=True, name="udp-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterable: Iterable[Any]) -> None:
        try:
            for item in iterable:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class WriteBehind:
    """Call ``fn(*args)`` in order on a thread, ``depth`` calls queued at most."""

    _END = object()

    def __init__(self, fn: Callable[..., None], depth: int):
        self._fn = fn
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="udp-writer")
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if self._error is None:
                try:
                    self._fn(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in put()/finish()
                    self._error = exc

    def put(self, *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(args)

    def finish(self) -> None:
        self._queue.put(self._END)
        self._thread.join()
        if self._error is not None:
            raise self._error

