"""Decisions per second: one thread in a tight loop, and 1,000 asyncio tasks on one loop.

``sync``: ``Engine.decide`` in a tight loop on one thread against ``HandWritten.decide``
(``benchmarks.happy_path``: the same work written out), the happy path's policy and in-memory
stores, interleaved (``compare``).

``async_concurrent``: ``tasks`` asyncio tasks (1,000) started together on one event loop, each
making ``per_task`` decisions in sequence. The session and profile stores are the happy path's
in-memory ones wrapped in coroutines that ``await asyncio.sleep(0)`` before answering, so every
read really yields and the tasks interleave as they would on a network client. The baseline is
the happy path's hand-written async decision (``HandWritten``: kill switch, holdout, error-rate
window, a breaker per store, ``asyncio.timeout`` around the tier and its own cutoff around the
profile read, the same ``blend``, the stale cache fed on change, a trace) given the same
yielding stores and the same limits. Every decision is checked to be served by ``session`` with
signals (``failed`` counts the others, and must be 0).

One loop serving 1,000 decisions at once queues each of them behind the others' work: a
decision then spans tens of milliseconds of wall time, so under the reference policy's 10 ms
tier timeout and 30 ms budget nearly all of them time out, and the error-rate guard then
switches personalization off (``at_reference_budget`` shows who served and why, engine only,
untimed). For the timed comparison both sides therefore get the same larger
limits (:data:`CONCURRENT_LIMITS`: budget 2 s, tier 1 s, profile read 500 ms, slow call 800 ms),
so that they do the happy path's work rather than its failure path.

Figures: decisions per second of each side (``1e9 / median ns per decision``) and ``ratio``,
the median of the per-repeat ratios of the engine's time over the hand-written code's (the
hand-written code's decisions per second over the engine's). Medians of at least 7
interleaved repeats; under ``async_concurrent`` one repeat of a side is the wall time of all
its tasks, task creation included. The median decision latency of each side (``used_us`` of
untimed decisions under the same load) is context, not a comparison: it is mostly time queued
behind the other tasks, and with the tasks in lockstep it depends on where each side's work
sits between its awaits.
"""

from __future__ import annotations

import asyncio
import re
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from resilience import (
    Affinities,
    Decision,
    Engine,
    NullSink,
    Outcome,
    RequestContext,
    SessionState,
    SourceFunction,
    load_policies,
)

from .happy_path import (
    PROFILES,
    REQUEST,
    SESSIONS,
    HandWritten,
    policy_text,
    sync_loop,
    sync_sources,
)
from .interleaved import Comparison, compare

__all__ = ["CONCURRENT_LIMITS", "run"]

#: The limits both sides get under 1,000 concurrent tasks (seconds); see the module docstring.
CONCURRENT_LIMITS: dict[str, float] = {
    "budget": 2.0,
    "timeout": 1.0,
    "profile_timeout": 0.5,
    "slow_call_duration": 0.8,
}


async def yielding_sessions(key: str) -> SessionState | None:
    """The happy path's session store, answering after one turn of the event loop."""
    await asyncio.sleep(0)
    return SESSIONS(key)


async def yielding_profiles(key: str) -> Affinities | None:
    """The happy path's profile store, answering after one turn of the event loop."""
    await asyncio.sleep(0)
    return PROFILES(key)


def yielding_sources() -> dict[str, SourceFunction]:
    return {
        **sync_sources(),
        "session_store": yielding_sessions,
        "profile_store": yielding_profiles,
    }


def concurrent_policy_text() -> str:
    """The happy path's policy with :data:`CONCURRENT_LIMITS` in place of its limits."""
    limits = CONCURRENT_LIMITS
    text = policy_text()
    text, budgets = re.subn(
        r"(?m)^(    budget:) 30ms\b", rf"\g<1> {limits['budget'] * 1000:g}ms", text
    )
    text, timeouts = re.subn(
        r"(?m)^(\s+)timeout: 10ms\b.*$",
        rf"\g<1>timeout: {limits['timeout'] * 1000:g}ms\n"
        rf"\g<1>profile_timeout: {limits['profile_timeout'] * 1000:g}ms",
        text,
    )
    text, slows = re.subn(
        r"(?m)^(\s+slow_call_duration:) 8ms\b",
        rf"\g<1> {limits['slow_call_duration'] * 1000:g}ms",
        text,
    )
    assert (budgets, timeouts, slows) == (1, 1, 1), "the reference policy changed shape"
    return text


def _served(decision: Decision) -> bool:
    """Whether the session tier served this decision, with its signals."""
    return (
        decision.signals is not None
        and decision.trace.served == "session"
        and decision.trace.outcome_of("session") is Outcome.OK
    )


def _label(decision: Decision) -> str:
    """``session`` when it served; otherwise the tier that did and why (``unpersonalized
    (guard)``), or the session tier's outcome (``session:timeout``) when no other tier ran."""
    if _served(decision):
        return "session"
    trace = decision.trace
    if trace.served != "session":
        return f"{trace.served} ({trace.reason.value})"
    outcome = trace.outcome_of("session")
    return f"session:{outcome.value if outcome is not None else 'none'}"


