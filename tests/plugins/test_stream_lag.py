"""The ``stream_lag`` guard: threshold, hysteresis and the missing-watermark rule, on the test
kit's clock; and the guard in an engine, reading its watermark off the request path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from resilience_plugins.guards.stream_lag import LagState, StreamLagParams

from resilience import (
    Affinities,
    Engine,
    Outcome,
    PolicyValidationError,
    Reason,
    RequestContext,
    load_policies,
)
from resilience.testing import FakeClock, RecordingSink, RedisServer, wait_for

PARAMS = StreamLagParams(
    source="watermarks", max_lag=30.0, resume_below=10.0, hold_for=30.0, grace=10.0
)


def state(clock: FakeClock) -> LagState:
    return LagState(PARAMS, clock.wall())


def test_a_lag_above_the_threshold_trips_and_one_at_it_does_not(fake_clock: FakeClock) -> None:
    lag = state(fake_clock)
    now = fake_clock.wall()
    assert lag.observe(now, now - 30.0) is None  # at the threshold: still on
    assert lag.verdict is None
    assert lag.observe(now, now - 30.5) == "tripped"
    assert lag.verdict == "stream lag 30s above 30s"


def test_a_failed_read_makes_the_lag_unknown_whether_or_not_it_trips(fake_clock: FakeClock) -> None:
    lag = state(fake_clock)
    now = fake_clock.wall()
    lag.observe(now, now - 45.0)
    assert (lag.verdict, lag.lag) == ("stream lag 45s above 30s", 45.0)
    assert lag.observe(now + 1.0, None) is None  # off already: no transition...
    assert lag.lag is None  # ...but the gauge must not go on showing 45 s (it reads NaN)
    fresh = state(fake_clock)
    fresh.observe(now, now - 2.0)
    assert fresh.observe(now + 1.0, None) is None  # within its grace: still on
    assert (fresh.verdict, fresh.lag) == (None, None)


def test_it_resumes_only_after_the_lag_stayed_below_resume_below_for_hold_for(
    fake_clock: FakeClock,
) -> None:
    lag = state(fake_clock)
    wall = fake_clock.wall
    lag.observe(wall(), wall() - 60.0)
    assert lag.verdict is not None
    # Caught up to 20 s: below max_lag but not below resume_below: stays off.
    fake_clock.advance(5)
    assert lag.observe(wall(), wall() - 20.0) is None
    assert lag.verdict is not None
    # Below resume_below from now on; 29 s later still off, at 30 s on.
    fake_clock.advance(5)
    lag.observe(wall(), wall() - 5.0)
    fake_clock.advance(29)
    assert lag.observe(wall(), wall() - 5.0) is None
    assert lag.verdict is not None
    fake_clock.advance(1)
    assert lag.observe(wall(), wall() - 5.0) == "recovered"
    assert lag.verdict is None


def test_a_spike_during_the_hold_starts_the_hold_again(fake_clock: FakeClock) -> None:
    lag = state(fake_clock)
    wall = fake_clock.wall
    lag.observe(wall(), wall() - 60.0)
    lag.observe(wall(), wall() - 1.0)
    fake_clock.advance(20)
    lag.observe(wall(), wall() - 15.0)  # back above resume_below: the hold restarts
    fake_clock.advance(1)
    lag.observe(wall(), wall() - 1.0)
    fake_clock.advance(29)
    assert lag.observe(wall(), wall() - 1.0) is None
    fake_clock.advance(1)
    assert lag.observe(wall(), wall() - 1.0) == "recovered"


def test_a_missing_watermark_counts_as_stale_after_the_grace(fake_clock: FakeClock) -> None:
    lag = state(fake_clock)
    wall = fake_clock.wall
    lag.observe(wall(), wall() - 1.0)
    fake_clock.advance(10)
    assert lag.observe(wall(), None) is None  # within the grace
    fake_clock.advance(0.5)
    assert lag.observe(wall(), None) == "tripped"
    assert lag.verdict == "watermark unreadable for 10s"
    # A good read starts the hold; unreadable reads meanwhile restart it.
    lag.observe(wall(), wall() - 1.0)
    fake_clock.advance(15)
    lag.observe(wall(), None)
    fake_clock.advance(1)
    lag.observe(wall(), wall() - 1.0)
    fake_clock.advance(30)
    assert lag.observe(wall(), wall() - 1.0) == "recovered"


def test_a_watermark_never_read_counts_from_the_start(fake_clock: FakeClock) -> None:
    lag = state(fake_clock)
    fake_clock.advance(11)
    assert lag.observe(fake_clock.wall(), None) == "tripped"


def test_resume_below_above_max_lag_is_refused() -> None:
    text = """
