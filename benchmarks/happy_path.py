"""The happy path: the reference policy's first tier serves, sync and asyncio.

The policy is the reference ``policies.yaml`` without its post steps, plus a 10% holdout (as
the simulator runs it): guards, chain, breakers and the holdout hash all run.

The baseline is what a careful engineer writes by hand for the same job: check the kill
switch, hash the user into the holdout or not, read the session store and the profile store,
blend (the same domain function the tier uses), check the 10 ms tier timeout and the 30 ms
budget on a monotonic clock, feed the stale cache only on change, and build a trace with the
same information (policy, config version, served tier, reason, holdout group, one record per
step with outcome, microseconds and note, budget and time used).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
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
    SourceFunction,
    StepRecord,
    Trace,
    load_policies,
)
from resilience._holdout import bucket as holdout_bucket

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


#: The holdout the benchmark policy declares; REQUEST's user is in the treatment group.
HOLDOUT_SALT = "benchmark-holdout"
HOLDOUT_PERCENT = 10
#: A user the holdout keeps (the degraded-path benchmark's "holdout user").
HELD_OUT_USER = "u4"


async def _async_sessions(key: str) -> SessionState | None:
    return SESSIONS(key)


async def _async_profiles(key: str) -> Affinities | None:
    return PROFILES(key)


class HandBreaker:
    """A failure-rate breaker written out: a ring of the last calls, tripping above a rate."""

    __slots__ = (
        "_codes",
        "_lock",
        "_next",
        "calls",
        "failures",
        "minimum",
        "open_until",
        "rate",
        "slow_rate",
        "slows",
    )

    def __init__(self, size: int, minimum: int, rate: float, slow_rate: float = 1.0) -> None:
        self._codes: list[int | None] = [None] * size
        self._next = 0
        self._lock = threading.Lock()
        self.calls = self.failures = self.slows = 0
        self.minimum, self.rate, self.slow_rate = minimum, rate, slow_rate
        self.open_until = 0.0

    def allowed(self, now: float) -> bool:
        return now >= self.open_until

    def record(self, failed: bool, slow: bool, now: float) -> None:
        with self._lock:
            old = self._codes[self._next]
            if old is not None:
                self.calls -= 1
                self.failures -= old & 1
                self.slows -= old >> 1
            self._codes[self._next] = failed | (slow << 1)
            self._next = (self._next + 1) % len(self._codes)
            self.calls += 1
            self.failures += failed
            self.slows += slow
            if self.calls >= self.minimum and (
                self.failures / self.calls > self.rate or self.slows / self.calls > self.slow_rate
            ):
                self.open_until = now + 5.0


class HandRateWindow:
    """The error-rate guard written out: 5-second buckets over the last minute, with running
    sums kept beside them (as the engine's window keeps them), so recording is O(1)."""

    __slots__ = ("_buckets", "_lock", "calls", "failures", "off_until")

    def __init__(self) -> None:
        self._buckets: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self.calls = self.failures = 0
        self.off_until = 0.0

    def allowed(self, now: float) -> bool:
        return now >= self.off_until

    def record(self, failed: bool, now: float) -> None:
        second = int(now / 5.0)
        with self._lock:
            bucket = self._buckets.get(second)
            if bucket is None:
                bucket = self._buckets[second] = [0, 0]
                for old in [k for k in self._buckets if k <= second - 12]:
                    calls, failures = self._buckets.pop(old)
                    self.calls -= calls
                    self.failures -= failures
            bucket[0] += 1
            bucket[1] += failed
            self.calls += 1
            self.failures += failed
            if failed and self.calls >= 100 and self.failures / self.calls > 0.05:
                self.off_until = now + 30.0


class HandWritten:
    """The reference: the same work, written out for this one policy."""

    def __init__(
        self,
        version: str,
        *,
        protected: bool = True,
        budget: float = 0.030,
        timeout: float = 0.010,
        profile_timeout: float = 0.005,
        slow_call_duration: float = 0.008,
        async_sessions: Callable[[str], Awaitable[SessionState | None]] | None = None,
        async_profiles: Callable[[str], Awaitable[Affinities | None]] | None = None,
    ) -> None:
        self.version = version
        # The reference policy's limits, and the async stores adecide awaits (the throughput
        # benchmark gives stores that yield to the loop, and limits that suit 1,000 tasks).
        self.budget, self.timeout = budget, timeout
        self.profile_timeout, self.slow_call_duration = profile_timeout, slow_call_duration
        self.async_sessions = async_sessions or _async_sessions
        self.async_profiles = async_profiles or _async_profiles
        #: the kill switch, read on every request ("search" -> False switches it off)
        self.switches: dict[str, bool] = {}
        self.notes: dict[float, str] = {}
        self.protected = protected  # False: the foundation's policy, with no breakers or guard
        self.params = SessionParams()
        self.cache = SignalCache()
        self.cache.ensure_capacity(100_000)
        self.cache.ensure_ttl(300.0)
        self.session_breaker = HandBreaker(100, 20, 0.5, slow_rate=0.5)
        self.profile_breaker = HandBreaker(100, 20, 0.5)
        self.guard = HandRateWindow()

    def decide(self, request: RequestContext) -> Decision:
        now = time.perf_counter
        start = now()
        budget = self.budget
        if request.time_left is not None and request.time_left < budget:
            budget = max(request.time_left, 0.0)
        deadline = start + budget
        records: list[StepRecord] = []
        signals: Signals | None = None
        allowed = self.switches.get("search", True)  # the kill switch (its off path is elided)
        if self.protected and request.user_id:
            # the holdout's path (the terminal tier alone) is elided: REQUEST is in treatment
            allowed = allowed and (
                holdout_bucket(HOLDOUT_SALT, request.user_id) >= HOLDOUT_PERCENT * 100
            )
        if self.protected:
            g0 = now()
            allowed = allowed and self.guard.allowed(g0)  # the error-rate guard
            records.append(StepRecord("error_rate", Outcome.OK, int((now() - g0) * 1e6 + 0.5)))
        t0 = now()
        timeout = min(self.timeout, deadline - t0)
        outcome, detail = Outcome.MISS, ""
        try:
            session_id = request.session_id
            state = None
            if session_id and allowed and (not self.protected or self.session_breaker.allowed(t0)):
                state = SESSIONS(session_id)
                if state is not None and self.protected:
                    elapsed = now() - t0
                    self.session_breaker.record(
                        elapsed > timeout, elapsed > self.slow_call_duration, t0
                    )
            if type(state) is SessionState and state.clicks:
                profile = None
                if request.user_id and (not self.protected or self.profile_breaker.allowed(t0)):
                    started = now()
                    wait = min(self.profile_timeout, timeout - (started - t0))
                    if wait > 0.0:
                        try:
                            profile = PROFILES(request.user_id)
                        except Exception:
                            profile = None
                        took = now() - started
                        if profile is not None and self.protected:
                            self.profile_breaker.record(took > wait, took > wait, started)
                        if took > wait:
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
        budget = self.budget
        if request.time_left is not None and request.time_left < budget:
            budget = max(request.time_left, 0.0)
        deadline = start + budget
        records: list[StepRecord] = []
        signals: Signals | None = None
        allowed = self.switches.get("search", True)
        if self.protected and request.user_id:
            allowed = allowed and (
                holdout_bucket(HOLDOUT_SALT, request.user_id) >= HOLDOUT_PERCENT * 100
            )
        if self.protected:
            g0 = now()
            allowed = allowed and self.guard.allowed(g0)
            records.append(StepRecord("error_rate", Outcome.OK, int((now() - g0) * 1e6 + 0.5)))
        t0 = now()
        timeout = min(self.timeout, deadline - t0)
        outcome, detail = Outcome.MISS, ""
        try:
            async with asyncio.timeout(timeout):
                session_id = request.session_id
                state = None
                if (
                    session_id
                    and allowed
                    and (not self.protected or self.session_breaker.allowed(t0))
                ):
                    state = await self.async_sessions(session_id)
                    if state is not None and self.protected:
                        elapsed = now() - t0
                        self.session_breaker.record(
                            elapsed > timeout, elapsed > self.slow_call_duration, t0
                        )
                if type(state) is SessionState and state.clicks:
                    profile = None
                    if request.user_id and (not self.protected or self.profile_breaker.allowed(t0)):
                        started = now()
                        wait = min(self.profile_timeout, timeout - (started - t0))
                        if wait > 0.0:
                            try:
                                async with asyncio.timeout(wait):
                                    profile = await self.async_profiles(request.user_id)
                            except Exception:
                                profile = None
                            took = now() - started
                            if profile is not None and self.protected:
                                self.profile_breaker.record(took > wait, took > wait, started)
                            if took > wait:
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
        note = self.notes.get(weight)
        if note is None:  # the weight shown in the trace, formatted once per distinct weight
            note = self.notes[weight] = f"w={weight:.2f}"
        signals = Signals(categories, items, "session", sources, weight, state.event_time, note)
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
        elif signals is not None:
            detail = signals.note  # the blend weight, as the engine's record shows it
        records.append(StepRecord("session", outcome, int((t1 - t0) * 1e6 + 0.5), detail))
        if self.protected:
            self.guard.record(outcome is not Outcome.OK and outcome is not Outcome.MISS, t1)
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
            False,
            False,
            "treatment" if self.protected else "",  # the holdout group, as the engine's trace
        )
        return Decision(signals, request.candidates, trace)


