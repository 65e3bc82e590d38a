"""The hard cutoff: how far past its 10 ms budget a decision ends when its source hangs.

A measurement, not a ratio: a policy with ``budget: 10ms``, a ``session`` tier (10 ms timeout)
and ``unpersonalized``, and no breaker, so that every decision meets the fault.

- ``async``: the session source is ``async def`` and hangs (sleeps 3 s); ``adecide`` calls run
  in concurrent batches (``asyncio.gather``), each cut at its deadline by cancellation. Each
  batch is paired with one of bare ``asyncio.timeout(10ms)`` cutoffs around the same hang: the
  floor the event loop itself sets (``asyncio_floor_ms``). On CPython 3.11 with epoll, a timer
  can fire up to ~2 ms late: ``EpollSelector.select`` rounds the wait up to whole ms and the
  float it passes on (e.g. ``9 * 1e-3`` = 0.009000000000000001) is rounded up once more.
- ``sync``: the session source blocks for 0.2 s behind a bulkhead; ``decide`` calls come from
  16 client threads. The caller stops waiting at the cutoff, but an abandoned call keeps its
  bulkhead slot while it sleeps, so the bulkhead is sized above the calls in flight
  (16 threads x 0.2 s / 10 ms = 320) to keep rejections rare; their count is reported.

For each: p50, p99, p99.9 and max of (wall time of the decision - 10 ms) in ms, measured by the
caller around the call; the exceptions that escaped (the engine must never raise) and the
session tier's outcomes (``timeout``, ``rejected``, ...).

The garbage collector is paused while measuring, as ``compare()`` and ``timeit`` do: its full
collections (10-20 ms here, triggered by the process's whole heap, not by the cutoff) would
otherwise decide the tail by where they happen to land.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from resilience import Decision, Engine, NullSink, PolicySet, RequestContext, load_policies

__all__ = ["run"]

BUDGET = 0.010

_POLICY = """
version: 1
default_policy: overrun
policies:
  overrun:
    budget: 10ms
    chain:
      - type: session
        timeout: 10ms
        profile_source: null
        cache: null
      - type: unpersonalized
"""

#: An abandoned blocking call holds its slot for the whole hang: 16 threads starting one call
#: per 10 ms keep ~320 slots busy. 512 leaves headroom; 256 would reject about one call in five.
_SYNC_SOURCES = """
sources:
  session_store:
    isolation: bulkhead
    max_concurrent: 512
"""

REQUEST = RequestContext(user_id="u1", session_id="s1", request_id="overrun")


def _percentile(ordered: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of sorted values."""
    index = min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))
    return ordered[index]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _percentiles(walls: Sequence[float]) -> dict[str, float]:
    """p50, p99, p99.9 and max of (wall time - budget), in ms."""
    overruns = sorted((wall - BUDGET) * 1e3 for wall in walls)
    if not overruns:
        return {}
    return {
        "p50": round(_percentile(overruns, 0.50), 3),
        "p99": round(_percentile(overruns, 0.99), 3),
        "p99.9": round(_percentile(overruns, 0.999), 3),
        "max": round(overruns[-1], 3),
    }


def _summary(
    walls: list[float], exceptions: int, outcomes: Counter[str], served: Counter[str]
) -> dict[str, Any]:
    return {
        "calls": len(walls) + exceptions,
        "exceptions": exceptions,
        # timeout and rejected always reported, if only as 0
        "outcomes": dict(sorted(({"timeout": 0, "rejected": 0} | outcomes).items())),
        "served": dict(sorted(served.items())),
        "overrun_ms": _percentiles(walls),
    }


def _tally(decision: Decision, outcomes: Counter[str], served: Counter[str]) -> None:
    outcome = decision.trace.outcome_of("session")
    outcomes[outcome.value if outcome is not None else "not_tried"] += 1
    served[decision.trace.served or "nothing"] += 1


