"""Overlap reading and writing with protection, in bounded memory.

Why: protecting a chunk is the slow step (PGD on the surrogate); reading and grouping the next
tar samples or Parquet rows, and writing the last chunk, would otherwise wait for it.
:class:`ReadAhead` reads up to ``depth`` chunks ahead and :class:`WriteBehind` writes finished
chunks in order behind the protector. Each runs on a one-thread
``concurrent.futures.ThreadPoolExecutor`` (one thread: calls never overlap and run in the order
they were submitted) with at most ``depth`` calls outstanding, so only a few chunks are in
memory whatever the shard's size; an error on either thread is re-raised in the job's thread,
and :meth:`ReadAhead.close` / :meth:`WriteBehind.close` stop early without running what is
still queued.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

_END = object()  # what the reader's thread returns once the iterable is exhausted


class ReadAhead:
    """Iterate ``iterable`` on a worker thread, up to ``depth`` items ahead of the consumer.

    Items come out in order; an exception raised by the iterable is re-raised by the
    consumer's ``for`` loop at the point it would have been reached.
    """

    def __init__(self, iterable: Iterable[Any], depth: int):
        self._items = iter(iterable)
        self._depth = max(depth, 1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="udp-read")
        self._ahead: deque[Future] = deque()
        self._exhausted = False
        self._fill()

    def _next(self) -> Any:
        try:
            return next(self._items)
        except StopIteration:
            return _END

    def _fill(self) -> None:
        while not self._exhausted and len(self._ahead) < self._depth:
            self._ahead.append(self._pool.submit(self._next))

    def __iter__(self) -> Iterator[Any]:
        while self._ahead:
            item = self._ahead.popleft().result()  # the iterable's exception, if any, is raised here
            if item is _END:
                self._exhausted = True
                return
            self._fill()
            yield item

    def close(self) -> None:
        """Stop reading: queued reads are cancelled, a running one is waited for, and the
        iterable is closed (a generator's ``finally`` blocks run, its files are closed)."""
        self._exhausted = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead.clear()
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class WriteBehind:
    """Call ``fn(*args)`` on a worker thread, in the order of :meth:`put`, with at most
    ``depth`` calls queued behind the running one.

    After a call fails, later calls are skipped (nothing more is written to a broken output)
    and the first error is re-raised by the next :meth:`put` or by :meth:`finish`.
    """

    def __init__(self, fn: Callable[..., None], depth: int):
        self._fn = fn
        self._depth = max(depth, 1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="udp-write")
        self._pending: deque[Future] = deque()
        self._failed = False

    def _call(self, args: tuple[Any, ...]) -> None:
        if self._failed:
            return
        try:
            self._fn(*args)
        except BaseException:
            self._failed = True
            raise

    def _collect(self, wait: bool) -> None:
        """Take finished calls off the queue (all of them with ``wait``), raising the first error."""
        while self._pending and (wait or self._pending[0].done()):
            self._pending.popleft().result()

    def put(self, *args: Any) -> None:
        self._collect(wait=False)
        while len(self._pending) > self._depth:  # bounded: wait for the oldest call
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._call, args))

    def finish(self) -> None:
        """Wait for every queued call; raise the first error."""
        try:
            self._collect(wait=True)
        finally:
            self._pool.shutdown(wait=True)

    def close(self) -> None:
        """Stop early: queued calls are dropped, a running one is waited for; errors are not raised."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
