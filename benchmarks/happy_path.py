"""The happy path: the reference policy's first tier serves, sync and asyncio.

The baseline is what a careful engineer writes by hand for the same job: read the session
store and the profile store, blend (the same domain function the tier uses), check the 10 ms
tier timeout and the 30 ms budget on a monotonic clock, feed the stale cache only on change,
and build a trace with the same information (policy, config version, served tier, reason,
one record per step with outcome and microseconds, budget and time used).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from resilience_plugins.signal_cache import SignalCache
from resilience_plugins.tiers.session import SessionParams, blend

from resilience import (
    Affinities,
    Candidate,
    Click,
    Decision,
    Engine,
    GarbageData,
    MemorySource,
    NullSink,
    Outcome,
    Reason,
    RequestContext,
    SessionState,
    Signals,
    StepRecord,
    Trace,
    load_policies_file,
)

from .interleaved import Comparison, compare

__all__ = ["run"]

ROOT = Path(__file__).resolve().parent.parent
NOW = time.time()

SESSIONS: MemorySource[SessionState] = MemorySource(
    {
        "s1": SessionState(
            tuple(
                Click(f"i{n}", ("shoes", "bags", "books")[n % 3], NOW - 60 + n) for n in range(6)
            ),
            NOW - 1,
        )
    }
)
PROFILES: MemorySource[Affinities] = MemorySource(
    {"u1": Affinities({"books": 4.0, "shoes": 1.0, "toys": 2.0})}
)
SEGMENTS: MemorySource[Affinities] = MemorySource({})
REQUEST = RequestContext(
    user_id="u1",
    session_id="s1",
    request_id="r",
    candidates=tuple(Candidate(f"c{n}", 1.0 - n / 100) for n in range(20)),
)


async def _async_sessions(key: str) -> SessionState | None:
    return SESSIONS(key)


async def _async_profiles(key: str) -> Affinities | None:
    return PROFILES(key)


class HandWritten:
    """The reference: the same work, written out for this one policy."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.params = SessionParams()
        self.cache = SignalCache()
        self.cache.ensure_capacity(100_000)

    def decide(self, request: RequestContext) -> Decision:
        now = time.perf_counter
        start = now()
        budget = 0.030
        if request.time_left is not None and request.time_left < budget:
            budget = max(request.time_left, 0.0)
        deadline = start + budget
        records: list[StepRecord] = []
        signals: Signals | None = None
        t0 = now()
        timeout = min(0.010, deadline - t0)
        outcome, detail = Outcome.MISS, ""
        try:
            session_id = request.session_id
            state = SESSIONS(session_id) if session_id else None
            if type(state) is SessionState and state.clicks:
                profile = None
                if request.user_id:
                    started = now()
                    wait = min(0.005, timeout - (started - t0))
                    if wait > 0.0:
                        try:
                            profile = PROFILES(request.user_id)
                        except Exception:
                            profile = None
                        if now() - started > wait:
                            profile = None
                signals = self._signals(session_id or "", state, profile, t0, timeout)
                outcome = Outcome.OK
        except GarbageData as exc:
            outcome, detail = Outcome.GARBAGE, str(exc)
        except Exception as exc:
            outcome, detail = Outcome.ERROR, type(exc).__name__
        return self._finish(
            request, start, deadline, t0, timeout, outcome, detail, signals, records
        )

    async def adecide(self, request: RequestContext) -> Decision:
        now = time.perf_counter
        start = now()
        budget = 0.030
        if request.time_left is not None and request.time_left < budget:
            budget = max(request.time_left, 0.0)
        deadline = start + budget
        records: list[StepRecord] = []
        signals: Signals | None = None
        t0 = now()
        timeout = min(0.010, deadline - t0)
        outcome, detail = Outcome.MISS, ""
        try:
            async with asyncio.timeout(timeout):
                session_id = request.session_id
                state = await _async_sessions(session_id) if session_id else None
                if type(state) is SessionState and state.clicks:
                    profile = None
                    if request.user_id:
                        started = now()
                        wait = min(0.005, timeout - (started - t0))
                        if wait > 0.0:
                            try:
                                async with asyncio.timeout(wait):
                                    profile = await _async_profiles(request.user_id)
                            except Exception:
                                profile = None
                            if now() - started > wait:
                                profile = None
                    signals = self._signals(session_id or "", state, profile, t0, timeout)
                    outcome = Outcome.OK
        except TimeoutError:
            outcome, detail = Outcome.TIMEOUT, "cancelled at deadline"
        except GarbageData as exc:
            outcome, detail = Outcome.GARBAGE, str(exc)
        except Exception as exc:
            outcome, detail = Outcome.ERROR, type(exc).__name__
        return self._finish(
            request, start, deadline, t0, timeout, outcome, detail, signals, records
        )

    def _signals(
        self, session_id: str, state: SessionState, profile: object, t0: float, timeout: float
    ) -> Signals:
        usable = profile if type(profile) is Affinities else None
        wall = time.time()
        categories, items, weight = blend(state, usable, self.params, wall)
        sources = (
            ("session_store", "profile_store")
            if usable is not None and weight < 1.0
            else ("session_store",)
        )
        signals = Signals(categories, items, "session", sources, weight, state.event_time)
        if time.perf_counter() - t0 <= timeout:
            self.cache.remember(session_id, signals, wall)
        return signals

    def _finish(
        self,
        request: RequestContext,
        start: float,
        deadline: float,
        t0: float,
        timeout: float,
        outcome: Outcome,
        detail: str,
        signals: Signals | None,
        records: list[StepRecord],
    ) -> Decision:
        t1 = time.perf_counter()
        if outcome is Outcome.OK and t1 - t0 > timeout:
            outcome, signals = Outcome.TIMEOUT, None
        records.append(StepRecord("session", outcome, int((t1 - t0) * 1e6 + 0.5), detail))
        # The fallback tiers would follow here; on the happy path the session tier served.
        trace = Trace(
            "search",
            self.version,
            request.request_id,
            "session",
            Reason.PRIMARY,
            tuple(records),
            int((deadline - start) * 1e6 + 0.5),
            int((time.perf_counter() - start) * 1e6 + 0.5),
        )
        return Decision(signals, request.candidates, trace)


