"""``resilience demo``: requests through a policy file, against healthy and broken stores.

A small in-memory world (sessions, profiles, segments) served by sources that can be switched
to fail: raise, answer slowly, or hang. Each request's decision trace is printed. Real clocks:
the timings are real.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TextIO

from ._engine import Engine
from ._model import Affinities, Candidate, Click, RequestContext, SessionState
from ._policy import PolicySet
from ._sources import SourceFunction
from .events import NullSink

__all__ = ["run_demo"]


class _SwitchableStore:
    """An in-memory store whose behaviour the demo flips between steps."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.mode = "healthy"

    def __call__(self, key: str) -> Any:
        if self.mode == "down":
            raise ConnectionError("session store unreachable")
        if self.mode == "slow":
            time.sleep(0.050)  # a blocking client with no socket timeout: 50 ms
        return self.data.get(key)

    async def async_(self, key: str) -> Any:
        if self.mode == "hang":
            await asyncio.sleep(3.0)  # the 3 s hang the brief warns about; cut at the deadline
        return self(key)


def _world() -> tuple[_SwitchableStore, dict[str, Any], dict[str, Any], list[Candidate]]:
    now = time.time()
    sessions = {
        "s-returning": SessionState(
            (
                Click("i7", "shoes", now - 40),
                Click("i9", "shoes", now - 20),
                Click("i3", "bags", now - 5),
            ),
            now - 5,
        ),
        "s-new": SessionState((), None),
    }
    profiles = {"u-alice": Affinities({"books": 5.0, "shoes": 1.0})}
    segments = {"young-urban": Affinities({"electronics": 3.0, "shoes": 2.0})}
    candidates = [
        Candidate(f"i{n}", 1.0 - n / 20, cat, now - n * 86_400)
        for n, cat in enumerate(["shoes", "books", "bags", "electronics", "shoes", "books"])
    ]
    return _SwitchableStore(sessions), profiles, segments, candidates


def run_demo(policies: PolicySet, out: TextIO) -> int:
    """Run the demo requests through ``policies``; returns the exit code."""
    store, profiles, segments, candidates = _world()
    sync_sources: dict[str, SourceFunction] = {
        "session_store": store,
        "profile_store": profiles.get,
        "segment_store": segments.get,
    }
    async_sources = {**sync_sources, "session_store": store.async_}
    returning = RequestContext(
        user_id="u-alice",
        session_id="s-returning",
        request_id="r1",
        query="running shoes",
        candidates=candidates,
    )

    def show(title: str, engine: Engine, request: RequestContext, is_async: bool = False) -> None:
        decision = asyncio.run(engine.adecide(request)) if is_async else engine.decide(request)
        out.write(f"\n## {title}\n{decision.trace}\n")
        if decision.signals is None:
            out.write("  signals: none (un-personalized results)\n")
            return
        ranked = sorted(decision.signals.categories.items(), key=lambda kv: -kv[1])
        weights = ", ".join(f"{k}={v:.2f}" for k, v in ranked)
        out.write(f"  signals: {weights} (session weight {decision.signals.session_weight:.2f})\n")

    out.write(f"Policies from {policies.file} (version {policies.version})\n")
    with Engine(policies, sync_sources, events=NullSink()) as engine:
        show("returning user, healthy session store", engine, returning)
        show(
            "same user, new session (no clicks yet): long-term profile",
            engine,
            RequestContext(user_id="u-alice", session_id="s-new", request_id="r2"),
        )
        show(
            "new user without profile, known segment",
            engine,
            RequestContext(
                user_id="u-bob", session_id="s-new", segment="young-urban", request_id="r3"
            ),
        )
        show("anonymous visitor", engine, RequestContext(request_id="r4"))
        store.mode = "down"
        show("session store down: last good session state from the stale cache", engine, returning)
        store.mode = "slow"
        show(
            "session store answering in 50ms (sync, blocking): recorded as timeout",
            engine,
            returning,
        )
        store.mode = "healthy"
        show(
            "upstream request has only 0.5ms left",
            engine,
            RequestContext(
                user_id="u-alice", session_id="s-returning", time_left=0.0005, request_id="r7"
            ),
        )
    with Engine(policies, async_sources, events=NullSink()) as engine:
        show("asyncio: healthy session store", engine, returning, is_async=True)
        store.mode = "hang"
        show(
            "asyncio: session store hangs for 3s; cancelled at its 10ms deadline",
            engine,
            RequestContext(user_id="u-alice", session_id="s-returning", request_id="r8"),
            is_async=True,
        )
    return 0