version: 1
policies:
  p:
    guards: [{type: stream_lag, source: watermarks, max_lag: 10s, resume_below: 20s}]
    chain: [unpersonalized]
"""
    with pytest.raises(PolicyValidationError, match="could never switch back on"):
        load_policies(text)


POLICY = """
version: 1
default_policy: p
policies:
  p:
    guards:
      - {type: stream_lag, source: watermarks, max_lag: 30s, resume_below: 10s, hold_for: 0s,
         poll_every: 1h}
    chain: [profile_only, unpersonalized]
"""


@pytest.mark.parametrize("kind", ["number", "text", "bytes", "async"])
def test_in_an_engine_the_guard_reads_off_the_request_path_and_switches_personalization(
    make_engine: Callable[..., Engine],
    fake_clock: FakeClock,
    recording_sink: RecordingSink,
    kind: str,
) -> None:
    watermark = {"value": fake_clock.wall() - 1.0}
    reads: list[str] = []

    def plain(key: str) -> Any:
        reads.append(key)
        value = watermark["value"]
        return {"number": value, "text": repr(value), "bytes": repr(value).encode()}[kind]

    async def async_source(key: str) -> Any:
        reads.append(key)
        return watermark["value"]

    sources = {
        "watermarks": async_source if kind == "async" else plain,
        "profile_store": {"u": Affinities({"books": 1.0})}.get,
    }
    engine = make_engine(POLICY, sources)
    watch = engine._generation.compiled["p"].guards[0].watch  # type: ignore[attr-defined]
    assert wait_for(lambda: watch.reads >= 1, 30)  # its first read, on its thread
    request = RequestContext(user_id="u")
    for _ in range(5):
        assert engine.decide(request).trace.reason is Reason.PRIMARY
    assert reads == ["watermark"]  # decisions read nothing

    watermark["value"] = fake_clock.wall() - 45.0
    watch.poll()
    decision = engine.decide(request)
    assert decision.trace.reason is Reason.GUARD
    assert decision.trace.outcome_of("stream_lag") is Outcome.DISABLED
    assert [e["reason"] for e in recording_sink.of("resilience.stream_lag.tripped")] == [
        "stream lag 45s above 30s"
    ]
    watermark["value"] = fake_clock.wall() - 1.0
    watch.poll()
    assert engine.decide(request).trace.reason is Reason.PRIMARY
    assert recording_sink.of("resilience.stream_lag.recovered")[0]["lag_s"] == 1.0


def test_an_unchanged_guard_keeps_its_watch_across_a_reload(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    sources = {
        "watermarks": lambda key: fake_clock.wall() - 100.0,
        "profile_store": {"u": Affinities({"books": 1.0})}.get,
    }
    engine = make_engine(POLICY, sources)
    watch = engine._generation.compiled["p"].guards[0].watch  # type: ignore[attr-defined]
    assert wait_for(lambda: watch.verdict is not None, 30)
    assert engine.reload(
        POLICY.replace("chain: [profile_only, unpersonalized]", "chain: [unpersonalized]")
    ).ok
    assert engine._generation.compiled["p"].guards[0].watch is watch  # type: ignore[attr-defined]
    engine.close()
    assert wait_for(lambda: watch._thread is not None and not watch._thread.is_alive(), 30)


def test_the_watermark_can_come_straight_from_the_processors_redis_key(
    make_engine: Callable[..., Engine], fake_clock: FakeClock, redis_server: RedisServer
) -> None:
    redis_server.set("stream:watermark", repr(fake_clock.wall() - 2.0))
    text = POLICY.replace(
        "source: watermarks,",
        f'redis: {{url: "{redis_server.url}"}}, key: "stream:watermark", grace: 5s,',
    )
    engine = make_engine(text, {"profile_store": {"u": Affinities({"books": 1.0})}.get})
    watch = engine._generation.compiled["p"].guards[0].watch  # type: ignore[attr-defined]
    assert wait_for(lambda: watch.reads >= 1, 30)
    assert watch.state.lag == pytest.approx(2.0)
    redis_server.stop()  # the processor's Redis is gone: unreadable, stale after the grace
    fake_clock.advance(6)
    watch.poll()
    assert watch.verdict == "watermark unreadable for 6s"
    assert engine.decide(RequestContext(user_id="u")).trace.reason is Reason.GUARD


@pytest.mark.parametrize(
    ("guard", "message"),
    [
        ("{type: stream_lag}", "exactly one of source and redis"),
        ('{type: stream_lag, source: w, redis: {url: "redis://h"}}', "exactly one of source"),
        ("{type: stream_lag, redis: {}}", "exactly one of url and url_env"),
    ],
)
def test_one_place_to_read_the_watermark_from(guard: str, message: str) -> None:
    text = f"version: 1\npolicies:\n  p:\n    guards: [{guard}]\n    chain: [unpersonalized]\n"
    with pytest.raises(PolicyValidationError, match=message):
        load_policies(text)


def _engine_with(
    make_engine: Callable[..., Engine], read: Any, extra: str = ""
) -> tuple[Engine, Any]:
    text = POLICY.replace("poll_every: 1h}", f"poll_every: 1h, read_timeout: 50ms{extra}}}")
    engine = make_engine(
        text, {"watermarks": read, "profile_store": {"u": Affinities({"books": 1.0})}.get}
    )
    watch = engine._generation.compiled["p"].guards[0].watch  # type: ignore[attr-defined]
    assert wait_for(lambda: watch.reads >= 1, 30)
    return engine, watch


def test_a_read_that_hangs_counts_as_failed_and_trips_after_the_grace(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    release = threading.Event()
    hanging = {"on": False}

    def read(key: str) -> float:
        if hanging["on"]:
            release.wait(30)  # ignores its timeout, as a stuck client would
        return fake_clock.wall() - 1.0

    engine, watch = _engine_with(make_engine, read, ", grace: 5s")
    try:
        hanging["on"] = True
        fake_clock.advance(6)
        watch.poll()  # returns after read_timeout: the poller is never stuck
        assert watch.verdict == "watermark unreadable for 6s"
        assert engine.decide(RequestContext(user_id="u")).trace.reason is Reason.GUARD
    finally:
        release.set()


def test_a_watermark_ahead_of_the_clock_is_no_watermark(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    # Milliseconds where seconds are meant: two minutes behind, but it reads as far ahead.
    engine, watch = _engine_with(
        make_engine, lambda key: (fake_clock.wall() - 120.0) * 1000, ", grace: 5s"
    )
    fake_clock.advance(6)
    watch.poll()
    assert watch.verdict == "watermark unreadable for 6s"
    assert engine.decide(RequestContext(user_id="u")).trace.reason is Reason.GUARD


def test_async_reads_share_one_event_loop(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    loops: set[int] = set()

    async def read(key: str) -> float:
        loops.add(id(asyncio.get_running_loop()))
        return fake_clock.wall() - 1.0

    _, watch = _engine_with(make_engine, read)
    for _ in range(3):
        watch.poll()
    assert len(loops) == 1 and watch.verdict is None


def test_a_refused_build_never_starts_polling(fake_clock: FakeClock) -> None:
    text = POLICY.replace(
        "chain: [profile_only, unpersonalized]",
        "chain: [{type: stale_cache, cache: nobody_feeds_this}, unpersonalized]",
    )
    calls: list[str] = []
    with pytest.raises(PolicyValidationError, match="no tier feeds the cache"):
        Engine(load_policies(text), {"watermarks": calls.append}, clock=fake_clock)
    assert calls == []  # not one read: no poller ran (its own thread would have read at once)
