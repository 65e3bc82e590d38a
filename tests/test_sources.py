"""Sources protected as the file declares: breakers, bulkheads and retries through the engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilience import (
    Affinities,
    Engine,
    Outcome,
    PolicyError,
    PolicyValidationError,
    RequestContext,
    load_policies,
)
from resilience.testing import FakeClock, FaultySource

POLICY = """
version: 1
default_policy: p
sources:
  profile_store:
{options}
policies:
  p:
    chain:
      - {{type: profile_only, timeout: 10ms}}
      - unpersonalized
"""

BREAKER = """
    breaker:
      minimum_calls: 4
      size: 10
      failure_rate: 0.5
      open_for: 5s
      half_open_probes: 1
"""


def policy(options: str) -> str:
    return POLICY.format(options=options.rstrip("\n"))


USER = RequestContext(user_id="u")
PROFILE = Affinities({"books": 1.0})


def test_an_open_breaker_refuses_at_once_and_recovers(
    make_engine: Callable[..., Engine],
    faulty_source: Callable[..., FaultySource],
    fake_clock: FakeClock,
) -> None:
    store = faulty_source({"u": PROFILE}).raises()
    engine = make_engine(policy(BREAKER), {"profile_store": store})
    for _ in range(4):
        assert engine.decide(USER).trace.outcome_of("profile_only") is Outcome.ERROR
    calls = store.calls
    decision = engine.decide(USER)
    assert decision.trace.outcome_of("profile_only") is Outcome.BREAKER_OPEN
    assert store.calls == calls  # refused without asking the store
    assert "breaker_open[profile_store]" in str(decision.trace)
    store.healthy()
    fake_clock.advance(5.1)
    assert engine.decide(USER).trace.served == "profile_only"  # the probe succeeds
    assert engine.breaker("profile_store").state == "closed"


def test_misses_never_open_the_breaker(
    make_engine: Callable[..., Engine],
    faulty_source: Callable[..., FaultySource],
) -> None:
    store = faulty_source({}).misses()
    engine = make_engine(policy(BREAKER), {"profile_store": store})
    for _ in range(50):
        assert engine.decide(USER).trace.outcome_of("profile_only") is Outcome.MISS
    assert engine.breaker("profile_store").snapshot().calls == 0


def test_garbage_counts_as_a_failure(
    make_engine: Callable[..., Engine],
    faulty_source: Callable[..., FaultySource],
) -> None:
    store = faulty_source({"u": PROFILE}).garbage({"books": 1.0})
    engine = make_engine(policy(BREAKER), {"profile_store": store})
    for _ in range(4):
        assert engine.decide(USER).trace.outcome_of("profile_only") is Outcome.GARBAGE
    assert engine.breaker("profile_store").state == "open"


def test_an_inline_overrun_is_a_timeout_and_a_slow_call_that_opens_it(
    make_engine: Callable[..., Engine],
    faulty_source: Callable[..., FaultySource],
) -> None:
    store = faulty_source({"u": PROFILE}).slow(0.050)
    engine = make_engine(policy(BREAKER), {"profile_store": store})
    for _ in range(4):
        assert engine.decide(USER).trace.outcome_of("profile_only") is Outcome.TIMEOUT
    decision = engine.decide(USER)
    assert decision.trace.outcome_of("profile_only") is Outcome.BREAKER_OPEN


def test_an_async_hang_feeds_the_breaker(
    make_engine: Callable[..., Engine],
    faulty_source: Callable[..., FaultySource],
) -> None:
    store = faulty_source({"u": PROFILE}).hangs()
    text = policy(BREAKER).replace("timeout: 10ms", "timeout: 2ms")
    engine = make_engine(text, {"profile_store": store.async_})
    for _ in range(4):
        decision = asyncio.run(engine.adecide(USER))
        assert decision.trace.outcome_of("profile_only") is Outcome.TIMEOUT
    assert engine.breaker("profile_store").state == "open"
    assert asyncio.run(engine.adecide(USER)).trace.outcome_of("profile_only") is (
        Outcome.BREAKER_OPEN
    )


def test_operators_can_force_a_breaker(
    make_engine: Callable[..., Engine],
    faulty_source: Callable[..., FaultySource],
) -> None:
    engine = make_engine(policy(BREAKER), {"profile_store": faulty_source({"u": PROFILE})})
    engine.breaker("profile_store").force_open()
    assert engine.decide(USER).trace.outcome_of("profile_only") is Outcome.BREAKER_OPEN
    engine.breaker("profile_store").release_force()
    assert engine.decide(USER).trace.served == "profile_only"
    stats = engine.source_stats()["profile_store"]
    assert stats["breaker"]["state"] == "closed"  # type: ignore[index]
    with pytest.raises(PolicyError, match="has no breaker"):
        engine.breaker("session_store")


def test_a_declared_source_no_step_reads_is_an_error() -> None:
    text = policy(BREAKER).replace("  profile_store:\n", "  profile_stor:\n", 1)
    with pytest.raises(PolicyValidationError) as caught:
        load_policies(text)
    (issue,) = caught.value.issues
    assert issue.path == "sources.profile_stor"
    assert "did you mean 'profile_store'" in issue.hint


def test_the_sources_section_changes_the_config_version() -> None:
    plain = load_policies(policy("    isolation: inline"))
    guarded = load_policies(policy(BREAKER))
    assert plain.policies["p"].version != guarded.policies["p"].version


# --- the bulkhead ---------------------------------------------------------------------------

BULKHEAD = """
    isolation: bulkhead
    max_concurrent: 2
