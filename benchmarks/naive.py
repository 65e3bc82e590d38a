"""Naive composition: the chosen libraries glued together by hand, against the engine.

The subject is what someone gets who builds the happy path's session tier straight from the
libraries the project builds on, each used the way its documentation shows:

- every store read goes through a ``pybreaker.CircuitBreaker(...).call`` (outermost), a
  ``tenacity.Retrying(stop=stop_after_attempt(2), reraise=True)`` inside it, and a thread-pool
  timeout innermost (``ThreadPoolExecutor.submit(read).result(timeout=...)``, the time the tier
  has left); asyncio: ``pybreaker.call`` around ``tenacity.AsyncRetrying`` around
  ``asyncio.wait_for`` (pybreaker's ``call`` only creates the coroutine there, so it records a
  success before the read has run and never sees a failure: the trap of its issue #7);
- each step of the decision (the error-rate guard, the session tier) is logged through
  structlog with the processors of its default configuration (``structlog.get_config()``, not
  configured: timestamp, level, console rendering) onto ``os.devnull``.

The domain work is the happy path's (``benchmarks.happy_path``): the kill switch, the holdout
hash, the error-rate window, the session and profile reads, the same ``blend`` with
``SessionParams()``, the stale cache fed on change, and a ``Decision`` whose ``Trace`` holds
the same records. Its signals are checked equal to the engine's before timing.

The baseline is the engine on the happy path's policy (the reference file without post steps,
plus a 10% holdout), in the same run, interleaved (``compare``). The figure is ``speedup``: the
naive composition's time per decision over the engine's (above 1: the engine is faster).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

import pybreaker
import structlog
from tenacity import AsyncRetrying, Retrying, stop_after_attempt

from resilience import (
    Affinities,
    Decision,
    Engine,
    GarbageData,
    NullSink,
    Outcome,
    RequestContext,
    SessionState,
    Signals,
    StepRecord,
    load_policies,
)
from resilience._holdout import bucket as holdout_bucket

from .happy_path import (
    HOLDOUT_PERCENT,
    HOLDOUT_SALT,
    PROFILES,
    REQUEST,
    SESSIONS,
    HandWritten,
    async_loop,
    async_sources,
    policy_text,
    sync_loop,
    sync_sources,
)
from .interleaved import Comparison, compare

__all__ = ["Naive", "run"]

BUDGET = 0.030  # the policy's budget
TIER_TIMEOUT = 0.010  # the session tier's timeout
PROFILE_TIMEOUT = 0.005  # its profile read's own cutoff


async def _async_sessions(key: str) -> SessionState | None:
    """The happy path's session store as a coroutine function, as the engine's is."""
    return SESSIONS(key)


async def _async_profiles(key: str) -> Affinities | None:
    return PROFILES(key)


class Naive(HandWritten):
    """The happy path's session tier built from pybreaker, tenacity, a thread pool and structlog.

    The domain work (the blend, the signals, the stale-cache feed) and the kill switch, holdout
    and error-rate window are the hand-written baseline's (no chosen library has an error-rate
    window); the store reads and the logging are the libraries'.

    Args:
        version: the engine's config version, shown in the trace as the engine shows it.
        log_file: where structlog's console renderer writes (``os.devnull``, opened).
    """

    def __init__(self, version: str, log_file: TextIO) -> None:
        super().__init__(version)
        self.session_cb = pybreaker.CircuitBreaker(
            fail_max=5, reset_timeout=5, name="session_store"
        )
        self.profile_cb = pybreaker.CircuitBreaker(
            fail_max=5, reset_timeout=5, name="profile_store"
        )
        self.session_retry = Retrying(stop=stop_after_attempt(2), reraise=True)
        self.profile_retry = Retrying(stop=stop_after_attempt(2), reraise=True)
        self.session_aretry = AsyncRetrying(stop=stop_after_attempt(2), reraise=True)
        self.profile_aretry = AsyncRetrying(stop=stop_after_attempt(2), reraise=True)
        self.pool = ThreadPoolExecutor(thread_name_prefix="naive-store")
        # structlog as shipped: the default processors, no configure(), nothing global touched.
        self.log = structlog.wrap_logger(
            structlog.PrintLogger(file=log_file),
            processors=list(structlog.get_config()["processors"]),
        )

    def close(self) -> None:
        """Shut the thread pool down, its threads joined."""
        self.pool.shutdown(wait=True)

    # -- sync ---------------------------------------------------------------------------------

    def _in_pool(self, read: Callable[[str], object], key: str, deadline: float) -> object:
        return self.pool.submit(read, key).result(timeout=max(deadline - time.perf_counter(), 0.0))

    def _read(
        self,
        breaker: pybreaker.CircuitBreaker,
        retrying: Retrying,
        read: Callable[[str], object],
        key: str,
        deadline: float,
    ) -> object:
        return breaker.call(retrying, self._in_pool, read, key, deadline)

    def decide(self, request: RequestContext) -> Decision:
        now = time.perf_counter
        start = now()
        budget = BUDGET
        if request.time_left is not None and request.time_left < budget:
            budget = max(request.time_left, 0.0)
        deadline = start + budget
        allowed, guard_record = self._guard(request, now)
        t0 = now()
        timeout = min(TIER_TIMEOUT, deadline - t0)
        tier_deadline = t0 + timeout
        signals: Signals | None = None
        outcome, detail = Outcome.MISS, ""
        try:
            session_id = request.session_id
            state: object = None
            if session_id and allowed:
                state = self._read(
                    self.session_cb, self.session_retry, SESSIONS, session_id, tier_deadline
                )
            if type(state) is SessionState and state.clicks:
                profile: object = None
                if request.user_id:
                    wait_until = min(now() + PROFILE_TIMEOUT, tier_deadline)
                    try:
                        profile = self._read(
                            self.profile_cb,
                            self.profile_retry,
                            PROFILES,
                            request.user_id,
                            wait_until,
                        )
                    except Exception:
                        profile = None
                signals = self._signals(session_id or "", state, profile, t0, timeout)
                outcome = Outcome.OK
        except pybreaker.CircuitBreakerError:
            outcome, detail = Outcome.BREAKER_OPEN, ""
        except TimeoutError:
            outcome, detail = Outcome.TIMEOUT, "thread-pool timeout"
        except GarbageData as exc:
            outcome, detail = Outcome.GARBAGE, str(exc)
        except Exception as exc:
            outcome, detail = Outcome.ERROR, type(exc).__name__
        return self._finish(
            request, start, deadline, t0, timeout, outcome, detail, signals, [guard_record]
        )

    # -- asyncio ------------------------------------------------------------------------------

    async def _aread(
        self,
        breaker: pybreaker.CircuitBreaker,
        retrying: AsyncRetrying,
        read: Callable[[str], Awaitable[object]],
        key: str,
        deadline: float,
    ) -> object:
        async def attempt() -> object:
            return await asyncio.wait_for(read(key), max(deadline - time.perf_counter(), 0.0))

        # pybreaker.call returns the coroutine that retrying(attempt) creates: awaited here.
        coroutine: Awaitable[object] = breaker.call(retrying, attempt)
        return await coroutine

    async def adecide(self, request: RequestContext) -> Decision:
        now = time.perf_counter
        start = now()
        budget = BUDGET
        if request.time_left is not None and request.time_left < budget:
            budget = max(request.time_left, 0.0)
        deadline = start + budget
        allowed, guard_record = self._guard(request, now)
        t0 = now()
        timeout = min(TIER_TIMEOUT, deadline - t0)
        tier_deadline = t0 + timeout
        signals: Signals | None = None
        outcome, detail = Outcome.MISS, ""
        try:
            session_id = request.session_id
            state: object = None
            if session_id and allowed:
                state = await self._aread(
                    self.session_cb,
                    self.session_aretry,
                    _async_sessions,
                    session_id,
                    tier_deadline,
                )
            if type(state) is SessionState and state.clicks:
                profile: object = None
                if request.user_id:
                    wait_until = min(now() + PROFILE_TIMEOUT, tier_deadline)
                    try:
                        profile = await self._aread(
                            self.profile_cb,
                            self.profile_aretry,
                            _async_profiles,
                            request.user_id,
                            wait_until,
                        )
                    except Exception:
                        profile = None
                signals = self._signals(session_id or "", state, profile, t0, timeout)
                outcome = Outcome.OK
        except pybreaker.CircuitBreakerError:
            outcome, detail = Outcome.BREAKER_OPEN, ""
        except TimeoutError:
            outcome, detail = Outcome.TIMEOUT, "cancelled at deadline"
        except GarbageData as exc:
            outcome, detail = Outcome.GARBAGE, str(exc)
        except Exception as exc:
            outcome, detail = Outcome.ERROR, type(exc).__name__
        return self._finish(
            request, start, deadline, t0, timeout, outcome, detail, signals, [guard_record]
        )

    # -- shared by both -----------------------------------------------------------------------

    def _guard(self, request: RequestContext, now: Callable[[], float]) -> tuple[bool, StepRecord]:
        allowed = self.switches.get("search", True)
        if request.user_id:  # REQUEST's user is in the treatment group
            allowed = allowed and (
                holdout_bucket(HOLDOUT_SALT, request.user_id) >= HOLDOUT_PERCENT * 100
            )
        g0 = now()
        allowed = allowed and self.guard.allowed(g0)
        record = StepRecord("error_rate", Outcome.OK, int((now() - g0) * 1e6 + 0.5))
        self.log.info(
            "step",
            policy="search",
            step=record.step,
            outcome=record.outcome.value,
            elapsed_us=record.elapsed_us,
        )
        return allowed, record

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
        """The baseline's decision, with its session record logged as structlog would."""
        decision = super()._finish(
            request, start, deadline, t0, timeout, outcome, detail, signals, records
        )
        record = decision.trace.steps[-1]
        self.log.info(
            "step",
            policy="search",
            step=record.step,
            outcome=record.outcome.value,
            elapsed_us=record.elapsed_us,
            detail=record.detail,
        )
        return decision


