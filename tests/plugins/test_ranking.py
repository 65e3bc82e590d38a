"""``boost_cap`` and ``exploration``: properties over random candidate lists."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from resilience_plugins.post.boost_cap import BoostCapParams, boosted_scores
from resilience_plugins.post.exploration import ExplorationParams, explore, slot_count

from resilience import Candidate, Engine, RequestContext, Signals

NOW = 1_700_000_000.0
CATEGORIES = ["shoes", "books", "toys", "bags", None]

candidates_lists = st.lists(
    st.builds(
        Candidate,
        item_id=st.sampled_from([f"i{n}" for n in range(40)]),
        score=st.one_of(st.floats(-100, 100), st.just(float("nan"))),
        category=st.sampled_from(CATEGORIES),
        published_at=st.one_of(st.none(), st.floats(NOW - 400 * 86_400, NOW)),
    ),
    max_size=60,
)
signals = st.builds(
    Signals,
    categories=st.dictionaries(st.sampled_from(["shoes", "books", "toys"]), st.floats(0, 1)),
    items=st.dictionaries(st.sampled_from([f"i{n}" for n in range(40)]), st.floats(0, 1)),
    tier=st.just("session"),
)


# --- boost_cap ---------------------------------------------------------------------------------


@given(
    candidates=candidates_lists,
    signals=signals,
    cap=st.floats(0.01, 5),
    mode=st.sampled_from(["multiplicative", "additive"]),
)
def test_no_final_score_exceeds_what_the_cap_allows(
    candidates: list[Candidate], signals: Signals, cap: float, mode: str
) -> None:
    params = BoostCapParams.model_validate({"cap": cap, "combine": mode})
    finals = boosted_scores(candidates, signals, params)
    zero = boosted_scores(candidates, None, params)  # the unboosted (base or normalized) score
    for final, base in zip(finals, zero, strict=True):
        if math.isfinite(base):
            assert (
                base - 1e-9
                <= final
                <= base + abs(base if mode == "multiplicative" else 1.0) * cap + 1e-9
            )


@given(candidates=candidates_lists, mode=st.sampled_from(["multiplicative", "additive"]))
def test_boost_zero_gives_the_base_order(candidates: list[Candidate], mode: str) -> None:
    from resilience_plugins.post.boost_cap import BoostCapStep

    params = BoostCapParams.model_validate({"combine": mode, "apply_when": "always"})
    empty = Signals({}, {}, "session")
    step = BoostCapStep.__new__(BoostCapStep)
    step.params = params
    ranked = step.apply(RequestContext(), empty, candidates)

    def base(c: Candidate) -> float:
        return c.score if math.isfinite(c.score) else -math.inf

    expected = sorted(candidates, key=lambda c: -base(c))  # stable: ties keep input order
    assert [id(c) for c in ranked] == [id(c) for c in expected]


def test_a_boost_lifts_the_preferred_category() -> None:
    candidates = [Candidate("a", 1.0, "books"), Candidate("b", 0.9, "shoes")]
    params = BoostCapParams(cap=0.5)
    scores = boosted_scores(candidates, Signals({"shoes": 1.0}, {}, "s"), params)
    assert scores == [1.0, pytest.approx(1.35)]  # capped at +50%, enough to pass "a"


# --- exploration -----------------------------------------------------------------------------


@given(
    candidates=candidates_lists,
    share=st.floats(0, 0.5),
    k=st.integers(1, 30),
    request_id=st.text(max_size=8),
)
def test_exploration_keeps_every_item_once_and_fills_the_slots(
    candidates: list[Candidate], share: float, k: int, request_id: str
) -> None:
    params = ExplorationParams(share=share, k=k)
    out = explore(candidates, params, request_id)
    assert len(out) == len(candidates)
    assert Counter((c.item_id, c.category) for c in out) == Counter(
        (c.item_id, c.category) for c in candidates
    )
    placed = [i for i, c in enumerate(out) if c.propensity is not None]
    pool = len(candidates) - k
    wanted = min(math.floor(share * k + 0.5), k - 1, max(pool, 0)) if pool >= 0 else 0
    assert len(placed) <= wanted
    if len({c.item_id for c in candidates}) == len(candidates):
        assert len(placed) == wanted  # unique ids: every slot is filled
    shown_ids = [c.item_id for i, c in enumerate(out[:k]) if i not in placed]
    assert not {out[i].item_id for i in placed} & set(shown_ids)  # no duplicate added
    assert all(0 < i < k for i in placed)
    assert all(0 < out[i].propensity <= 1 for i in placed)  # type: ignore[operator]
    assert explore(candidates, params, request_id) == out  # replayable: no clock involved


def test_the_slot_count_rule() -> None:
    assert slot_count(0.15, 10, 100) == 2  # floor(1.5 + 0.5)
    assert slot_count(0.10, 10, 100) == 1
    assert slot_count(0.15, 20, 100) == 3
    assert slot_count(0.15, 10, 1) == 1  # no more than the pool holds
    assert slot_count(0.5, 2, 100) == 1  # never the top slot


def pool_list() -> list[Candidate]:
    top = [Candidate(f"t{n}", 10 - n, "shoes", NOW) for n in range(10)]
    pool = [
        Candidate(f"p{n}", 0.0, ("shoes", "books", "toys")[n % 3], NOW - n * 86_400)
        for n in range(12)
    ]
    return top + pool


def test_recorded_propensities_match_empirical_pick_frequencies() -> None:
    candidates = pool_list()
    params = ExplorationParams(share=0.1, k=10)  # one slot: its draw is the first
    counts: Counter[str] = Counter()
    propensity: dict[str, float] = {}
    trials = 20_000
    for n in range(trials):
        out = explore(candidates, params, f"r{n}")
        (pick,) = [c for c in out if c.propensity is not None]
        counts[pick.item_id] += 1
        propensity[pick.item_id] = pick.propensity  # type: ignore[assignment]
    for item, p in propensity.items():
        assert counts[item] / trials == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / trials))


def test_diversity_aware_picks_widen_coverage_more_than_uniform_picks() -> None:
    import random

    candidates = pool_list()
    params = ExplorationParams(share=0.3, k=10, half_life=None)
    aware, uniform = [], []
    rng = random.Random(7)
    for n in range(2_000):
        out = explore(candidates, params, f"r{n}")
        aware.append(len({c.category for c in out[:10]}))
        placed = [i for i, c in enumerate(out[:10]) if c.propensity is not None]
        randoms = rng.sample(candidates[10:], len(placed))
        shown = list(candidates[: 10 - len(placed)]) + randoms
        uniform.append(len({c.category for c in shown}))
    assert sum(aware) / len(aware) > sum(uniform) / len(uniform)


POLICY = """
version: 1
default_policy: p
policies:
  p:
    chain: [profile_only, unpersonalized]
    post:
      - {type: boost_cap, cap: 0.5}
      - {type: exploration, share: 0.2, k: 5}