def sync_loop(
    decide: Callable[[RequestContext], Decision], request: RequestContext = REQUEST
) -> Callable[[int], None]:
    """``calls`` decisions of ``request`` in a row."""

    def loop(calls: int) -> None:
        for _ in range(calls):
            decide(request)

    return loop


def async_loop(
    decide: Callable[[RequestContext], Coroutine[Any, Any, Decision]],
    loop: asyncio.AbstractEventLoop,
    request: RequestContext = REQUEST,
) -> Callable[[int], None]:
    """``calls`` decisions of ``request`` in a row, in one task on ``loop``."""

    async def many(calls: int) -> None:
        for n in range(calls):
            await decide(request)
            if n % 64 == 63:
                # Let the loop run, as a service's would: each decision's cancelled timeout
                # stays on the loop's timer heap until the loop runs, and a heap grown over a
                # whole repeat makes every later decision pay for it, on both sides.
                await asyncio.sleep(0)

    def run(calls: int) -> None:
        loop.run_until_complete(many(calls))

    return run


def without_post(text: str) -> str:
    """The reference policy text without post steps: the happy path measures guards and chain."""
    return re.sub(r"(?m)^    post:.*\n(?:      .*\n)+", "    post: []\n", text)


def _unprotected(text: str) -> str:
    """The reference policy text without its ``sources:`` section and its guards."""
    text = re.sub(r"(?m)^sources:\n(?:(?:  .*)?\n)+?(?=\S)", "", text)
    return re.sub(r"(?m)^    guards:\n(?:      .*\n)+", "    guards: []\n", text)


