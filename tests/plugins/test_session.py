"""The ``session`` tier: blending session clicks into the long-term profile."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from resilience_plugins.tiers.session import SessionParams, blend, session_weight

from resilience import (
    Affinities,
    Click,
    Engine,
    GarbageData,
    Outcome,
    RequestContext,
    SessionState,
)
from resilience.testing import FakeClock

POLICY = """
version: 1
default_policy: p
policies:
  p:
    chain:
      - {{type: session, {params}}}
      - unpersonalized
"""


def clicks(*categories: str, at: float = 0.0) -> SessionState:
    return SessionState(
        tuple(Click(f"i{n}", c, at + n) for n, c in enumerate(categories)), at + len(categories)
    )


def test_session_weight_follows_n_over_n_plus_k() -> None:
    assert session_weight(1, 3.0, 1.0) == 0.25
    assert session_weight(3, 3.0, 1.0) == 0.5
    assert session_weight(30, 3.0, 0.8) == 0.8


def test_blend_mixes_session_and_profile_by_weight() -> None:
    params = SessionParams(max_session_weight=1.0)
    profile = Affinities({"books": 1.0})
    categories, _, weight = blend(clicks("shoes"), profile, params, now=0.0)
    assert weight == 0.25
    assert categories == {"books": 0.75, "shoes": 0.25}


def test_without_a_profile_session_signals_serve_alone() -> None:
    categories, items, weight = blend(clicks("shoes", "bags"), None, SessionParams(), now=0.0)
    assert weight == 1.0
    assert categories == {"shoes": 0.5, "bags": 0.5}
    assert items == {"i0": 0.5, "i1": 0.5}


def test_an_empty_profile_counts_as_none() -> None:
    _, _, weight = blend(clicks("shoes"), Affinities(), SessionParams(), now=0.0)
    assert weight == 1.0


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_a_malformed_profile_costs_the_blend_not_the_session(
    make_engine: Callable[..., Engine], weight: float
) -> None:
    categories, _, w = blend(clicks("shoes"), Affinities({"a": weight}), SessionParams(), 0.0)
    assert (categories, w) == ({"shoes": 1.0}, 1.0)
    engine = make_engine(
        POLICY.format(params="timeout: 10ms"),
        {
            "session_store": lambda key: clicks("shoes"),
            "profile_store": lambda key: Affinities({"books": 1.0}, {"i9": weight}),
        },
    )
    decision = engine.decide(RequestContext(user_id="u", session_id="s"))
    assert decision.trace.outcome_of("session") is Outcome.OK
    assert decision.signals is not None
    assert decision.signals.sources == ("session_store",)
    assert dict(decision.signals.categories) == {"shoes": 1.0}


def test_only_the_newest_clicks_count() -> None:
    state = clicks("old", "old", "new", "new")
    categories, _, _ = blend(state, None, SessionParams(max_clicks=2), now=0.0)
    assert categories == {"new": 1.0}


def test_decay_favours_recent_clicks() -> None:
    state = SessionState((Click("a", "old", 0.0), Click("b", "new", 100.0)), 100.0)
    categories, _, _ = blend(state, None, SessionParams.model_validate({"decay": "100s"}), 100.0)
    assert categories["new"] == pytest.approx(1 / (1 + math.exp(-1)))


def test_malformed_clicks_are_garbage() -> None:
    state = SessionState((Click("a", "shoes", "yesterday"),), None)  # type: ignore[arg-type]
    with pytest.raises(GarbageData):
        blend(state, None, SessionParams.model_validate({"decay": "1s"}), now=0.0)


@given(
    categories=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=60),
    profile=st.dictionaries(st.sampled_from(["a", "b", "d"]), st.floats(0, 1e6)),
    cap=st.floats(0, 1),
    k=st.floats(0.01, 100),
)
def test_blended_weights_are_a_distribution(
    categories: list[str | None], profile: dict[str, float], cap: float, k: float
) -> None:
    state = SessionState(tuple(Click(f"i{n}", c, 0.0) for n, c in enumerate(categories)), 0.0)
    params = SessionParams(max_session_weight=cap, blend_k=k)
    out, items, weight = blend(state, Affinities(profile), params, now=0.0)
    assert 0.0 <= weight <= 1.0
    for weights in (out, items):
        if weights:
            assert sum(weights.values()) == pytest.approx(1.0)
            assert all(w >= 0 for w in weights.values())


@pytest.mark.parametrize(("session_ms", "expected_ms"), [(4, 5), (7, 3)])
def test_the_profile_read_gets_its_own_cutoff_within_what_is_left(
    make_engine: Callable[..., Engine], fake_clock: FakeClock, session_ms: int, expected_ms: int
) -> None:
    seen: list[float] = []

    def session(key: str, timeout: float) -> SessionState:
        fake_clock.advance(session_ms / 1000)
        return clicks("shoes")

    def profile(key: str, timeout: float) -> Affinities:
        seen.append(timeout)
        return Affinities({"books": 1.0})

    engine = make_engine(
        POLICY.format(params="timeout: 10ms, profile_timeout: 5ms"),
        {"session_store": session, "profile_store": profile},
    )
    decision = engine.decide(RequestContext(user_id="u", session_id="s"))
    assert seen == [pytest.approx(expected_ms / 1000)]
    assert decision.signals is not None
    assert decision.signals.sources == ("session_store", "profile_store")


def test_a_late_profile_is_dropped_and_the_session_serves_alone(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    def profile(key: str) -> Affinities:
        fake_clock.advance(0.006)  # over its 5ms cutoff, within the tier's 10ms
        return Affinities({"books": 1.0})

    engine = make_engine(
        POLICY.format(params="timeout: 10ms"),
        {"session_store": lambda key: clicks("shoes"), "profile_store": profile},
    )
    decision = engine.decide(RequestContext(user_id="u", session_id="s"))
    assert decision.trace.outcome_of("session") is Outcome.OK
    assert decision.signals is not None
    assert decision.signals.sources == ("session_store",)
    assert decision.signals.session_weight == 1.0


def test_an_async_profile_hang_costs_the_blend_not_the_session(
    make_engine: Callable[..., Engine],
) -> None:
    import asyncio

    from resilience.testing import FaultySource

    sessions = FaultySource({"s": clicks("shoes")})
    profiles = FaultySource({"u": Affinities({"books": 1.0})}).hangs()
    engine = make_engine(
        POLICY.format(params="timeout: 10ms, profile_timeout: 2ms"),
        {"session_store": sessions.async_, "profile_store": profiles.async_},
    )
    decision = asyncio.run(engine.adecide(RequestContext(user_id="u", session_id="s")))
    assert decision.trace.outcome_of("session") is Outcome.OK
    assert profiles.cancelled == 1
    assert decision.signals is not None
    assert decision.signals.sources == ("session_store",)


def test_profile_timeout_must_leave_room_for_the_session(
    make_engine: Callable[..., Engine],
) -> None:
    from resilience import PolicyValidationError

    with pytest.raises(PolicyValidationError, match="profile_timeout must be below timeout"):
        make_engine(POLICY.format(params="timeout: 5ms, profile_timeout: 5ms"), {})


def test_a_nan_click_time_is_garbage() -> None:
    state = SessionState((Click("a", "shoes", float("nan")),), None)
    with pytest.raises(GarbageData, match="non-finite"):
        blend(state, None, SessionParams.model_validate({"decay": "1s"}), now=0.0)


@pytest.mark.parametrize("click", [Click(123, "c", 0.0), Click("a", 7, 0.0)])  # type: ignore[arg-type]
def test_clicks_with_non_string_ids_are_garbage(click: Click) -> None:
    with pytest.raises(GarbageData, match="malformed click"):
        blend(SessionState((click,), None), None, SessionParams(), now=0.0)


def test_a_sync_wrapper_around_an_async_store_is_named(
    make_engine: Callable[..., Engine],
) -> None:
    async def get(key: str) -> SessionState:
        return clicks("shoes")

    engine = make_engine(
        POLICY.format(params="profile_source: null"),
        {"session_store": lambda key: get(key)},  # noqa: PLW0108 - the point: a sync wrapper
    )
    decision = engine.decide(RequestContext(session_id="s"))
    assert decision.trace.outcome_of("session") is Outcome.GARBAGE
    assert "bind the async function itself" in str(decision.trace)


def test_a_session_tier_without_profile_source_reads_one_store(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(
        POLICY.format(params="profile_source: null, cache: null"),
        {"session_store": lambda key: clicks("shoes")},
    )
    decision = engine.decide(RequestContext(user_id="u", session_id="s"))
    assert decision.trace.outcome_of("session") is Outcome.OK
    assert decision.signals is not None and decision.signals.session_weight == 1.0


def test_recent_client_clicks_are_merged_and_deduplicated() -> None:
    from resilience_plugins.tiers.session import with_recent_clicks

    stored = SessionState((Click("a", "shoes", 10.0), Click("b", "bags", 20.0)), 20.0)
    recent = (Click("b", "bags", 21.0), Click("c", "toys", 30.0))  # b already propagated
    merged = with_recent_clicks(stored, recent, window=5.0)
    assert [c.item_id for c in merged.clicks] == ["a", "b", "c"]
    assert merged.event_time == 20.0
    assert with_recent_clicks(None, recent, 5.0).clicks == recent


def test_a_search_right_after_a_click_sees_it(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(
        POLICY.format(params="profile_source: null, cache: null"),
        {"session_store": {}.get},  # the store has not seen the session yet
    )
    request = RequestContext(session_id="s", recent_clicks=(Click("i9", "toys", 1.0),))
    decision = engine.decide(request)
    assert decision.trace.served == "session"
    assert decision.signals is not None
    assert decision.signals.categories == {"toys": 1.0}
    assert "session=ok[w=1.00]" in str(decision.trace)  # the weight used, in the trace


def test_client_clicks_are_not_trusted_blindly() -> None:
    from resilience_plugins.tiers.session import with_recent_clicks

    twice = (Click("a", "c", 1.0), Click("a", "c", 1.0))
    assert len(with_recent_clicks(None, twice, 5.0).clicks) == 1
    many = tuple(Click(f"i{n}", "c", float(n)) for n in range(50))
    assert [c.item_id for c in with_recent_clicks(None, many, 0.0, limit=3).clicks] == [
        "i47",
        "i48",
        "i49",
    ]
    broken = (Click("a", "c", None), Click("b", "c", float("nan")), Click("c", "c", 2.0))  # type: ignore[arg-type]
    assert [c.item_id for c in with_recent_clicks(None, broken, 5.0).clicks] == ["c"]
