"""The engine's per-request behaviour, sync and asyncio, with the package's own test kit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    Candidate,
    Decision,
    Engine,
    Outcome,
    Reason,
    RequestContext,
    Signals,
    load_policies,
)
from resilience.testing import FakeClock, RecordingSink

from .conftest import REFERENCE_POLICIES, Stores

RETURNING = RequestContext(user_id="u1", session_id="s1", request_id="r1")

Decide = Callable[[Engine, RequestContext], Decision]


def decide_sync(engine: Engine, request: RequestContext) -> Decision:
    return engine.decide(request)


def decide_async(engine: Engine, request: RequestContext) -> Decision:
    return asyncio.run(engine.adecide(request))


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(make_engine: Callable[..., Engine], text: str, stores: Stores, mode: str) -> Engine:
    return make_engine(text, stores.sync() if mode == "sync" else stores.asyncio())


def run(engine: Engine, request: RequestContext, mode: str) -> Decision:
    return decide_sync(engine, request) if mode == "sync" else decide_async(engine, request)


def outcomes(decision: Decision) -> dict[str, Outcome]:
    return {r.step: r.outcome for r in decision.trace.steps}


def test_healthy_session_serves_primary(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores, mode: str
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    decision = run(engine, RETURNING, mode)
    assert decision.trace.served == "session"
    assert decision.trace.reason is Reason.PRIMARY
    assert decision.personalized
    assert decision.signals is not None
    assert decision.signals.tier == "session"
    assert decision.trace.config_version == engine.config_version("search")
    assert decision.trace.request_id == "r1"
    assert outcomes(decision) == {
        "error_rate": Outcome.OK,
        "session": Outcome.OK,
        "boost_cap": Outcome.OK,
        "exploration": Outcome.OK,
    }


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (lambda s: s.raises(), Outcome.ERROR),
        (lambda s: s.garbage(), Outcome.GARBAGE),
        (lambda s: s.garbage({"clicks": []}), Outcome.GARBAGE),
        (lambda s: s.misses(), Outcome.MISS),
        (lambda s: s.slow(0.050), Outcome.TIMEOUT),
        (lambda s: s.hangs(), Outcome.TIMEOUT),
    ],
    ids=["raises", "garbage-bytes", "garbage-dict", "misses", "slow", "hangs"],
)
def test_a_failing_session_store_never_raises_and_the_trace_names_the_outcome(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    mode: str,
    fault: Callable[[Any], Any],
    outcome: Outcome,
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    fault(stores.session)
    decision = run(engine, RETURNING, mode)
    assert decision.trace.outcome_of("session") is outcome
    assert decision.trace.served != "session"
    assert outcome.value in str(decision.trace)


def test_async_hang_is_cancelled_at_the_deadline(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.asyncio())
    stores.session.hangs()
    decision = decide_async(engine, RETURNING)
    assert decision.trace.outcome_of("session") is Outcome.TIMEOUT
    assert stores.session.cancelled == 1
    assert decision.trace.served == "profile_only"


def test_stale_cache_serves_the_last_good_session_state(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores, mode: str
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    fresh = run(engine, RETURNING, mode)
    stores.session.raises()
    stale = run(engine, RETURNING, mode)
    assert stale.trace.served == "stale_cache"
    assert stale.trace.reason is Reason.FALLBACK
    assert stale.signals is not None and fresh.signals is not None
    assert stale.signals.categories == fresh.signals.categories
    assert stale.signals.tier == "stale_cache"


def test_stale_cache_expires_after_max_age(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    fake_clock: FakeClock,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.decide(RETURNING)
    stores.session.raises()
    fake_clock.advance(299)
    assert engine.decide(RETURNING).trace.served == "stale_cache"
    fake_clock.advance(2)
    decision = engine.decide(RETURNING)
    assert decision.trace.outcome_of("stale_cache") is Outcome.MISS
    assert decision.trace.served == "profile_only"


def test_a_successful_read_refreshes_the_stale_entry(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    fake_clock: FakeClock,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.decide(RETURNING)
    fake_clock.advance(200)
    engine.decide(RETURNING)  # unchanged session: the entry's age restarts
    fake_clock.advance(200)
    stores.session.raises()
    assert engine.decide(RETURNING).trace.served == "stale_cache"


def test_new_session_uses_the_profile_until_the_first_click(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores, mode: str
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    decision = run(engine, RequestContext(user_id="u1", session_id="s-new"), mode)
    assert decision.trace.outcome_of("session") is Outcome.MISS
    assert decision.trace.served == "profile_only"
    assert decision.signals is not None
    assert decision.signals.session_weight == 0.0


def test_new_user_gets_segment_preferences(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores, mode: str
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    decision = run(engine, RequestContext(user_id="nobody", segment="young"), mode)
    assert decision.trace.served == "segment"
    assert decision.signals is not None
    assert decision.signals.categories == {"electronics": 0.5, "toys": 0.5}


def test_anonymous_request_is_unpersonalized_and_keeps_candidates(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores, mode: str
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    candidates = (Candidate("a", 2.0), Candidate("b", 1.0))
    decision = run(engine, RequestContext(candidates=candidates), mode)
    assert decision.trace.served == "unpersonalized"
    assert decision.signals is None
    assert not decision.personalized
    assert decision.candidates == candidates


def test_swapping_two_tiers_in_yaml_changes_which_serves(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    request = RequestContext(user_id="u1", session_id="s1", segment="young")
    stores.session.raises()
    original = make_engine(reference_yaml, stores.sync()).decide(request)
    profile_block = "      - type: profile_only\n        source: profile_store\n"
    segment_block = "      - type: segment\n        source: segment_store\n"
    assert profile_block + segment_block in reference_yaml
    swapped_yaml = reference_yaml.replace(
        profile_block + segment_block, segment_block + profile_block
    )
    swapped = make_engine(swapped_yaml, stores.sync()).decide(request)
    assert original.trace.served == "profile_only"
    assert swapped.trace.served == "segment"


def test_a_garbage_profile_in_the_blend_falls_back_to_session_only(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores, mode: str
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    stores.profile.garbage("not a profile")
    decision = run(engine, RETURNING, mode)
    assert decision.trace.served == "session"
    assert decision.signals is not None
    assert decision.signals.session_weight == 1.0
    assert decision.signals.sources == ("session_store",)


def test_async_tier_in_sync_decide_is_an_error_not_a_crash(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.asyncio())
    decision = engine.decide(RETURNING)
    assert decision.trace.outcome_of("session") is Outcome.ERROR
    assert "async" in str(decision.trace)
    assert decision.trace.served in {"stale_cache", "unpersonalized"}


# --- budget and deadlines -----------------------------------------------------------------------

SLOW_CHAIN = """
version: 1
default_policy: p
policies:
  p:
    budget: 30ms
    chain:
      - {type: profile_only, id: first, timeout: 20ms}
      - {type: profile_only, id: second, timeout: 20ms}
      - unpersonalized