def policy_text(*, protected: bool = True, post: bool = False) -> str:
    """The happy path's policy: the reference file without post steps (with them: ``post``),
    plus the holdout (``protected``), or without sources, guards and holdout (the foundation's
    measurement)."""
    text = (ROOT / "policies.yaml").read_text()
    if not post:
        text = without_post(text)
    if not protected:
        return _unprotected(text)
    holdout = f"    holdout:\n      salt: {HOLDOUT_SALT}\n      percent: {HOLDOUT_PERCENT}\n"
    return re.sub(r"(?m)^(    budget: .*\n)", lambda m: m.group(1) + holdout, text, count=1)


def sync_sources() -> dict[str, SourceFunction]:
    """The in-memory stores, as sync functions."""
    return {"session_store": SESSIONS, "profile_store": PROFILES, "segment_store": SEGMENTS}


def async_sources() -> dict[str, SourceFunction]:
    """The same stores; the session and profile stores as coroutine functions."""
    return {**sync_sources(), "session_store": _async_sessions, "profile_store": _async_profiles}


def run(*, quick: bool) -> dict[str, dict[str, Any]]:
    """Measure the happy path: ``sync``, ``async`` and their ``foundation_*`` forms."""
    policies = load_policies(policy_text())
    calls, repeats = (2_000, 9) if quick else (10_000, 15)
    results: dict[str, Comparison] = {}
    # The foundation's measurement, kept so that regressions show: the same policy without
    # source protection and without the error_rate guard, against the same hand-written code.
    bare = load_policies(policy_text(protected=False))
    with Engine(bare, sync_sources(), events=NullSink(), seed=1) as engine:
        reference = HandWritten(engine.config_version(), protected=False)
        assert engine.decide(REQUEST).signals == reference.decide(REQUEST).signals
        results["foundation_sync"] = compare(
            sync_loop(engine.decide), sync_loop(reference.decide), calls=calls, repeats=repeats
        )
    with Engine(policies, sync_sources(), events=NullSink(), seed=1) as engine:
        reference = HandWritten(engine.config_version())
        check = engine.decide(REQUEST)
        assert check.trace.served == "session", check.trace
        assert check.signals == reference.decide(REQUEST).signals
        results["sync"] = compare(
            sync_loop(engine.decide), sync_loop(reference.decide), calls=calls, repeats=repeats
        )
    loop = asyncio.new_event_loop()
    try:
        with Engine(bare, async_sources(), events=NullSink(), seed=1) as engine:
            reference = HandWritten(engine.config_version(), protected=False)
            check = loop.run_until_complete(engine.adecide(REQUEST))
            by_hand = loop.run_until_complete(reference.adecide(REQUEST))
            assert check.signals == by_hand.signals, check.trace
            results["foundation_async"] = compare(
                async_loop(engine.adecide, loop),
                async_loop(reference.adecide, loop),
                calls=calls,
                repeats=repeats,
            )
        with Engine(policies, async_sources(), events=NullSink(), seed=1) as engine:
            reference = HandWritten(engine.config_version())
            check = loop.run_until_complete(engine.adecide(REQUEST))
            assert check.trace.served == "session", check.trace
            by_hand = loop.run_until_complete(reference.adecide(REQUEST))
            assert check.signals == by_hand.signals
            results["async"] = compare(
                async_loop(engine.adecide, loop),
                async_loop(reference.adecide, loop),
                calls=calls,
                repeats=repeats,
            )
    finally:
        loop.close()
    return {name: c.as_dict() for name, c in results.items()}
