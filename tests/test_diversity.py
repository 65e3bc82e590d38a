"""Diversity and CTR monitoring of served lists."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    Affinities,
    Candidate,
    Engine,
    RequestContext,
    category_coverage,
    category_entropy,
)
from resilience.testing import FakeClock

NOW = 1_700_000_000.0


def test_coverage_and_entropy_of_a_list() -> None:
    shown = [Candidate("a", 1, "shoes"), Candidate("b", 1, "shoes"), Candidate("c", 1, "toys")]
    pool = [*shown, Candidate("d", 1, "books"), Candidate("e", 1, None)]
    assert category_coverage(shown, pool) == pytest.approx(2 / 3)  # 2 shown of 3 possible
    assert category_entropy(shown) == pytest.approx(
        -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    )
    assert category_entropy([Candidate("x", 1, None)]) == 0.0
    assert category_coverage([], []) == 1.0


@given(st.lists(st.sampled_from(["a", "b", "c", None]), max_size=30), st.integers(1, 10))
def test_coverage_is_a_share_and_entropy_is_bounded(categories: list[str | None], k: int) -> None:
    candidates = [Candidate(f"i{n}", 1.0, c) for n, c in enumerate(categories)]
    shown = candidates[:k]
    assert 0.0 <= category_coverage(shown, candidates) <= 1.0
    distinct = len({c for c in categories[:k] if c is not None})
    entropy = category_entropy(shown)
    assert entropy >= 0.0
    assert entropy <= (math.log2(distinct) if distinct else 0.0) + 1e-9


POLICY = """
version: 1
default_policy: p
settings:
  monitoring: {sample_rate: 1, top_k: 3, window: 60s, buckets: 6}
policies:
  p:
    chain: [profile_only, unpersonalized]
"""


def test_the_engine_aggregates_diversity_and_ctr_per_tier(
    make_engine: Callable[..., Engine], fake_clock: FakeClock
) -> None:
    engine = make_engine(POLICY, {"profile_store": {"u": Affinities({"books": 1.0})}.get})
    candidates = tuple(
        Candidate(f"c{n}", 1.0, ("books", "toys", "shoes")[n % 3], fake_clock.wall() - 3600 * n)
        for n in range(6)
    )
    personal = engine.decide(RequestContext(user_id="u", candidates=candidates))
    anonymous = engine.decide(RequestContext(candidates=candidates))
    assert personal.trace.sampled
    engine.record_click(personal.trace)
    engine.record_click(personal.trace)
    snapshot = {s.served: s for s in engine.monitor.snapshot()}
    assert set(snapshot) == {"profile_only", "unpersonalized"}
    served = snapshot["profile_only"]
    assert served.impressions == 1
    assert served.clicks == 2
    assert served.ctr == 2.0
    assert served.coverage == 1.0  # three categories in the top 3
    assert served.entropy_bits == pytest.approx(math.log2(3))
    assert served.age_p50_s == 3600.0
    assert snapshot["unpersonalized"].clicks == 0
    assert anonymous.trace.policy == "p"
    fake_clock.advance(61)  # the window rolls past both
    assert engine.monitor.snapshot() == []


def test_unsampled_decisions_are_not_measured(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(
        POLICY.replace("sample_rate: 1", "sample_rate: 0"), {"profile_store": {}.get}
    )
    decision = engine.decide(RequestContext(candidates=(Candidate("a", 1.0, "x"),)))
    assert not decision.trace.sampled
    engine.record_click(decision.trace)
    assert engine.monitor.snapshot() == []
