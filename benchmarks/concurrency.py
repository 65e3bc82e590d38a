"""Concurrent calls through one closed breaker: does the breaker serialize them?

16 threads each make one call that blocks 50 ms, started together (a barrier); the figure is the
wall time of the batch. Three variants run interleaved within each repeat, in a rotating order:

- ``plain``: the function called directly (the baseline, ~50 ms);
- ``resilience``: through one closed breaker of this library
  (``SourceRuntime(...).view().call(key, timeout)``);
- ``pybreaker``: through ``pybreaker.CircuitBreaker().call(fn, key)``, which holds one lock for
  the whole guarded call (the field notes: ~15x).

Each repeat gives one ratio per variant over ``plain``; the medians are reported.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pybreaker

from resilience import BreakerOptions, NullSink, SourceOptions, SystemClock
from resilience._sources import SourceRuntime

__all__ = ["run"]

#: How long any barrier wait may take before the batch is declared stuck (bounded, never hangs).
_STUCK_AFTER = 60.0


class _Batch:
    """``threads`` persistent threads that each run one call per batch, released together."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._start = threading.Barrier(threads + 1)
        self._end = threading.Barrier(threads + 1)
        self._work: Callable[[str], object] | None = None
        self._stop = False
        self.results: list[object] = [None] * threads
        self.errors: list[BaseException] = []
        self._workers = [
            threading.Thread(target=self._loop, args=(n,), name=f"bench-batch-{n}", daemon=True)
            for n in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def _loop(self, number: int) -> None:
        key = f"k{number}"
        while True:
            try:
                self._start.wait(_STUCK_AFTER)
            except threading.BrokenBarrierError:
                return
            work = self._work
            if self._stop or work is None:
                return
            try:
                self.results[number] = work(key)
            except BaseException as exc:  # reported by run(), never lost in a thread
                self.errors.append(exc)
            try:
                self._end.wait(_STUCK_AFTER)
            except threading.BrokenBarrierError:
                return

    def run(self, work: Callable[[str], object]) -> float:
        """Run ``work(key)`` once on every thread at once; the batch's wall time in seconds."""
        self._work = work
        self.results = [None] * self.threads
        self._start.wait(_STUCK_AFTER)
        start = time.perf_counter()
        self._end.wait(_STUCK_AFTER)
        elapsed = time.perf_counter() - start
        if self.errors:
            raise RuntimeError(f"a call failed in the batch: {self.errors[0]!r}")
        if any(result is None for result in self.results):
            raise RuntimeError("a call of the batch returned nothing")
        return elapsed

    def close(self) -> None:
        self._stop = True
        self._start.abort()
        self._end.abort()
        for worker in self._workers:
            worker.join(_STUCK_AFTER)


def _measure(*, threads: int, block: float, repeats: int) -> dict[str, Any]:
    def blocking(key: str) -> str:
        time.sleep(block)
        return key

    runtime = SourceRuntime(
        "s", blocking, SourceOptions(breaker=BreakerOptions()), SystemClock(), NullSink()
    )
    guarded = runtime.view().call
    breaker = pybreaker.CircuitBreaker()

    def through_resilience(key: str) -> object:
        return guarded(key, 1.0)

    def through_pybreaker(key: str) -> object:
        return breaker.call(blocking, key)

    variants: dict[str, Callable[[str], object]] = {
        "plain": blocking,
        "resilience": through_resilience,
        "pybreaker": through_pybreaker,
    }
    orders = list(itertools.permutations(variants))
    times: dict[str, list[float]] = {name: [] for name in variants}
    ratios: dict[str, list[float]] = {"resilience": [], "pybreaker": []}
    batch = _Batch(threads)
    enabled = gc.isenabled()
    try:
        batch.run(blocking)  # warm-up: threads scheduled once, code paths touched
        batch.run(through_resilience)
        through_pybreaker("warm")
        gc.disable()
        for repeat in range(repeats):
            timings = {name: batch.run(variants[name]) for name in orders[repeat % len(orders)]}
            for name, elapsed in timings.items():
                times[name].append(elapsed)
            for name, sink in ratios.items():
                sink.append(timings[name] / timings["plain"])
    finally:
        if enabled:
            gc.enable()
        batch.close()
        runtime.close()
    snapshot = runtime.breaker.snapshot() if runtime.breaker is not None else None
    return {
        "ratio": round(statistics.median(ratios["resilience"]), 3),
        "pybreaker_ratio": round(statistics.median(ratios["pybreaker"]), 3),
        "plain_ms": round(statistics.median(times["plain"]) * 1e3, 2),
        "resilience_ms": round(statistics.median(times["resilience"]) * 1e3, 2),
        "pybreaker_ms": round(statistics.median(times["pybreaker"]) * 1e3, 2),
        "breaker_state": snapshot.state if snapshot is not None else "",
        "threads": threads,
        "block_ms": round(block * 1e3, 3),
        "repeats": repeats,
    }


def run(
    *, quick: bool, threads: int = 16, block: float = 0.05, repeats: int | None = None
) -> dict[str, Any]:
    """Batch wall time through one closed breaker over plain calls (and pybreaker's).

    ``threads``, ``block`` and ``repeats`` exist for the smoke tests; the figures use the
    defaults (16 threads x 50 ms, 7 repeats quick, 11 full).
    """
    if repeats is None:
        repeats = 7 if quick else 11
    return _measure(threads=threads, block=block, repeats=repeats)