"""


def test_each_tier_gets_the_smaller_of_its_timeout_and_what_is_left(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    received: list[float] = []

    def profile(key: str, timeout: float) -> None:
        received.append(timeout)
        fake_clock.advance(0.016)  # each read takes 16 ms of the 30 ms budget

    engine = make_engine(SLOW_CHAIN, {"profile_store": profile})
    decision = engine.decide(RequestContext(user_id="u"))
    assert received == pytest.approx([0.020, 0.014])
    assert decision.trace.outcome_of("first") is Outcome.MISS
    assert decision.trace.outcome_of("second") is Outcome.TIMEOUT
    assert decision.trace.served == "unpersonalized"
    assert decision.trace.budget_us == 30_000


def test_a_caller_deadline_smaller_than_the_budget_wins(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    received: list[float] = []

    def profile(key: str, timeout: float) -> None:
        received.append(timeout)
        fake_clock.advance(0.004)

    engine = make_engine(SLOW_CHAIN, {"profile_store": profile})
    decision = engine.decide(RequestContext(user_id="u", time_left=0.005))
    assert received == pytest.approx([0.005, 0.001])
    assert decision.trace.budget_us == 5_000


def test_spent_budget_skips_tiers_but_the_terminal_tier_serves(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores, mode: str
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    decision = run(engine, RequestContext(user_id="u1", session_id="s1", time_left=0.0), mode)
    assert decision.trace.served == "unpersonalized"
    assert decision.trace.reason is Reason.BUDGET
    assert decision.trace.outcome_of("session") is Outcome.SKIPPED_BUDGET
    assert decision.trace.outcome_of("profile_only") is Outcome.SKIPPED_BUDGET
    assert stores.session.calls == 0


def test_negative_caller_time_left_counts_as_none_left(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    decision = engine.decide(RequestContext(user_id="u1", time_left=-3.0))
    assert decision.trace.budget_us == 0
    assert decision.trace.served == "unpersonalized"


# --- policies, lifecycle, events --------------------------------------------------------------

TWO_POLICIES = """
version: 1
default_policy: main
policies:
  main:
    chain: [profile_only, unpersonalized]
  plain:
    chain: [unpersonalized]