"""


class BlockingStore:
    """A blocking store whose calls wait until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, key: str) -> Affinities:
        self.entered.release()
        self.release.wait(10)
        return PROFILE


@pytest.fixture
def blocking() -> Iterator[BlockingStore]:
    store = BlockingStore()
    yield store
    store.release.set()


def real_engine(text: str, sources: dict[str, Any]) -> Engine:
    from resilience.testing import RecordingSink

    return Engine(load_policies(text), sources, events=RecordingSink())


def test_a_bulkhead_cuts_a_blocking_call_at_the_deadline(blocking: BlockingStore) -> None:
    with real_engine(
        policy(BULKHEAD).replace("timeout: 10ms", "timeout: 5ms"), {"profile_store": blocking}
    ) as engine:
        decision = engine.decide(USER)
        assert decision.trace.outcome_of("profile_only") is Outcome.TIMEOUT
        assert decision.trace.served == "unpersonalized"
        stats = engine.source_stats()["profile_store"]["bulkhead"]
        assert stats["abandoned"] == 1  # type: ignore[index]


def test_a_full_bulkhead_rejects_at_once(blocking: BlockingStore) -> None:
    with real_engine(
        policy(BULKHEAD).replace("timeout: 10ms", "timeout: 5ms"), {"profile_store": blocking}
    ) as engine:
        engine.decide(USER)
        engine.decide(USER)  # two hung calls hold both slots
        decision = engine.decide(USER)
        assert decision.trace.outcome_of("profile_only") is Outcome.REJECTED
        assert "rejected[profile_store]" in str(decision.trace)


