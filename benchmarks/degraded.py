"""Degraded paths: what a decision costs when personalization cannot, or may not, run in full.

Every path runs the happy path's policy (``happy_path.policy_text()``: the reference file without
post steps, plus a 10% holdout) with the happy path's in-memory stores, and is timed against a
second engine on the same policy where the ``session`` tier serves (the happy path), interleaved
(``compare``), sync and asyncio. The figure is the degraded decision over the happy one.

- ``session_failing``: the session store raises ``ConnectionError`` at once; the chain falls
  through to ``stale_cache`` (filled by one happy decision of the same engine before the store
  was switched to failing). So that the figure stays "a failing store", not "an open breaker",
  this engine's policy declares the session store's breaker with ``failure_rate: 1.0``: a failure
  share cannot exceed 1, so failures never open it (``minimum_calls`` cannot do the same: it may
  not exceed a count window's ``size``, at most 100,000, and a full run makes more calls). The
  session step's outcome is checked to be ``error`` before and after timing.
- ``breaker_open``: the session store's breaker forced open after one happy decision filled
  the stale cache; ``stale_cache`` serves. Failing fast must cost less than serving.
- ``kill_switch``: the policy switched off by its flag (``flags.set("search", "off")``): the
  terminal tier alone serves, reason ``switched_off``.
- ``holdout``: a request of ``HELD_OUT_USER`` (same session and candidates): the terminal tier
  alone serves, reason ``holdout``.

The served tier (and the session step's outcome) is checked before and after timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from resilience import (
    Decision,
    Engine,
    NullSink,
    Outcome,
    PolicySet,
    Reason,
    RequestContext,
    SessionState,
    SourceFunction,
    load_policies,
)

from .happy_path import (
    HELD_OUT_USER,
    REQUEST,
    SESSIONS,
    async_loop,
    async_sources,
    policy_text,
    sync_loop,
    sync_sources,
)
from .interleaved import compare

__all__ = ["HELD_OUT_REQUEST", "PATHS", "SwitchableSessions", "failing_policy_text", "run"]

#: The degraded paths, in the order they are measured and reported.
PATHS = ("session_failing", "breaker_open", "kill_switch", "holdout")

#: REQUEST with a user the holdout keeps: same session, same candidates.
HELD_OUT_REQUEST = dataclasses.replace(REQUEST, user_id=HELD_OUT_USER)


class SwitchableSessions:
    """The happy path's session store, until ``failing`` is set: then it raises at once."""

    def __init__(self) -> None:
        self.failing = False

    def get(self, key: str) -> SessionState | None:
        if self.failing:
            raise ConnectionError("session store down")
        return SESSIONS(key)

    async def aget(self, key: str) -> SessionState | None:
        if self.failing:
            raise ConnectionError("session store down")
        return SESSIONS(key)


def failing_policy_text() -> str:
    """The happy path's policy, with a session-store breaker that failures never open."""
    text, count = re.subn(
        r"(?ms)(^sources:\n  session_store:\n.*?^      failure_rate: )[0-9.]+",
        r"\g<1>1.0",
        policy_text(),
        count=1,
    )
    if count != 1:
        raise RuntimeError("policies.yaml declares no failure_rate for session_store's breaker")
    return text


class _Expected(NamedTuple):
    """What a path's decisions must show: the tier served, the reason, the session outcome."""

    served: str
    reason: Reason
    session: Outcome | None

    def check(self, decision: Decision) -> Decision:
        trace = decision.trace
        assert trace.served == self.served, trace
        assert trace.reason is self.reason, trace
        assert trace.outcome_of("session") is self.session, trace
        return decision


EXPECTED = {
    "happy": _Expected("session", Reason.PRIMARY, Outcome.OK),
    "session_failing": _Expected("stale_cache", Reason.FALLBACK, Outcome.ERROR),
    "breaker_open": _Expected("stale_cache", Reason.FALLBACK, Outcome.BREAKER_OPEN),
    "kill_switch": _Expected("unpersonalized", Reason.SWITCHED_OFF, None),
    "holdout": _Expected("unpersonalized", Reason.HOLDOUT, None),
}


