"""The ``stale_cache`` tier and the signal cache the ``session`` tier feeds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from resilience_plugins.signal_cache import SignalCache

from resilience import (
    Affinities,
    Click,
    Engine,
    Outcome,
    PolicyValidationError,
    RequestContext,
    SessionState,
    Signals,
)
from resilience.testing import FakeClock, FaultySource

POLICY = """
version: 1
default_policy: p
policies:
  p:
    chain:
      - session
      - {type: stale_cache, max_entries: 2}
      - unpersonalized
  other:
    chain:
      - {type: stale_cache, max_entries: 5}
      - unpersonalized
"""


def state(n: int) -> SessionState:
    return SessionState(tuple(Click(f"i{i}", "c", float(i)) for i in range(n)), float(n))


def test_writes_only_when_the_signals_changed() -> None:
    cache = SignalCache(10)
    first = Signals({"a": 1.0}, {}, "session")
    same = Signals({"a": 1.0}, {}, "session")
    cache.remember("s", first, now=100.0)
    cache.remember("s", same, now=150.0)
    found = cache.recall("s")
    assert found is not None
    assert found[0] is first  # equal signals: the entry stays, its timestamp moves
    assert found[1] == 150.0
    changed = Signals({"b": 1.0}, {}, "session")
    cache.remember("s", changed, now=160.0)
    assert cache.recall("s") == (changed, 160.0)


def test_the_cache_is_bounded_lru() -> None:
    cache = SignalCache(2)
    for key in "abc":
        cache.remember(key, Signals({key: 1.0}, {}, "t"), now=0.0)
    assert len(cache) == 2
    assert cache.recall("a") is None


def test_a_late_session_read_does_not_feed_the_cache(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    def slow(key: str) -> SessionState:
        fake_clock.advance(0.050)
        return state(2)

    engine = make_engine(POLICY, {"session_store": slow, "profile_store": {}.get})
    decision = engine.decide(RequestContext(session_id="s"))
    assert decision.trace.outcome_of("session") is Outcome.TIMEOUT
    cache = next(v for v in engine._shared.values() if isinstance(v, SignalCache))
    assert len(cache) == 0


def test_a_profile_change_mid_session_reaches_the_cache(
    make_engine: Callable[..., Engine],
) -> None:
    profiles: dict[str, Affinities] = {}
    sessions = FaultySource({"s": state(1)})
    engine = make_engine(POLICY, {"session_store": sessions, "profile_store": profiles.get})
    engine.decide(RequestContext(session_id="s", user_id="u"))  # anonymous: session only
    profiles["u"] = Affinities({"books": 1.0})  # the user signs in
    fresh = engine.decide(RequestContext(session_id="s", user_id="u"))
    sessions.raises()
    stale = engine.decide(RequestContext(session_id="s", user_id="u"))
    assert stale.trace.served == "stale_cache"
    assert stale.signals is not None and fresh.signals is not None
    assert stale.signals.categories == fresh.signals.categories


def test_shared_caches_take_the_largest_declared_size(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(POLICY, {"session_store": lambda k: state(1), "profile_store": {}.get})
    cache = next(v for v in engine._shared.values() if isinstance(v, SignalCache))
    assert cache.max_entries == 5
    assert cache.readers == ["p.stale_cache", "other.stale_cache"]
    assert cache.writers == ["p.session"]


def test_the_other_policy_serves_what_the_first_cached(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(POLICY, {"session_store": lambda k: state(2), "profile_store": {}.get})
    engine.decide(RequestContext(session_id="s", policy="p"))
    decision = engine.decide(RequestContext(session_id="s", policy="other"))
    assert decision.trace.served == "stale_cache"


def test_a_cache_nobody_feeds_is_rejected_at_build(make_engine: Callable[..., Engine]) -> None:
    text = POLICY.replace("      - session\n", "      - {type: session, cache: other}\n")
    with pytest.raises(PolicyValidationError) as caught:
        make_engine(text, {"session_store": {}.get, "profile_store": {}.get})
    messages = [i.message for i in caught.value.issues]
    assert any("no tier feeds the cache 'session'" in m for m in messages)
    assert caught.value.issues[0].path.endswith("chain[1]")


def test_closing_the_engine_clears_the_cache(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(POLICY, {"session_store": lambda k: state(1), "profile_store": {}.get})
    engine.decide(RequestContext(session_id="s"))
    cache = next(v for v in engine._shared.values() if isinstance(v, SignalCache))
    assert len(cache) == 1
    engine.close()
    assert len(cache) == 0


def test_a_session_tier_feeds_no_cache_that_nobody_reads(
    make_engine: Callable[..., Engine],
) -> None:
    text = """
version: 1
default_policy: p
policies:
  p:
    chain: [session, unpersonalized]
"""
    engine = make_engine(text, {"session_store": lambda k: state(1), "profile_store": {}.get})
    engine.decide(RequestContext(session_id="s"))
    cache = next(v for v in engine._shared.values() if isinstance(v, SignalCache))
    assert len(cache) == 0