"""


def test_requests_name_their_policy_or_get_the_default(
    make_engine: Callable[..., Engine], stores: Stores
) -> None:
    engine = make_engine(TWO_POLICIES, stores.sync())
    assert engine.decide(RequestContext(user_id="u1")).trace.policy == "main"
    named = engine.decide(RequestContext(user_id="u1", policy="plain"))
    assert named.trace.policy == "plain"
    assert named.trace.served == "unpersonalized"
    assert engine.policy_names == ["main", "plain"]


def test_unknown_policy_answers_unpersonalized(
    make_engine: Callable[..., Engine], stores: Stores, mode: str
) -> None:
    engine = build(make_engine, TWO_POLICIES, stores, mode)
    candidates = (Candidate("x", 1.0),)
    decision = run(engine, RequestContext(policy="nope", candidates=candidates), mode)
    assert decision.trace.reason is Reason.UNKNOWN_POLICY
    assert decision.signals is None
    assert decision.candidates == candidates


def test_no_default_and_no_name_is_unknown_policy(
    make_engine: Callable[..., Engine], stores: Stores
) -> None:
    engine = make_engine(TWO_POLICIES.replace("default_policy: main\n", ""), stores.sync())
    assert engine.decide(RequestContext()).trace.reason is Reason.UNKNOWN_POLICY


def test_closed_engine_answers_with_reason_closed(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.close()
    engine.close()
    decision = engine.decide(RETURNING)
    assert decision.trace.reason is Reason.CLOSED
    assert recording_sink.names().count("resilience.engine.closed") == 1


def test_context_managers_close(reference_yaml: str, stores: Stores) -> None:
    from resilience import load_policies

    policies = load_policies(reference_yaml)
    with Engine(policies, stores.sync(), events=RecordingSink()) as engine:
        assert engine.decide(RETURNING).trace.served == "session"
    assert engine.decide(RETURNING).trace.reason is Reason.CLOSED

    async def use() -> Engine:
        async with Engine(policies, stores.asyncio(), events=RecordingSink()) as engine:
            assert (await engine.adecide(RETURNING)).trace.served == "session"
        return engine

    closed = asyncio.run(use())
    assert closed.decide(RETURNING).trace.reason is Reason.CLOSED


def test_engines_in_one_process_do_not_share_state(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    first = make_engine(reference_yaml, stores.sync())
    second = make_engine(reference_yaml, stores.sync())
    first.decide(RETURNING)
    stores.session.raises()
    assert first.decide(RETURNING).trace.served == "stale_cache"
    assert second.decide(RETURNING).trace.served == "profile_only"


def test_events_built_and_sampled_decisions(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
) -> None:
    always = reference_yaml.replace("decision_sample_rate: 0.001", "decision_sample_rate: 1")
    engine = make_engine(always, stores.sync())
    engine.decide(RETURNING)
    built = recording_sink.of("resilience.engine.built")
    assert built == [{"policies": ["search"], "versions": {"search": engine.config_version()}}]
    (decision,) = recording_sink.of("resilience.decision")
    assert decision["served"] == "session"
    assert decision["steps"] == {
        "error_rate": "ok",
        "session": "ok",
        "boost_cap": "ok",
        "exploration": "ok",
    }
    assert "u1" not in repr(decision) and "s1" not in repr(decision)


def test_decision_events_are_off_at_rate_zero(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
) -> None:
    never = reference_yaml.replace("decision_sample_rate: 0.001", "decision_sample_rate: 0")
    engine = make_engine(never, stores.sync())
    for _ in range(50):
        engine.decide(RETURNING)
    assert recording_sink.of("resilience.decision") == []


def test_trace_str_explains_in_two_lines(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    stores.session.raises()
    text = str(engine.decide(RETURNING).trace)
    assert len(text.splitlines()) == 2
    first, second = text.splitlines()
    assert first.startswith(f"search@{engine.config_version()} served profile_only (fallback)")
    assert second.strip().startswith(
        "error_rate=ok, session=error[ConnectionError], stale_cache=miss"
    )


class _BrokenSink:
    def emit(self, event: str, /, **fields: Any) -> None:
        raise RuntimeError("sink down")


def test_an_internal_error_answers_unpersonalized(
    reference_yaml: str, stores: Stores, fake_clock: FakeClock
) -> None:
    from resilience import load_policies

    engine = Engine(
        load_policies(reference_yaml), stores.sync(), clock=fake_clock, events=RecordingSink()
    )
    engine._plans["search"].tiers = None  # type: ignore[assignment]  # simulate a bug
    candidates = (Candidate("x", 1.0),)
    decision = engine.decide(RequestContext(candidates=candidates))
    assert decision.trace.reason is Reason.INTERNAL_ERROR
    assert decision.candidates == candidates
    engine._events = _BrokenSink()  # a broken sink does not make it raise either
    assert engine.decide(RequestContext()).trace.reason is Reason.INTERNAL_ERROR
    decision = asyncio.run(engine.adecide(RequestContext()))
    assert decision.trace.reason is Reason.INTERNAL_ERROR


# --- property: whatever the sources do, the engine answers ----------------------------------------

_BEHAVIOURS = st.sampled_from(["healthy", "miss", "error", "garbage", "slow", "hang"])


@given(
    session=_BEHAVIOURS,
    profile=_BEHAVIOURS,
    segment=_BEHAVIOURS,
    user=st.sampled_from([None, "", "u1", "nobody"]),
    session_id=st.sampled_from([None, "", "s1", "s-new", "unknown"]),
    segment_id=st.sampled_from([None, "young", "old"]),
    time_left=st.one_of(st.none(), st.floats(-1, 1, allow_nan=False)),
    is_async=st.booleans(),
)
def test_the_engine_always_answers(
    session: str,
    profile: str,
    segment: str,
    user: str | None,
    session_id: str | None,
    segment_id: str | None,
    time_left: float | None,
    is_async: bool,
) -> None:
    from resilience import load_policies
    from resilience.testing import FaultySource

    clock = FakeClock()
    sources = [FaultySource({}, clock) for _ in range(3)]
    for source, behaviour in zip(sources, (session, profile, segment), strict=True):
        {
            "healthy": source.healthy,
            "miss": source.misses,
            "error": source.raises,
            "garbage": source.garbage,
            "slow": lambda s=source: s.slow(0.02),
            "hang": source.hangs,
        }[behaviour]()
    names = ("session_store", "profile_store", "segment_store")
    bound = {n: (s.async_ if is_async else s) for n, s in zip(names, sources, strict=True)}
    policies = load_policies(REFERENCE_POLICIES.read_text())
    with Engine(policies, bound, clock=clock, events=RecordingSink()) as engine:
        request = RequestContext(
            user_id=user, session_id=session_id, segment=segment_id, time_left=time_left
        )
        if is_async and "hang" in (session, profile, segment):
            # A real hang is cut by the asyncio deadline, in real time; keep the budget tiny.
            request = RequestContext(user_id=user, session_id=session_id, time_left=0.002)
        decision = asyncio.run(engine.adecide(request)) if is_async else engine.decide(request)
    assert isinstance(decision, Decision)
    assert decision.trace.served in {
        "session",
        "stale_cache",
        "profile_only",
        "segment",
        "unpersonalized",
    }
    assert decision.trace.outcome_of(decision.trace.served) is Outcome.OK
    assert (decision.signals is None) == (decision.trace.served == "unpersonalized")
    assert all(isinstance(s, Signals) for s in [decision.signals] if s is not None)


def test_the_request_path_makes_no_hook_call(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    calls: list[object] = []

    def forbidden(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise AssertionError("a pluggy hook was called on the request path")

    manager = engine.policies.plugins.manager
    for name in vars(manager.hook):
        if name.startswith("resilience_"):
            monkeypatch.setattr(manager.hook, name, forbidden)
    for request in (RETURNING, RequestContext(user_id="u1", session_id="s-new")):
        assert engine.decide(request).trace.reason is not Reason.INTERNAL_ERROR
        assert decide_async(engine, request).trace.reason is not Reason.INTERNAL_ERROR
    assert calls == []


def test_concurrent_decisions_are_each_consistent(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = make_engine(reference_yaml, stores.sync())
    requests = [
        RequestContext(user_id="u1", session_id="s1", request_id=f"r{n}")
        if n % 2
        else RequestContext(user_id="u1", session_id="s-new", request_id=f"r{n}")
        for n in range(400)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        decisions = list(pool.map(engine.decide, requests))
    for request, decision in zip(requests, decisions, strict=True):
        assert decision.trace.request_id == request.request_id
        expected = "session" if request.session_id == "s1" else "profile_only"
        assert decision.trace.served == expected


def test_trace_as_dict_is_json_ready(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    import json

    engine = make_engine(reference_yaml, stores.sync())
    stores.session.raises()
    data = json.loads(json.dumps(engine.decide(RETURNING).trace.as_dict()))
    assert data["served"] == "profile_only"
    assert data["reason"] == "fallback"
    assert data["steps"][1] == {
        "step": "session",
        "outcome": "error",
        "elapsed_us": 0,
        "detail": "ConnectionError",
    }


# --- cancellation and hostile inputs --------------------------------------------------------------

ASYNC_ONLY = """
version: 1
default_policy: p
policies:
  p:
    chain: [profile_only, unpersonalized]
