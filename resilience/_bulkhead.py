"""A bounded bulkhead of threads for one blocking source: how sync sources get a cutoff.

A blocking call cannot be interrupted from Python: a thread cannot be killed, and asyncio
cancellation does not reach into a blocking call. So this is what a thread timeout does and does
not do:

- it **stops the caller waiting**: :meth:`Bulkhead.call` returns (raises ``TimeoutError``) on
  time, and an async caller's ``await asyncio.wrap_future(...)`` can be cancelled at its deadline;
- it **cannot stop the blocking call**: that runs on in its worker thread and keeps its slot until
  it returns by itself. A hung store therefore fills the bulkhead, after which every further call
  is refused at once with :class:`~resilience.BulkheadFull` (the ``rejected`` outcome), cheaply and
  without queueing, instead of piling up threads or waiting behind the hung ones.

The honest hard cutoff for a network store is a socket (client) timeout set from the remaining
budget, with the client's own retries off; a source should set one as well. The bulkhead bounds
what a source that ignores it can cost.

Design: at most ``max_concurrent`` daemon worker threads (a hung call never blocks interpreter
exit, as ``concurrent.futures.ThreadPoolExecutor`` would), started lazily, fed from one
``queue.SimpleQueue``. A submit never waits: it takes a slot or raises ``BulkheadFull``. A slot is
freed only when its call really finishes. The lock guards counters and the hand-off to the queue
(both O(1), never blocking) and is never held during a call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from ._errors import BulkheadFull
from ._fork import hold_across_forks
from .events import EventSink, NullSink, register_event

__all__ = ["BULKHEAD_ABANDONED", "Bulkhead", "BulkheadStats"]

T = TypeVar("T")

#: Emit the abandoned event on the first abandonment, then once per this many.
_ABANDONED_EVERY = 100

BULKHEAD_ABANDONED = register_event(
    "resilience.bulkhead.abandoned",
    "warning",
    "A caller stopped waiting (timeout or cancellation) on a blocking source call, which runs on "
    "in its bulkhead thread and holds its slot until it returns; emitted on the first "
    f"abandonment, then once per {_ABANDONED_EVERY}; fields: source, in_flight, abandoned.",
)

_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class BulkheadStats(NamedTuple):
    """A consistent reading of a bulkhead's counters."""

    in_flight: int
    """Calls holding a slot now (queued or running), including abandoned ones still running."""
    max_concurrent: int
    """How many calls it admits at once."""
    completed: int
    """Calls that finished (returned or raised), abandoned or not; not those cancelled unrun."""
    rejected: int
    """Submits refused because the bulkhead was full (or closed)."""
    abandoned: int
    """Calls whose caller stopped waiting (timeout or cancellation)."""


