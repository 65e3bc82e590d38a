"""The ``stale_cache`` tier and the signal cache the ``session`` tier feeds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from resilience_plugins.signal_cache import SignalCache

from resilience import Click, Engine, PolicyValidationError, RequestContext, SessionState, Signals

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


def test_writes_only_when_the_session_changed() -> None:
    cache = SignalCache(10)
    first = Signals({"a": 1.0}, {}, "session")
    second = Signals({"b": 1.0}, {}, "session")
    cache.remember("s", first, (1, 1.0), now=100.0)
    cache.remember("s", second, (1, 1.0), now=150.0)
    assert cache.recall("s") == (first, 150.0)  # same version: timestamp refreshed only
    cache.remember("s", second, (2, 2.0), now=160.0)
    assert cache.recall("s") == (second, 160.0)


def test_the_cache_is_bounded_lru() -> None:
    cache = SignalCache(2)
    for key in "abc":
        cache.remember(key, Signals({}, {}, "t"), key, now=0.0)
    assert len(cache) == 2
    assert cache.recall("a") is None


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
