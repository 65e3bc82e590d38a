"""Shadow mode: a guard, a post step or a whole policy evaluates and records what it would have
done, and changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from resilience import Candidate, Decision, Engine, Outcome, Reason, RequestContext
from resilience.testing import FakeClock

from .conftest import Stores

CANDIDATES = tuple(
    Candidate(f"i{n}", 100.0 - n, ("books", "shoes", "toys", "games")[n % 4], 1_700_000_000.0 - n)
    for n in range(30)
)
REQUEST = RequestContext(user_id="u1", session_id="s1", request_id="req-7", candidates=CANDIDATES)


def decide(engine: Engine, request: RequestContext, is_async: bool) -> Decision:
    return asyncio.run(engine.adecide(request)) if is_async else engine.decide(request)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_guard_in_shadow_trips_in_the_trace_and_changes_nothing(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    is_async: bool,
) -> None:
    shadowed = reference_yaml.replace(
        "      - type: error_rate", "      - type: error_rate\n        mode: shadow"
    )
    live = make_engine(reference_yaml, stores.sync())
    shadow = make_engine(shadowed, stores.sync())
    for engine in (live, shadow):
        engine._generation.compiled["search"].guards[0].breaker.force_open()  # type: ignore[attr-defined]

    tripped = decide(live, REQUEST, is_async)
    assert tripped.trace.reason is Reason.GUARD  # live: personalization off
    assert tripped.signals is None

    watched = decide(shadow, REQUEST, is_async)
    record = watched.trace.steps[0]
    assert (record.step, record.outcome) == ("error_rate", Outcome.SHADOW)
    assert "failed share above 5%" in record.detail
    assert watched.trace.reason is Reason.PRIMARY
    assert watched.trace.served == "session"

    # The same request with the guard switched off entirely: identical results.
    shadow.flags.set("search.error_rate", "off", reason="compare")
    unguarded = decide(shadow, REQUEST, is_async)
    assert watched.signals == unguarded.signals is not None
    assert watched.candidates == unguarded.candidates


def test_a_guard_in_shadow_that_would_pass_records_ok(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.flags.set("search.error_rate", "shadow", reason="watch it")
    assert engine.decide(REQUEST).trace.outcome_of("error_rate") is Outcome.OK


def test_a_post_step_in_shadow_records_what_it_would_change(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    applied = engine.decide(REQUEST)
    engine.flags.set("search.exploration", "shadow", reason="measure first")
    watched = engine.decide(REQUEST)
    engine.flags.set("search.exploration", "off", reason="compare")
    without = engine.decide(REQUEST)

    assert applied.candidates != without.candidates  # exploration does move items here
    assert watched.candidates == without.candidates  # in shadow it moves none
    record = next(r for r in watched.trace.steps if r.step == "exploration")
    assert record.outcome is Outcome.SHADOW
    assert record.detail.startswith("would change ")
    moved = sum(
        1
        for a, b in zip(applied.candidates, without.candidates, strict=True)
        if a.item_id != b.item_id
    )
    assert record.detail == f"would change {moved} of {len(CANDIDATES)} positions"


def test_a_post_step_in_shadow_after_a_live_one_sees_the_live_list(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.flags.set("search.boost_cap", "shadow", reason="watch")
    decision = engine.decide(REQUEST)
    assert decision.trace.outcome_of("exploration") is Outcome.OK  # it ran, and applied


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_policy_in_shadow_runs_in_full_and_applies_nothing(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    is_async: bool,
) -> None:
    engine = make_engine(
        reference_yaml.replace("  search:\n", "  search:\n    mode: shadow\n", 1), stores.sync()
    )
    decision = decide(engine, REQUEST, is_async)
    assert decision.trace.shadow
    assert decision.trace.served == "session"  # what it would have served
    assert decision.trace.outcome_of("exploration") is Outcome.OK
    assert decision.signals is None
    assert decision.candidates == CANDIDATES
    assert str(decision.trace).startswith("[shadow] search@")
    assert decision.trace.as_dict()["shadow"] is True
    assert stores.session.calls == 1  # it did the work


def test_a_policy_in_shadow_is_measured_as_served_unpersonalized(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    fake_clock: FakeClock,
) -> None:
    text = reference_yaml.replace("  search:\n", "  search:\n    mode: shadow\n", 1)
    text = text.replace("settings:\n", "settings:\n  monitoring:\n    sample_rate: 1.0\n")
    engine = make_engine(text, stores.sync())
    engine.decide(REQUEST)
    snapshot = engine.monitor.snapshot()
    assert [(row.policy, row.served) for row in snapshot] == [("search", "")]


def test_shadow_and_off_are_refused_where_they_mean_nothing(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    with pytest.raises(Exception, match="cannot be 'shadow'"):
        engine.flags.set("search.session", "shadow", reason="tiers have no shadow")


def test_a_policy_in_shadow_feeds_no_cache_a_live_policy_serves_from(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    # A trial policy in shadow shares the stale cache (by its default name) with the live one.
    trial = reference_yaml.split("policies:\n", 1)[1].replace("  search:\n", "  trial:\n", 1)
    trial = trial.replace("blend_k: 3", "blend_k: 1").replace(
        "  trial:\n", "  trial:\n    mode: shadow\n", 1
    )
    text = reference_yaml + trial
    engine = make_engine(text, stores.sync())
    live = engine.decide(REQUEST)  # the live policy fills the cache with its own blend
    engine.decide(
        dataclasses.replace(REQUEST, policy="trial")
    )  # the trial's blend must not overwrite it
    stores.session.raises()
    fallback = engine.decide(REQUEST)
    assert fallback.trace.served == "stale_cache"
    assert fallback.signals is not None and live.signals is not None
    assert fallback.signals.categories == live.signals.categories
    assert fallback.signals.session_weight == live.signals.session_weight