class _Mode:
    """Sync or asyncio: how to bind sources, decide once, and build a timing loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop

    def sources(self, sessions: SwitchableSessions | None = None) -> dict[str, SourceFunction]:
        if self.loop is None:
            found = sync_sources()
            if sessions is not None:
                found["session_store"] = sessions.get
            return found
        found = async_sources()
        if sessions is not None:
            found["session_store"] = sessions.aget
        return found

    def decide(self, engine: Engine, request: RequestContext = REQUEST) -> Decision:
        if self.loop is None:
            return engine.decide(request)
        return self.loop.run_until_complete(engine.adecide(request))

    def timed(self, engine: Engine, request: RequestContext) -> Callable[[int], None]:
        if self.loop is None:
            return sync_loop(engine.decide, request)
        return async_loop(engine.adecide, self.loop, request)


def _subject(
    path: str, mode: _Mode, policies: PolicySet, failing: PolicySet
) -> tuple[Engine, RequestContext]:
    """An engine set up for ``path`` (its first decisions checked), and the request it serves."""
    sessions = SwitchableSessions()
    if path == "session_failing":
        engine = Engine(failing, mode.sources(sessions), events=NullSink(), seed=1)
    else:
        engine = Engine(policies, mode.sources(), events=NullSink(), seed=1)
    request = HELD_OUT_REQUEST if path == "holdout" else REQUEST
    try:
        if path in {"session_failing", "breaker_open"}:
            EXPECTED["happy"].check(mode.decide(engine))  # fills the stale cache
        if path == "session_failing":
            sessions.failing = True
        elif path == "breaker_open":
            engine.breaker("session_store").force_open()
        elif path == "kill_switch":
            engine.flags.set("search", "off", reason="benchmark")
        EXPECTED[path].check(mode.decide(engine, request))
    except BaseException:
        engine.close()
        raise
    return engine, request


def _measure(
    mode: _Mode, policies: PolicySet, failing: PolicySet, calls: int, repeats: int
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for path in PATHS:
        expected = EXPECTED[path]
        subject, request = _subject(path, mode, policies, failing)
        with subject, Engine(policies, mode.sources(), events=NullSink(), seed=1) as happy:
            EXPECTED["happy"].check(mode.decide(happy))
            figures = compare(
                mode.timed(subject, request),
                mode.timed(happy, REQUEST),
                calls=calls,
                repeats=repeats,
            ).as_dict()
            last = expected.check(mode.decide(subject, request))  # still degraded after the run
            EXPECTED["happy"].check(mode.decide(happy))
            session = last.trace.outcome_of("session")
        results[path] = {
            **figures,
            "served": last.trace.served,
            "reason": last.trace.reason.value,
            "session": session.value if session is not None else None,
        }
    return results


def run(
    *, quick: bool, calls: int | None = None, repeats: int | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each degraded path over the happy path: ``{"sync": {path: {...}}, "async": {...}}``.

    Per path: ``ratio`` (degraded over happy, median of per-repeat ratios), ``subject_ns``,
    ``baseline_ns`` (per-decision medians), ``repeats``, ``calls_per_repeat``, ``served`` (the
    tier that served), ``reason`` (the trace's reason) and ``session`` (the session step's
    outcome, ``None`` when it did not run). ``calls`` and ``repeats`` exist for the smoke tests;
    the figures use the defaults.
    """
    default_calls, default_repeats = (2_000, 9) if quick else (10_000, 15)
    calls = calls or default_calls
    repeats = repeats or default_repeats
    policies = load_policies(policy_text())
    failing = load_policies(failing_policy_text())
    options = failing.source_options("session_store").breaker
    assert options is not None, "the session store declares no breaker"
    assert options.failure_rate == 1.0, options
    results = {"sync": _measure(_Mode(None), policies, failing, calls, repeats)}
    loop = asyncio.new_event_loop()
    try:
        results["async"] = _measure(_Mode(loop), policies, failing, calls, repeats)
    finally:
        loop.close()
    return results