def _measure_async(policies: PolicySet, calls: int, batch: int, hang: float) -> dict[str, Any]:
    """Batches of ``adecide`` calls; each batch is paired with one of bare ``asyncio.timeout``
    cutoffs around the same hang (the floor asyncio itself sets), in alternating order."""

    async def hung_session(key: str) -> None:
        await asyncio.sleep(hang)

    walls: list[float] = []
    floor: list[float] = []
    outcomes: Counter[str] = Counter()
    served: Counter[str] = Counter()
    exceptions = 0

    async def one(engine: Engine) -> None:
        nonlocal exceptions
        start = time.perf_counter()
        try:
            decision = await engine.adecide(REQUEST)
        except Exception:
            exceptions += 1
            return
        walls.append(time.perf_counter() - start)
        _tally(decision, outcomes, served)

    async def bare() -> None:
        start = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BUDGET):
                await hung_session("s1")
        floor.append(time.perf_counter() - start)

    async def main() -> None:
        async with Engine(policies, {"session_store": hung_session}, events=NullSink()) as engine:
            await one(engine)  # warm-up, not counted
            await bare()
            walls.clear()
            floor.clear()
            outcomes.clear()
            served.clear()
            done = 0
            with _gc_paused():
                while done < calls:
                    size = min(batch, calls - done)
                    if done // batch % 2:
                        await asyncio.gather(*(bare() for _ in range(size)))
                    await asyncio.gather(*(one(engine) for _ in range(size)))
                    if not done // batch % 2:
                        await asyncio.gather(*(bare() for _ in range(size)))
                    done += size

    asyncio.run(main())
    return {
        **_summary(walls, exceptions, outcomes, served),
        "concurrent": batch,
        "asyncio_floor_ms": _percentiles(floor),
    }


def _measure_sync(policies: PolicySet, calls: int, threads: int, hang: float) -> dict[str, Any]:
    def blocking_session(key: str) -> None:
        time.sleep(hang)

    walls: list[float] = []
    outcomes: Counter[str] = Counter()
    served: Counter[str] = Counter()
    exceptions = 0
    lock = threading.Lock()
    share, extra = divmod(calls, threads)

    with Engine(policies, {"session_store": blocking_session}, events=NullSink()) as engine:

        def client(count: int) -> None:
            nonlocal exceptions
            # Only floats and counts are kept, not the decisions: memory stays flat with the
            # collector paused.
            mine: list[float] = []
            my_outcomes: Counter[str] = Counter()
            my_served: Counter[str] = Counter()
            failed = 0
            for _ in range(count):
                start = time.perf_counter()
                try:
                    decision = engine.decide(REQUEST)
                except Exception:
                    failed += 1
                    continue
                mine.append(time.perf_counter() - start)
                _tally(decision, my_outcomes, my_served)
            with lock:
                walls.extend(mine)
                outcomes.update(my_outcomes)
                served.update(my_served)
                exceptions += failed

        engine.decide(REQUEST)  # warm-up, not counted (its call sleeps on in its thread)
        workers = [
            threading.Thread(target=client, args=(share + (n < extra),), name=f"bench-client-{n}")
            for n in range(threads)
        ]
        with _gc_paused():
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        stats = engine.source_stats()["session_store"].get("bulkhead", {})
    assert isinstance(stats, dict)
    return {
        **_summary(walls, exceptions, outcomes, served),
        "threads": threads,
        "max_concurrent": stats.get("max_concurrent"),
        "bulkhead_rejected": stats.get("rejected"),
        "threads_floor_ms": _threads_floor(calls, threads),
    }


def _threads_floor(calls: int, threads: int) -> dict[str, float]:
    """The machine's own floor for the sync case: the same threads each waiting 10 ms on an
    event (what a bulkhead caller does), the lateness of their wake-ups, in ms."""
    late: list[float] = []
    lock = threading.Lock()
    share, extra = divmod(calls, threads)

    def waiter(count: int) -> None:
        never = threading.Event()
        mine = []
        for _ in range(count):
            start = time.perf_counter()
            never.wait(BUDGET)
            mine.append(time.perf_counter() - start - BUDGET)
        with lock:
            late.extend(mine)

    workers = [threading.Thread(target=waiter, args=(share + (n < extra),)) for n in range(threads)]
    with _gc_paused():
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    ordered = sorted(late)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    return {"p50": pct(0.5), "p99.9": pct(0.999), "max": round(ordered[-1] * 1e3, 3)}


def run(
    *,
    quick: bool,
    calls: int | None = None,
    threads: int = 16,
    batch: int = 50,
    stress_batch: int = 200,
    async_hang: float = 3.0,
    sync_hang: float = 0.2,
) -> dict[str, Any]:
    """Overrun past the 10 ms budget under a hanging source:
    ``{"async": ..., "async_stress": ..., "sync": ...}``.

    ``async`` runs 50 decisions at once (a busy search process); ``async_stress`` 200, where
    the event loop's own cost of 200 simultaneous cancellations (its floor is measured beside
    it) dominates the tail. The keyword overrides exist for the smoke tests; the figures use the
    defaults (10,000 calls each, 2,000 quick).
    """
    if calls is None:
        calls = 2_000 if quick else 10_000
    return {
        "budget_ms": BUDGET * 1e3,
        "async": _measure_async(load_policies(_POLICY), calls, batch, async_hang),
        "async_stress": _measure_async(load_policies(_POLICY), calls, stress_batch, async_hang),
        "sync": _measure_sync(load_policies(_POLICY + _SYNC_SOURCES), calls, threads, sync_hang),
    }
