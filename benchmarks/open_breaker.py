"""Decisions while the session store's breaker is open: failing fast must cost less than serving.

The reference ``policies.yaml`` with in-memory sources (the happy path's fixtures). The subject
is an engine whose ``session_store`` breaker is forced open after one happy decision filled the
stale cache: each decision is refused at the session tier (``breaker_open``) and served from
``stale_cache``. The baseline is a second engine on the happy path (``session`` serves). Both
run interleaved (``compare``); the figure is open over happy, sync and asyncio.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from resilience import (
    Affinities,
    Decision,
    Engine,
    NullSink,
    Outcome,
    PolicySet,
    SessionState,
    SourceFunction,
    load_policies,
)

from .happy_path import (
    PROFILES,
    REQUEST,
    SEGMENTS,
    SESSIONS,
    async_loop,
    sync_loop,
    without_post,
)
from .interleaved import compare

__all__ = ["run"]

ROOT = Path(__file__).resolve().parent.parent


async def _async_sessions(key: str) -> SessionState | None:
    return SESSIONS(key)


async def _async_profiles(key: str) -> Affinities | None:
    return PROFILES(key)


def _sync_sources() -> dict[str, SourceFunction]:
    return {"session_store": SESSIONS, "profile_store": PROFILES, "segment_store": SEGMENTS}


def _async_sources() -> dict[str, SourceFunction]:
    return {
        **_sync_sources(),
        "session_store": _async_sessions,
        "profile_store": _async_profiles,
    }


def _check_open(decision: Decision) -> None:
    trace = decision.trace
    assert trace.served == "stale_cache", trace
    assert trace.outcome_of("session") is Outcome.BREAKER_OPEN, trace
    assert decision.signals is not None, trace


def _check_happy(decision: Decision) -> None:
    assert decision.trace.served == "session", decision.trace


def _measure_sync(policies: PolicySet, calls: int, repeats: int) -> dict[str, Any]:
    with (
        Engine(policies, _sync_sources(), events=NullSink(), seed=1) as opened,
        Engine(policies, _sync_sources(), events=NullSink(), seed=1) as happy,
    ):
        _check_happy(opened.decide(REQUEST))  # fills the stale cache
        opened.breaker("session_store").force_open()
        _check_open(opened.decide(REQUEST))
        _check_happy(happy.decide(REQUEST))
        figures = compare(
            sync_loop(opened.decide), sync_loop(happy.decide), calls=calls, repeats=repeats
        ).as_dict()
        last = opened.decide(REQUEST)
        _check_open(last)  # still open and still served from the cache after the run
        _check_happy(happy.decide(REQUEST))
    return {**figures, "served": last.trace.served}


def _measure_async(policies: PolicySet, calls: int, repeats: int) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    try:
        with (
            Engine(policies, _async_sources(), events=NullSink(), seed=1) as opened,
            Engine(policies, _async_sources(), events=NullSink(), seed=1) as happy,
        ):
            _check_happy(loop.run_until_complete(opened.adecide(REQUEST)))
            opened.breaker("session_store").force_open()
            _check_open(loop.run_until_complete(opened.adecide(REQUEST)))
            _check_happy(loop.run_until_complete(happy.adecide(REQUEST)))
            figures = compare(
                async_loop(opened.adecide, loop),
                async_loop(happy.adecide, loop),
                calls=calls,
                repeats=repeats,
            ).as_dict()
            last = loop.run_until_complete(opened.adecide(REQUEST))
            _check_open(last)
            _check_happy(loop.run_until_complete(happy.adecide(REQUEST)))
    finally:
        loop.close()
    return {**figures, "served": last.trace.served}


def run(
    *, quick: bool, calls: int | None = None, repeats: int | None = None
) -> dict[str, dict[str, Any]]:
    """Open-breaker decisions over happy-path ones; ``{"sync": {...}, "async": {...}}``.

    ``calls`` and ``repeats`` exist for the smoke tests; the figures use the defaults.
    """
    default_calls, default_repeats = (2_000, 9) if quick else (10_000, 15)
    calls = calls or default_calls
    repeats = repeats or default_repeats
    policies = load_policies(without_post((ROOT / "policies.yaml").read_text()))
    return {
        "sync": _measure_sync(policies, calls, repeats),
        "async": _measure_async(policies, calls, repeats),
    }
