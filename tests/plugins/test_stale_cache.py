"""The ``stale_cache`` tier and the signal cache the ``session`` tier feeds."""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Callable

import pytest
from cachetools import Cache
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


def held(cache: SignalCache) -> int:
    """Entries the cache really holds, expired or not (``len`` would purge the expired first)."""
    return Cache.__len__(cache._entries)


def ttl_cache(clock: FakeClock, ttl: float, max_entries: int = 10) -> SignalCache:
    cache = SignalCache(max_entries)
    cache.bind_clock(clock.wall)
    cache.ensure_ttl(ttl)
    return cache


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
    cache = next(v for v in engine._generation.shared.values() if isinstance(v, SignalCache))
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
    cache = next(v for v in engine._generation.shared.values() if isinstance(v, SignalCache))
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
    cache = next(v for v in engine._generation.shared.values() if isinstance(v, SignalCache))
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
    cache = next(v for v in engine._generation.shared.values() if isinstance(v, SignalCache))
    assert len(cache) == 0


def test_the_trace_shows_the_age_of_stale_signals(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    sessions = FaultySource({"s": state(2)})
    engine = make_engine(POLICY, {"session_store": sessions, "profile_store": {}.get})
    engine.decide(RequestContext(session_id="s"))
    fake_clock.advance(12.0)
    sessions.raises()
    decision = engine.decide(RequestContext(session_id="s"))
    trace = decision.trace
    assert trace.served == "stale_cache"
    assert [(r.step, r.outcome, r.detail) for r in trace.steps] == [
        ("session", Outcome.ERROR, "ConnectionError"),
        ("stale_cache", Outcome.OK, "age 12.0s"),
    ]
    assert str(trace).endswith("\n  session=error[ConnectionError], stale_cache=ok[age 12.0s]")
    assert decision.signals is not None and decision.signals.note == "age 12.0s"


def test_an_entry_older_than_the_ttl_is_purged_when_read(fake_clock: FakeClock) -> None:
    cache = ttl_cache(fake_clock, 60.0)
    cache.remember("s", Signals({"a": 1.0}, {}, "session"), fake_clock.wall())
    fake_clock.advance(60.0)
    assert cache.recall("s") is not None  # exactly the TTL old: still servable
    fake_clock.advance(0.1)
    assert cache.recall("s") is None
    assert held(cache) == 0


def test_expired_entries_are_purged_by_any_insert_or_access(fake_clock: FakeClock) -> None:
    cache = ttl_cache(fake_clock, 60.0)
    for key in ("a", "b"):
        cache.remember(key, Signals({key: 1.0}, {}, "session"), fake_clock.wall())
    fake_clock.advance(30.0)
    cache.remember("c", Signals({"c": 1.0}, {}, "session"), fake_clock.wall())
    fake_clock.advance(60.1)  # a and b: inserted 90.1s ago, 1.5 TTL; c: 60.1s ago
    cache.remember("d", Signals({"d": 1.0}, {}, "session"), fake_clock.wall())
    assert held(cache) == 2  # c and d; nobody read a or b, yet they are gone
    fake_clock.advance(90.0)
    assert cache.recall("nobody") is None
    assert held(cache) == 0
    assert len(cache) == 0


def test_refreshing_keeps_an_active_entry_alive_past_the_ttl(fake_clock: FakeClock) -> None:
    cache = ttl_cache(fake_clock, 60.0)
    first = Signals({"a": 1.0}, {}, "session")
    cache.remember("s", first, fake_clock.wall())
    for _ in range(20):  # 400s of successful reads, equal signals: no new entry
        fake_clock.advance(20.0)
        cache.remember("s", Signals({"a": 1.0}, {}, "session"), fake_clock.wall())
        cache.remember("other", Signals({"b": 1.0}, {}, "session"), fake_clock.wall())
        found = cache.recall("s")
        assert found is not None
        assert found[0] is first
        assert found[1] == fake_clock.wall()


def test_a_refresh_just_before_reinsertion_still_lasts_the_ttl(fake_clock: FakeClock) -> None:
    # The worst case: refreshed in place (not re-inserted) at the last moment, then the store
    # fails. The entry must stay servable for the whole TTL after that last good read.
    cache = ttl_cache(fake_clock, 60.0)
    signals = Signals({"a": 1.0}, {}, "session")
    cache.remember("s", signals, fake_clock.wall())
    fake_clock.advance(30.0)  # half the TTL: refreshed in place
    last_read = fake_clock.wall()
    cache.remember("s", signals, last_read)
    fake_clock.advance(59.9)
    cache.remember("other", signals, fake_clock.wall())
    assert cache.recall("s") == (signals, last_read)
    fake_clock.advance(0.2)
    assert cache.recall("s") is None
    assert len(cache) == 1


def test_shared_caches_take_the_largest_declared_ttl(
    make_engine: Callable[..., Engine],
) -> None:
    text = POLICY.replace("max_entries: 5}", "max_entries: 5, max_age: 10m}")
    engine = make_engine(text, {"session_store": lambda k: state(1), "profile_store": {}.get})
    cache = next(v for v in engine._generation.shared.values() if isinstance(v, SignalCache))
    assert cache.ttl == 600.0
    cache.ensure_ttl(30.0)
    assert cache.ttl == 600.0


def test_the_cache_expires_on_the_engine_clock(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    # The session tier builds first and makes the cache; the stale_cache tier binds the clock.
    engine = make_engine(POLICY, {"session_store": lambda k: state(1), "profile_store": {}.get})
    engine.decide(RequestContext(session_id="s"))
    cache = next(v for v in engine._generation.shared.values() if isinstance(v, SignalCache))
    fake_clock.advance(300.0)  # max_age is 5m
    served = engine.decide(RequestContext(session_id="s", policy="other"))
    assert served.trace.served == "stale_cache"
    fake_clock.advance(0.1)
    missed = engine.decide(RequestContext(session_id="s", policy="other"))
    assert missed.trace.outcome_of("stale_cache") is Outcome.MISS
    assert len(cache) == 0


def test_a_million_sessions_stay_within_the_bound(fake_clock: FakeClock) -> None:
    """1,000,000 distinct sessions through a 1,000-entry cache: the entry count never passes
    the bound, and memory does not grow with the number of sessions seen.

    tracemalloc makes every write several times slower, so it traces the last 20,000 writes
    (after 980,000 sessions, all 1,000 entries are replaced twenty times in that window, so it
    sees the whole cache); the allocated block count, which costs nothing to read, watches the
    entire run.
    """
    cache = ttl_cache(fake_clock, 300.0, max_entries=1000)
    signals = Signals({"c": 1.0}, {"i": 1.0}, "session")
    now = fake_clock.wall()
    started = time.perf_counter()
    blocks = sys.getallocatedblocks()
    most_blocks = 0
    for i in range(980_000):
        cache.remember(f"s{i}", signals, now)
        if i % 10_000 == 9_999:
            assert len(cache) <= 1000
            most_blocks = max(most_blocks, sys.getallocatedblocks() - blocks)
    tracemalloc.start()
    try:
        for i in range(980_000, 1_000_000):
            cache.remember(f"s{i}", signals, now)
            if i % 10_000 == 9_999:
                assert len(cache) <= 1000
                most_blocks = max(most_blocks, sys.getallocatedblocks() - blocks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert len(cache) == 1000
    assert cache.recall("s999999") is not None
    assert cache.recall("s0") is None
    # Measured: peak ~0.4 MB, block growth ~6,000 (a leak of one object a session: 1,000,000).
    assert peak < 2_000_000, f"tracemalloc peak {peak} bytes"
    assert most_blocks < 50_000, f"{most_blocks} more blocks allocated"
    print(f"1M sessions: {elapsed:.1f}s, peak {peak / 1e6:.2f} MB, +{most_blocks} blocks")


def _signals(n: int) -> Signals:
    return Signals({f"c{n}": 1.0}, {}, "t")


def test_settle_leaves_an_unchanged_cache_alone_and_a_smaller_one_keeps_the_most_recent() -> None:
    clock = FakeClock()
    cache = SignalCache(timer=clock.wall)
    cache.ensure_capacity(100)
    cache.ensure_ttl(300.0)
    for n in range(10):
        cache.remember(f"s{n}", _signals(n), clock.wall() - 100 + n)  # s9 confirmed last
    cache.remember("s0", _signals(0), clock.wall())  # ... then s0 again: the most recent
    entries = cache._entries
    cache.renew()
    cache.ensure_capacity(100)
    cache.ensure_ttl(300.0)
    cache.settle()
    assert cache._entries is entries  # same shape: no rebuild, no pause for requests

    cache.renew()
    cache.ensure_capacity(3)
    cache.ensure_ttl(300.0)
    cache.settle()
    assert cache.max_entries == 3
    assert {key for key in ("s0", "s8", "s9") if cache.recall(key) is not None} == {
        "s0",
        "s8",
        "s9",
    }


def test_writes_made_while_settle_resizes_are_kept() -> None:
    clock = FakeClock()
    armed: list[bool] = []

    def timer() -> float:  # settle()'s first reading without the lock: a request writes then
        if armed == [True] and not cache._lock.locked():
            armed.append(False)
            cache.remember("during", _signals(2), clock.wall())
        return clock.wall()

    cache = SignalCache(timer=timer)
    cache.ensure_capacity(100)
    cache.remember("old", _signals(1), clock.wall())
    cache.renew()
    cache.ensure_capacity(50)
    armed.append(True)
    cache.settle()
    assert armed == [True, False]  # the write did happen mid-settle
    assert cache.max_entries == 50
    assert cache.recall("old") is not None
    assert cache.recall("during") is not None