"""


def test_post_steps_apply_only_when_personalized(make_engine: Callable[..., Engine]) -> None:
    from resilience import Affinities

    candidates = tuple(Candidate(f"c{n}", 10 - n, ("shoes", "books")[n % 2]) for n in range(12))
    engine = make_engine(POLICY, {"profile_store": {"u": Affinities({"books": 1.0})}.get})
    personal = engine.decide(RequestContext(user_id="u", request_id="r1", candidates=candidates))
    assert personal.candidates[0].item_id == "c1"  # a book, lifted past c0 (capped at +50%)
    assert any(c.propensity is not None for c in personal.candidates)
    anonymous = engine.decide(RequestContext(request_id="r1", candidates=candidates))
    assert list(anonymous.candidates) == list(candidates)


def test_a_share_above_the_limit_is_a_clear_error() -> None:
    from resilience import PolicyValidationError, load_policies

    with pytest.raises(PolicyValidationError) as caught:
        load_policies(POLICY.replace("share: 0.2", "share: 1.5"))
    (issue,) = caught.value.issues
    assert issue.path == "policies.p.post[1].share"
    assert "0.5" in issue.hint


def test_a_share_outside_the_briefs_range_is_a_warning_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resilience import load_policies
    from resilience.cli import main

    text = POLICY.replace("share: 0.2", "share: 0.3")
    loaded = load_policies(text)
    (warning,) = loaded.warnings
    assert warning.path == "policies.p.post[1]"
    assert "outside 0.10-0.20" in warning.message
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 0
    assert "warning: " in capsys.readouterr().err
    assert load_policies(POLICY).warnings == ()


def test_a_pool_of_very_old_items_does_not_crash_the_draw() -> None:
    top = [Candidate(f"t{n}", 10 - n, "shoes", NOW) for n in range(10)]
    old = [Candidate(f"o{n}", 0, "books", NOW - 400 * 86_400) for n in range(5)]
    params = ExplorationParams(share=0.2, k=10, half_life=60.0)  # every old weight underflows
    out = explore(top + old, params, "r")
    assert sum(c.propensity is not None for c in out) == 2
