"""The ``error_rate`` guard: personalization off above 5% failed requests, back through probes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from resilience import Affinities, Engine, Outcome, Reason, RequestContext
from resilience.testing import FakeClock, FaultySource, RecordingSink

POLICY = """
version: 1
default_policy: p
policies:
  p:
    guards:
      - {{type: error_rate, window: count, size: 100, minimum_requests: 20, open_for: 10s,
          half_open_probes: 2{extra}}}
      {other_guard}
    chain: [profile_only, segment, unpersonalized]
"""

USER = RequestContext(user_id="u", segment="young")


@pytest.fixture
def profiles(faulty_source: Callable[..., FaultySource]) -> FaultySource:
    return faulty_source({"u": Affinities({"books": 1.0})})


@pytest.fixture
def segments(faulty_source: Callable[..., FaultySource]) -> FaultySource:
    return faulty_source({"young": Affinities({"toys": 1.0})})


def build(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
    extra: str = "",
    other_guard: str = "",
    **options: object,
) -> Engine:
    text = POLICY.format(extra=extra, other_guard=other_guard)
    return make_engine(text, {"profile_store": profiles, "segment_store": segments}, **options)


def run(
    engine: Engine, ok: int, failed: int, fail: Callable[[], object], heal: Callable[[], object]
) -> None:
    heal()
    for _ in range(ok):
        engine.decide(USER)
    fail()
    for _ in range(failed):
        engine.decide(USER)
    heal()


def test_trips_above_five_percent_of_failed_requests(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
    recording_sink: RecordingSink,
) -> None:
    engine = build(make_engine, profiles, segments)

    def fail() -> None:
        profiles.raises()
        segments.raises()

    def heal() -> None:
        profiles.healthy()
        segments.healthy()

    run(engine, ok=95, failed=5, fail=fail, heal=heal)  # exactly 5%: still on
    assert engine.decide(USER).trace.served == "profile_only"
    run(engine, ok=0, failed=1, fail=fail, heal=heal)  # above 5%
    decision = engine.decide(USER)
    assert decision.trace.reason is Reason.GUARD
    assert decision.trace.outcome_of("error_rate") is Outcome.DISABLED
    assert "failed share above 5%" in str(decision.trace)
    assert decision.signals is None
    opened = recording_sink.of("resilience.breaker.opened")
    assert opened and opened[0]["breaker"] == "p.error_rate"


def test_a_fallback_that_serves_is_not_a_failure(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
) -> None:
    engine = build(make_engine, profiles, segments)
    profiles.raises()  # the profile fails, the segment tier serves: personalization held
    for _ in range(200):
        assert engine.decide(USER).trace.served == "segment"


def test_any_failure_counts_fallbacks_too(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
) -> None:
    engine = build(make_engine, profiles, segments, extra=", count: any_failure")
    profiles.raises()
    for _ in range(20):
        engine.decide(USER)
    assert engine.decide(USER).trace.reason is Reason.GUARD


def test_misses_never_trip_it(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
) -> None:
    engine = build(make_engine, profiles, segments)
    profiles.misses()
    segments.misses()
    for _ in range(500):
        decision = engine.decide(USER)
        assert decision.trace.served == "unpersonalized"
        assert decision.trace.reason is Reason.FALLBACK


def test_requests_another_guard_switched_off_do_not_count(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
) -> None:
    from resilience import PluginHost
    from tests.plugin_fixtures import steps

    engine = build(
        make_engine,
        profiles,
        segments,
        other_guard="- {type: off_for, users: [u]}",
        plugins=PluginHost(extra=[steps], entry_points_=[]),
    )
    profiles.raises()
    segments.raises()
    for _ in range(200):
        decision = engine.decide(USER)  # the holdout-like guard switches every request off
        assert decision.trace.outcome_of("off_for") is Outcome.DISABLED
    guard = engine._plans["p"].guards[0]
    assert guard.breaker.snapshot().calls == 0  # type: ignore[attr-defined]


def test_probes_bring_personalization_back(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
    fake_clock: FakeClock,
    recording_sink: RecordingSink,
) -> None:
    engine = build(make_engine, profiles, segments)
    profiles.raises()
    segments.raises()
    for _ in range(20):
        engine.decide(USER)
    assert engine.decide(USER).trace.reason is Reason.GUARD
    profiles.healthy()
    fake_clock.advance(10.1)
    assert engine.decide(USER).trace.served == "profile_only"  # probe 1
    assert engine.decide(USER).trace.served == "profile_only"  # probe 2: back on
    assert engine.decide(USER).trace.served == "profile_only"
    assert recording_sink.of("resilience.breaker.closed")[-1]["reason"] == "probes_succeeded"


def test_a_failing_probe_keeps_it_off(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
    fake_clock: FakeClock,
) -> None:
    engine = build(make_engine, profiles, segments)
    profiles.raises()
    segments.raises()
    for _ in range(20):
        engine.decide(USER)
    fake_clock.advance(10.1)
    assert engine.decide(USER).trace.served == "unpersonalized"  # the probe fails
    assert engine.decide(USER).trace.reason is Reason.GUARD


def test_it_works_from_asyncio_too(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
) -> None:
    import asyncio

    engine = make_engine(
        POLICY.format(extra="", other_guard=""),
        {"profile_store": profiles.async_, "segment_store": segments.async_},
    )
    profiles.raises()
    segments.raises()

    async def many() -> Reason:
        for _ in range(20):
            await engine.adecide(USER)
        return (await engine.adecide(USER)).trace.reason

    assert asyncio.run(many()) is Reason.GUARD


def test_a_cancelled_probe_does_not_leave_it_stuck(
    make_engine: Callable[..., Engine],
    segments: FaultySource,
    fake_clock: FakeClock,
) -> None:
    import asyncio

    hang = asyncio.Event()

    async def profile(key: str) -> Affinities | None:
        if mode == "hang":
            await hang.wait()
        if mode == "fail":
            raise ConnectionError("down")
        return Affinities({"books": 1.0})

    mode = "fail"
    text = (
        POLICY.format(extra="", other_guard="")
        .replace("half_open_probes: 2", "half_open_probes: 1")
        .replace("chain: [profile_only,", "chain: [{type: profile_only, timeout: 30ms},")
    )
    engine = make_engine(text, {"profile_store": profile, "segment_store": segments.async_})
    segments.raises()

    async def scenario() -> list[Reason]:
        nonlocal mode
        for _ in range(20):
            await engine.adecide(USER)
        fake_clock.advance(10.1)
        mode = "hang"
        probe = asyncio.create_task(engine.adecide(USER))  # the one probe hangs...
        await asyncio.sleep(0.001)
        probe.cancel()  # ...and its caller gives up
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        mode = "ok"
        return [(await engine.adecide(USER)).trace.reason for _ in range(2)]

    import contextlib

    reasons = asyncio.run(scenario())
    # the cancelled probe gave its place back: the next request probes, succeeds, closes it
    assert reasons == [Reason.PRIMARY, Reason.PRIMARY]


@pytest.mark.parametrize(("threshold", "said"), [("0.025", "2.5%"), ("0.2", "20%")])
def test_the_reason_names_the_threshold_as_written(
    make_engine: Callable[..., Engine],
    profiles: FaultySource,
    segments: FaultySource,
    threshold: str,
    said: str,
) -> None:
    engine = build(make_engine, profiles, segments, extra=f", threshold: {threshold}")

    def fail() -> None:
        profiles.raises()
        segments.raises()

    run(engine, ok=0, failed=100, fail=fail, heal=profiles.healthy)
    assert f"error_rate=disabled[failed share above {said}]" in str(engine.decide(USER).trace)