def _sync_loop(decide: Callable[[RequestContext], Decision]) -> Callable[[int], None]:
    def loop(calls: int) -> None:
        request = REQUEST
        for _ in range(calls):
            decide(request)

    return loop


def _async_loop(
    decide: Callable[[RequestContext], Coroutine[Any, Any, Decision]],
    loop: asyncio.AbstractEventLoop,
) -> Callable[[int], None]:
    async def many(calls: int) -> None:
        request = REQUEST
        for _ in range(calls):
            await decide(request)

    def run(calls: int) -> None:
        loop.run_until_complete(many(calls))

    return run


def run(*, quick: bool) -> dict[str, dict[str, Any]]:
    """Measure the happy path; returns ``{"sync": {...}, "async": {...}}``."""
    policies = load_policies_file(ROOT / "policies.yaml")
    sync_sources = {"session_store": SESSIONS, "profile_store": PROFILES, "segment_store": SEGMENTS}
    async_sources = {
        **sync_sources,
        "session_store": _async_sessions,
        "profile_store": _async_profiles,
    }
    calls, repeats = (2_000, 9) if quick else (10_000, 15)
    results: dict[str, Comparison] = {}
    with Engine(policies, sync_sources, events=NullSink(), seed=1) as engine:
        reference = HandWritten(engine.config_version())
        check = engine.decide(REQUEST)
        assert check.trace.served == "session", check.trace
        assert check.signals == reference.decide(REQUEST).signals
        results["sync"] = compare(
            _sync_loop(engine.decide), _sync_loop(reference.decide), calls=calls, repeats=repeats
        )
    loop = asyncio.new_event_loop()
    try:
        with Engine(policies, async_sources, events=NullSink(), seed=1) as engine:
            reference = HandWritten(engine.config_version())
            check = loop.run_until_complete(engine.adecide(REQUEST))
            assert check.trace.served == "session", check.trace
            results["async"] = compare(
                _async_loop(engine.adecide, loop),
                _async_loop(reference.adecide, loop),
                calls=calls,
                repeats=repeats,
            )
    finally:
        loop.close()
    return {name: c.as_dict() for name, c in results.items()}