def test_async_callers_wait_for_a_bulkhead_without_blocking_the_loop(
    blocking: BlockingStore,
) -> None:
    with real_engine(
        policy(BULKHEAD).replace("timeout: 10ms", "timeout: 5ms"), {"profile_store": blocking}
    ) as engine:

        async def main() -> tuple[Any, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(ticker())
            decision = await engine.adecide(USER)
            task.cancel()
            return decision, ticks

        decision, ticks = asyncio.run(main())
        assert decision.trace.outcome_of("profile_only") is Outcome.TIMEOUT
        assert ticks > 1  # the loop kept running while the store blocked


# --- retries ------------------------------------------------------------------------------------

RETRY = """
    retry:
      attempts: 3
"""


def test_retries_recover_within_the_budget(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    answers: list[Any] = [ConnectionError("blip"), PROFILE]

    def store(key: str) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    engine = make_engine(policy(RETRY + BREAKER), {"profile_store": store})
    decision = engine.decide(USER)
    assert decision.trace.served == "profile_only"
    snapshot = engine.breaker("profile_store").snapshot()
    assert snapshot.calls == 1  # one logical call, counted once
    assert snapshot.failure_rate == 0.0


def test_no_attempt_starts_that_cannot_finish_in_time(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    cutoffs: list[float] = []

    def store(key: str, timeout: float) -> Any:
        cutoffs.append(timeout)
        fake_clock.advance(0.004)
        raise ConnectionError("down")

    engine = make_engine(policy(RETRY), {"profile_store": store})
    decision = engine.decide(USER)
    # 10 ms in three shares of 3.33 ms: after two 4 ms attempts only 2 ms are left
    assert cutoffs == [pytest.approx(0.01 / 3), pytest.approx(0.01 / 3)]
    assert decision.trace.outcome_of("profile_only") is Outcome.ERROR


def test_garbage_and_refusals_are_never_retried(
    make_engine: Callable[..., Engine],
    faulty_source: Callable[..., FaultySource],
) -> None:
    store = faulty_source({"u": PROFILE}).garbage("junk")
    engine = make_engine(policy(RETRY + BREAKER), {"profile_store": store})
    engine.decide(USER)
    assert store.calls == 1


def test_async_retries_cut_each_attempt(make_engine: Callable[..., Engine]) -> None:
    calls = 0

    async def store(key: str) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)  # the first attempt hangs past its 5 ms share
        return PROFILE

    text = policy(RETRY.replace("attempts: 3", "attempts: 2"))
    engine = make_engine(text.replace("timeout: 10ms", "timeout: 10ms"), {"profile_store": store})
    decision = asyncio.run(engine.adecide(USER))
    assert calls == 2
    assert decision.trace.served == "profile_only"


def test_a_hung_store_behind_a_full_bulkhead_opens_its_breaker(blocking: BlockingStore) -> None:
    options = BULKHEAD.replace("max_concurrent: 2", "max_concurrent: 1") + BREAKER.replace(
        "minimum_calls: 4", "minimum_calls: 3"
    )
    text = policy(options).replace("timeout: 10ms", "timeout: 2ms")
    with real_engine(text, {"profile_store": blocking}) as engine:
        outcomes = [engine.decide(USER).trace.outcome_of("profile_only") for _ in range(4)]
    # one timeout, then rejections by a bulkhead whose only slot a hung call holds: failures
    assert outcomes == [Outcome.TIMEOUT, Outcome.REJECTED, Outcome.REJECTED, Outcome.BREAKER_OPEN]


def test_a_timed_out_attempt_is_retried_on_the_real_clock() -> None:
    calls = 0

    async def store(key: str) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)  # hangs past its half of the tier's timeout
        return PROFILE

    # 400 ms, not 10: on a loaded host the second attempt must still find time left to start
    text = (
        policy(RETRY.replace("attempts: 3", "attempts: 2"))
        .replace("timeout: 10ms}", "timeout: 400ms}")
        .replace("  p:\n", "  p:\n    budget: 1s\n")
    )
    with real_engine(text, {"profile_store": store}) as engine:
        decision = asyncio.run(engine.adecide(USER))
    assert calls == 2
    assert decision.trace.served == "profile_only"


def test_a_hanging_profile_cut_by_the_session_tier_opens_the_profile_breaker() -> None:
    """The session tier cuts its profile read at profile_timeout, before the step's deadline:
    that cut is a timeout for the profile store's breaker, not the caller's cancel."""
    import time

    from resilience import Click, MemorySource, SessionState

    sessions = MemorySource(
        {"s": SessionState((Click("i1", "shoes", time.time() - 5),), time.time() - 1)}
    )

    async def session_store(key: str) -> Any:
        return sessions(key)

    async def hanging_profiles(key: str) -> Any:
        await asyncio.sleep(10)

    text = f"""
version: 1
default_policy: p
sources:
  profile_store:
{BREAKER.rstrip()}
policies:
  p:
    chain:
      - {{type: session, timeout: 20ms, profile_timeout: 2ms, source: session_store,
          profile_source: profile_store}}
      - unpersonalized
"""
    request = RequestContext(user_id="u", session_id="s")
    with real_engine(
        text, {"session_store": session_store, "profile_store": hanging_profiles}
    ) as engine:

        async def decide_four() -> list[str]:
            return [(await engine.adecide(request)).trace.served for _ in range(4)]

        served = asyncio.run(decide_four())
        snapshot = engine.breaker("profile_store").snapshot()
    assert served == ["session"] * 4  # the session's own signals still serve
    assert (snapshot.state, snapshot.calls, snapshot.failure_rate) == ("open", 4, 1.0)