"""


@pytest.mark.parametrize("converts", [False, True], ids=["plain", "converted-by-source"])
def test_the_callers_cancellation_propagates(
    make_engine: Callable[..., Engine], converts: bool
) -> None:
    started = asyncio.Event()

    async def profile(key: str) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if converts:  # a client that turns cancellation into its own error
                raise ConnectionError("closed") from None
            raise

    engine = make_engine(
        ASYNC_ONLY.replace("profile_only", "{type: profile_only, timeout: 30ms}"),
        {"profile_store": profile},
    )

    async def main() -> None:
        task = asyncio.create_task(engine.adecide(RequestContext(user_id="u")))
        await started.wait()
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


def test_a_deadline_cancellation_converted_by_a_source_is_a_timeout(
    make_engine: Callable[..., Engine],
) -> None:
    async def profile(key: str) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("closed") from None

    engine = make_engine(ASYNC_ONLY, {"profile_store": profile})
    decision = decide_async(engine, RequestContext(user_id="u"))
    assert decision.trace.outcome_of("profile_only") is Outcome.TIMEOUT


def test_a_stray_cancelled_error_from_a_source_is_an_error(
    make_engine: Callable[..., Engine],
) -> None:
    async def profile(key: str) -> None:
        raise asyncio.CancelledError  # e.g. it awaited a future someone else cancelled

    engine = make_engine(ASYNC_ONLY, {"profile_store": profile})
    decision = decide_async(engine, RequestContext(user_id="u"))
    assert decision.trace.outcome_of("profile_only") is Outcome.ERROR
    assert decision.trace.served == "unpersonalized"


def test_a_timeout_raised_by_a_source_is_a_timeout_sync_and_async(
    make_engine: Callable[..., Engine], mode: str
) -> None:
    def profile(key: str) -> None:
        raise TimeoutError("socket timed out")

    async def aprofile(key: str) -> None:
        raise TimeoutError("socket timed out")

    engine = make_engine(ASYNC_ONLY, {"profile_store": profile if mode == "sync" else aprofile})
    decision = run(engine, RequestContext(user_id="u"), mode)
    assert decision.trace.outcome_of("profile_only") is Outcome.TIMEOUT
    assert decision.trace.steps[0].detail == "TimeoutError"


@pytest.mark.parametrize(
    "request_",
    [None, 42, RequestContext(time_left="5"), RequestContext(policy=["x"])],  # type: ignore[arg-type]
)
def test_hostile_requests_get_an_answer(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    mode: str,
    request_: object,
) -> None:
    engine = build(make_engine, reference_yaml, stores, mode)
    decision = run(engine, request_, mode)  # type: ignore[arg-type]
    assert decision.trace.reason is Reason.INTERNAL_ERROR
    assert decision.signals is None


def test_a_nan_time_left_counts_as_none_left(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    decision = engine.decide(RequestContext(user_id="u1", session_id="s1", time_left=float("nan")))
    assert decision.trace.budget_us == 0
    assert decision.trace.served == "unpersonalized"


def test_closed_and_internal_error_traces_carry_the_config_version(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    version = engine.config_version("search")
    assert engine.decide(RequestContext(time_left="x")).trace.config_version == version  # type: ignore[arg-type]
    engine.close()
    assert engine.decide(RETURNING).trace.config_version == version


class _SteppingClock:
    """Every reading 2 ms after the last: as if the thread were preempted between any two."""

    def __init__(self) -> None:
        self.t = 1_000.0

    def monotonic(self) -> float:
        self.t += 0.002
        return self.t

    def wall(self) -> float:
        return 1.7e9


@pytest.mark.parametrize("api", ["sync", "async"])
def test_the_terminal_tier_serves_even_when_its_call_overran(api: str) -> None:
    """Found by the chaos soak: a preemption or a collection during the terminal tier's call
    recorded it as ``timeout``, and the request was served by nothing."""
    from resilience import NullSink

    text = "version: 1\ndefault_policy: p\npolicies:\n  p:\n    chain: [unpersonalized]\n"
    engine = Engine(load_policies(text), {}, clock=_SteppingClock(), events=NullSink())
    try:
        request = RequestContext(user_id="u1")
        decision = engine.decide(request) if api == "sync" else asyncio.run(engine.adecide(request))
    finally:
        engine.close()
    assert decision.trace.served == "unpersonalized", decision.trace
    assert decision.trace.outcome_of("unpersonalized") is Outcome.OK


class _HostileRequest:
    """A request whose every attribute raises, quoting a user id in its message."""

    def __getattr__(self, name: str) -> Any:
        raise KeyError(f"user-7f3a-{name}")


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_request_whose_attributes_raise_gets_an_answer_and_its_message_goes_nowhere(
    api: str,
) -> None:
    """The engine never raises, not even on a request object that raises on every read; and
    the event naming the bug gives its type and place, never its message (which may quote
    request data)."""
    sink = RecordingSink()
    text = "version: 1\ndefault_policy: p\npolicies:\n  p:\n    chain: [unpersonalized]\n"
    engine = Engine(load_policies(text), {}, events=sink)
    hostile: Any = _HostileRequest()
    try:
        decision = engine.decide(hostile) if api == "sync" else asyncio.run(engine.adecide(hostile))
    finally:
        engine.close()
    assert decision.trace.reason is Reason.INTERNAL_ERROR
    assert decision.candidates == ()
    (event,) = sink.of("resilience.engine.internal_error")
    assert event["error"].startswith("KeyError at test_engine.py:")
    assert "7f3a" not in repr(sink.events)
