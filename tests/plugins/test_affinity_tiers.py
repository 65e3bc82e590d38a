"""``profile_only``, ``segment`` and ``unpersonalized``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from resilience import Affinities, Engine, Outcome, RequestContext

POLICY = """
version: 1
default_policy: p
policies:
  p:
    chain: [profile_only, segment, unpersonalized]
"""


@pytest.mark.parametrize(
    ("profile", "outcome"),
    [
        (Affinities({"a": 2.0, "b": 2.0}), Outcome.OK),
        (None, Outcome.MISS),
        (Affinities(), Outcome.MISS),
        (Affinities({"a": 0.0}), Outcome.MISS),
        (Affinities({"a": -1.0}), Outcome.GARBAGE),
        (Affinities({"a": float("nan")}), Outcome.GARBAGE),
        (Affinities({"a": "high"}), Outcome.GARBAGE),  # type: ignore[dict-item]
        ({"a": 1.0}, Outcome.GARBAGE),
        ("a=1", Outcome.GARBAGE),
    ],
)
def test_profile_outcomes(
    make_engine: Callable[..., Engine], profile: object, outcome: Outcome
) -> None:
    engine = make_engine(POLICY, {"profile_store": lambda key: profile, "segment_store": {}.get})
    decision = engine.decide(RequestContext(user_id="u"))
    assert decision.trace.outcome_of("profile_only") is outcome
    if outcome is Outcome.OK:
        assert decision.signals is not None
        assert decision.signals.categories == {"a": 0.5, "b": 0.5}
        assert decision.signals.sources == ("profile_store",)


def test_no_user_id_is_a_miss_without_a_read(make_engine: Callable[..., Engine]) -> None:
    calls: list[str] = []

    def profile(key: str) -> None:
        calls.append(key)

    engine = make_engine(POLICY, {"profile_store": profile, "segment_store": {}.get})
    decision = engine.decide(RequestContext(user_id=None, segment="young"))
    assert decision.trace.outcome_of("profile_only") is Outcome.MISS
    assert calls == []


def test_segment_reads_by_segment(make_engine: Callable[..., Engine]) -> None:
    segments = {"young": Affinities({"toys": 1.0}, updated_at=5.0)}
    engine = make_engine(POLICY, {"profile_store": {}.get, "segment_store": segments.get})
    decision = engine.decide(RequestContext(user_id="new", segment="young"))
    assert decision.trace.served == "segment"
    assert decision.signals is not None
    assert decision.signals.observed_at == 5.0
    assert decision.signals.session_weight == 0.0


def test_unpersonalized_serves_no_signals(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(POLICY, {"profile_store": {}.get, "segment_store": {}.get})
    decision = engine.decide(RequestContext(user_id="u"))
    assert decision.trace.served == "unpersonalized"
    assert decision.signals is None