def _figures(result: Comparison) -> dict[str, float | int]:
    return {
        "speedup": round(result.ratio, 3),
        "engine_ns": round(result.baseline_ns, 1),
        "naive_ns": round(result.subject_ns, 1),
        "repeats": result.repeats,
        "calls_per_repeat": result.calls,
    }


def _check(naive: Decision, engine: Decision) -> None:
    assert engine.trace.served == "session", engine.trace
    assert naive.trace.outcome_of("session") is Outcome.OK, naive.trace
    assert naive.signals == engine.signals, (naive.signals, engine.signals)


def run(
    *, quick: bool, calls: int | None = None, repeats: int | None = None
) -> dict[str, dict[str, float | int]]:
    """The naive composition over the engine, per decision: ``{"sync": {...}, "async": {...}}``.

    Each holds ``speedup`` (naive time over the engine's, median of per-repeat ratios),
    ``engine_ns``, ``naive_ns``, ``repeats`` and ``calls_per_repeat``. ``calls`` and
    ``repeats`` exist for the smoke tests; the figures use the defaults.
    """
    default_calls, default_repeats = (500, 7) if quick else (2_000, 15)
    calls = calls or default_calls
    repeats = repeats or default_repeats
    policies = load_policies(policy_text())
    results: dict[str, dict[str, float | int]] = {}
    with open(os.devnull, "w") as devnull:
        with Engine(policies, sync_sources(), events=NullSink(), seed=1) as engine:
            naive = Naive(engine.config_version(), devnull)
            try:
                _check(naive.decide(REQUEST), engine.decide(REQUEST))
                results["sync"] = _figures(
                    compare(
                        sync_loop(naive.decide),
                        sync_loop(engine.decide),
                        calls=calls,
                        repeats=repeats,
                    )
                )
            finally:
                naive.close()
        loop = asyncio.new_event_loop()
        try:
            with Engine(policies, async_sources(), events=NullSink(), seed=1) as engine:
                naive = Naive(engine.config_version(), devnull)
                try:
                    _check(
                        loop.run_until_complete(naive.adecide(REQUEST)),
                        loop.run_until_complete(engine.adecide(REQUEST)),
                    )
                    results["async"] = _figures(
                        compare(
                            async_loop(naive.adecide, loop),
                            async_loop(engine.adecide, loop),
                            calls=calls,
                            repeats=repeats,
                        )
                    )
                finally:
                    naive.close()
        finally:
            loop.close()
    return results