class Bulkhead:
    """Runs calls to one blocking source on at most ``max_concurrent`` daemon threads.

    Args:
        name: the source's name (or ``policy.step`` for a step isolated in a bulkhead); used in
            errors, events and thread names.
        max_concurrent: how many calls may be in flight at once (at least 1).
        events: where the ``resilience.bulkhead.abandoned`` event goes; dropped by default.
        kind: what ``name`` names, for messages: ``source`` or ``step``.
    """

    __slots__ = (
        "__weakref__",
        "_abandoned",
        "_abandoned_futures",
        "_closed",
        "_completed",
        "_events",
        "_in_flight",
        "_lock",
        "_queue",
        "_rejected",
        "_threads",
        "kind",
        "max_concurrent",
        "name",
    )

    def __init__(
        self,
        name: str,
        max_concurrent: int,
        events: EventSink | None = None,
        *,
        kind: str = "source",
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        self.name = name
        self.kind = kind
        self.max_concurrent = max_concurrent
        self._events: EventSink = events if events is not None else NullSink()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._abandoned_futures: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()
        self._in_flight = 0
        self._threads = 0
        self._completed = 0
        self._rejected = 0
        self._abandoned = 0
        self._closed = False
        hold_across_forks(self, "_lock", rank=2)

    def __repr__(self) -> str:
        return f"Bulkhead({self.name!r}, max_concurrent={self.max_concurrent})"

    def _after_fork_in_child(self) -> None:
        # The parent's workers and the calls they ran are not in the child: start empty, and
        # let the next calls start workers of the child's own.
        self._queue = queue.SimpleQueue()
        self._in_flight = 0
        self._threads = 0

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Start ``fn(*args, **kwargs)`` on a worker thread; returns its future at once.

        Raises:
            BulkheadFull: ``max_concurrent`` calls are in flight, or the bulkhead is closed.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed or self._in_flight >= self.max_concurrent:
                self._rejected += 1
                stuck = sum(1 for f in self._abandoned_futures if not f.done())
                raise BulkheadFull(self.name, self.max_concurrent, stuck, kind=self.kind)
            self._in_flight += 1
            # Queued under the lock, so that close()'s stop markers always come after it.
            self._queue.put((future, fn, args, kwargs))
            # Enough workers while there are as many as calls in flight: each queued job then
            # has an idle worker, and none waits behind a hung call.
            number = 0
            if self._threads < self._in_flight:
                self._threads += 1
                number = self._threads
        if number:
            self._start_worker(number, future)
        return future

    def call(self, fn: Callable[..., T], /, *args: Any, timeout: float, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the bulkhead and wait up to ``timeout`` seconds.

        Exceptions of ``fn`` propagate unchanged. With ``timeout <= 0`` nothing is started.

        Raises:
            BulkheadFull: no free slot.
            TimeoutError: ``fn`` did not finish in time; it runs on, holding its slot, and is
                counted as abandoned.
        """
        if timeout <= 0:
            raise TimeoutError(f"{self.kind} {self.name!r}: no time left to call it ({timeout:g}s)")
        # The deadline is fixed before submit(): starting a worker thread can itself take
        # milliseconds, and that time is the caller's too.
        deadline = time.monotonic() + timeout
        future = self.submit(fn, *args, **kwargs)
        try:
            return future.result(max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            # fn's own TimeoutError (socket.timeout is one) also lands here: tell them apart.
            if not future.done():
                self.abandon(future)
                raise TimeoutError(
                    f"{self.kind} {self.name!r} did not return within {timeout:g}s; the call "
                    "runs on in its bulkhead thread and holds its slot until it returns"
                ) from None
        return future.result()  # finished at the deadline, or fn raised TimeoutError itself

    async def acall(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` in the bulkhead and await it without blocking the event loop.

        The caller bounds the wait (``asyncio.timeout``); when it is cancelled, the call is
        counted as abandoned and runs on in its thread, holding its slot.

        Raises:
            BulkheadFull: no free slot.
        """
        future = self.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.abandon(future)
            raise

    def abandon(self, future: concurrent.futures.Future[Any]) -> None:
        """Count ``future`` as abandoned: its caller stopped waiting. Idempotent per future.

        For async callers whose ``await asyncio.wrap_future(future)`` was cancelled. A call that
        has not started yet is cancelled and never runs.
        """
        future.cancel()
        with self._lock:
            if future in self._abandoned_futures:
                return
            self._abandoned_futures.add(future)
            self._abandoned += 1
            abandoned = self._abandoned
            in_flight = self._in_flight
        if abandoned % _ABANDONED_EVERY == 1:
            # A broken sink must not turn a timeout into its own error.
            with contextlib.suppress(Exception):
                self._events.emit(
                    BULKHEAD_ABANDONED, source=self.name, in_flight=in_flight, abandoned=abandoned
                )

    @property
    def stats(self) -> BulkheadStats:
        """The counters, read together."""
        with self._lock:
            return BulkheadStats(
                self._in_flight,
                self.max_concurrent,
                self._completed,
                self._rejected,
                self._abandoned,
            )

    def close(self) -> None:
        """Stop accepting calls; idle workers exit now, busy ones when their call returns.

        Never blocks, not even on a hung call. Calls already accepted still run. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)

    def _start_worker(self, number: int, future: concurrent.futures.Future[Any]) -> None:
        thread = threading.Thread(
            target=self._work, name=f"resilience-bulkhead-{self.name}-{number}", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            # No thread (e.g. at interpreter shutdown): the queued job must not run for a caller
            # who never got its future, and a later submit may start the missing worker.
            future.cancel()
            with self._lock:
                self._threads -= 1
            raise

    def _work(self) -> None:
        get = self._queue.get
        lock = self._lock
        while True:
            job = get()
            if job is None:
                return
            future, fn, args, kwargs = job
            del job
            if not future.set_running_or_notify_cancel():
                with lock:  # cancelled before it ran: free the slot, do not run fn
                    self._in_flight -= 1
            else:
                # The slot is freed before the result is published, so that a caller who got
                # its answer can call again at once without meeting its own finished call.
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    with lock:
                        self._in_flight -= 1
                        self._completed += 1
                    future.set_exception(exc)
                else:
                    with lock:
                        self._in_flight -= 1
                        self._completed += 1
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs  # hold nothing of a finished call while idle