class _Concurrent:
    """``workload(n)``: ``n // per_task`` tasks started together, each ``per_task`` decisions
    in sequence; decisions not served by the session tier are counted in ``failed``."""

    def __init__(
        self,
        decide: Callable[[RequestContext], Awaitable[Decision]],
        loop: asyncio.AbstractEventLoop,
        per_task: int,
    ) -> None:
        self.decide = decide
        self.loop = loop
        self.per_task = per_task
        self.failed = 0
        self.decisions = 0

    async def _task(self) -> None:
        decide, request, failed = self.decide, REQUEST, 0
        for _ in range(self.per_task):
            if not _served(await decide(request)):
                failed += 1
        self.failed += failed
        self.decisions += self.per_task

    async def _all(self, tasks: int) -> None:
        await asyncio.gather(*(self._task() for _ in range(tasks)))

    def workload(self, calls: int) -> None:
        self.loop.run_until_complete(self._all(max(calls // self.per_task, 1)))

    def survey(self, tasks: int) -> tuple[Counter[str], list[int]]:
        """Untimed: who served each decision of ``tasks`` concurrent tasks, and the latency
        (``used_us``) of each."""
        served: Counter[str] = Counter()
        used: list[int] = []

        async def task() -> None:
            for _ in range(self.per_task):
                decision = await self.decide(REQUEST)
                served[_label(decision)] += 1
                used.append(decision.trace.used_us)

        async def every() -> None:
            await asyncio.gather(*(task() for _ in range(tasks)))

        self.loop.run_until_complete(every())
        return served, used


def _rates(result: Comparison) -> dict[str, float | int]:
    """Both sides' decisions per second and time per decision, and the engine's time ratio."""
    return {
        "engine_per_s": _per_s(result.subject_ns),
        "hand_written_per_s": _per_s(result.baseline_ns),
        "ratio": round(result.ratio, 3),
        "engine_ns": round(result.subject_ns, 1),
        "hand_written_ns": round(result.baseline_ns, 1),
        "repeats": result.repeats,
    }


def _per_s(ns: float) -> float:
    return round(1e9 / ns, 1)


def _measure_sync(calls: int, repeats: int) -> dict[str, Any]:
    policies = load_policies(policy_text())
    with Engine(policies, sync_sources(), events=NullSink(), seed=1) as engine:
        reference = HandWritten(engine.config_version())
        check = engine.decide(REQUEST)
        assert _served(check), check.trace
        assert check.signals == reference.decide(REQUEST).signals
        result = compare(
            sync_loop(engine.decide), sync_loop(reference.decide), calls=calls, repeats=repeats
        )
    return {
        **_rates(result),
        "calls_per_repeat": result.calls,
    }


def _measure_async(tasks: int, per_task: int, repeats: int) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    try:
        with (
            Engine(
                load_policies(concurrent_policy_text()),
                yielding_sources(),
                events=NullSink(),
                seed=1,
            ) as engine,
            Engine(
                load_policies(policy_text()), yielding_sources(), events=NullSink(), seed=1
            ) as strict,
        ):
            reference = HandWritten(
                engine.config_version(),
                async_sessions=yielding_sessions,
                async_profiles=yielding_profiles,
                **CONCURRENT_LIMITS,
            )
            check = loop.run_until_complete(engine.adecide(REQUEST))
            assert _served(check), check.trace
            assert check.signals == loop.run_until_complete(reference.adecide(REQUEST)).signals
            subject = _Concurrent(engine.adecide, loop, per_task)
            baseline = _Concurrent(reference.adecide, loop, per_task)
            served, used = subject.survey(tasks)  # also warms up the loop and the tasks
            hand_served, hand_used = baseline.survey(tasks)
            result = compare(
                subject.workload, baseline.workload, calls=tasks * per_task, repeats=repeats
            )
            # What the reference limits give under the same load (engine only, untimed).
            at_reference, at_reference_used = _Concurrent(strict.adecide, loop, per_task).survey(
                tasks
            )
    finally:
        loop.close()
    unserved = served.total() - served["session"] + hand_served.total() - hand_served["session"]
    failed = subject.failed + baseline.failed + unserved
    return {
        "tasks": tasks,
        "per_task": per_task,
        "decisions": tasks * per_task,
        **_rates(result),
        "failed": failed,
        "checked": subject.decisions + baseline.decisions + served.total() + hand_served.total(),
        "engine_latency_ms_median": round(statistics.median(used) / 1000, 2),
        "hand_written_latency_ms_median": round(statistics.median(hand_used) / 1000, 2),
        "limits_ms": {name: value * 1000 for name, value in CONCURRENT_LIMITS.items()},
        "at_reference_budget": {
            "served": dict(sorted(at_reference.items())),
            "latency_ms_median": round(statistics.median(at_reference_used) / 1000, 2),
            "latency_ms_max": round(max(at_reference_used) / 1000, 2),
        },
    }


def run(
    *,
    quick: bool,
    calls: int | None = None,
    repeats: int | None = None,
    tasks: int | None = None,
    per_task: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Decisions per second: ``{"sync": {...}, "async_concurrent": {...}}``.

    ``sync``: ``engine_per_s``, ``hand_written_per_s``, ``ratio`` (the engine's time over the
    hand-written code's), the per-decision medians in ns, ``repeats``, ``calls_per_repeat``.
    ``async_concurrent``: the same for ``tasks`` concurrent tasks of ``per_task`` decisions each
    (``decisions`` per repeat), ``failed`` (decisions the session tier did not serve: must be
    0) out of ``checked``, the median decision latency of each side, the limits both had, and
    ``at_reference_budget`` (who served under the reference policy's limits, same load).
    The keyword overrides exist for the smoke tests; the figures use the defaults.
    """
    default_calls, default_per_task, default_repeats = (2_000, 2, 7) if quick else (10_000, 10, 15)
    repeats = repeats or default_repeats
    return {
        "sync": _measure_sync(calls or default_calls, repeats),
        "async_concurrent": _measure_async(tasks or 1_000, per_task or default_per_task, repeats),
    }
