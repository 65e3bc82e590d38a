"""``boost_cap`` and ``exploration`` give exactly what their first, plain implementations gave.

The steps were rewritten for speed (bases worked out once, fast paths for finite floats, the
per-slot draw without rebuilding its lists). The plain versions are frozen below as they were
(``reference_*``; comments left out, helpers renamed), and the properties check that the fast
ones return the same thing for any input, down to the bit: the same objects in the same order,
the same scores and propensities (compared by ``repr``, so ``-0.0``, ``nan`` and ``1`` against
``1.0`` count), the same seeded draws, and the same exception for garbage the plain version
choked on.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from resilience_plugins.post.boost_cap import BoostCapParams, BoostCapStep, boosted_scores
from resilience_plugins.post.exploration import ExplorationParams, ExplorationStep, explore

from resilience import Candidate, RequestContext, Signals

# --- the frozen reference implementations ------------------------------------------------------


def _reference_base(score: float) -> float:
    return score if isinstance(score, int | float) and math.isfinite(score) else -math.inf


def reference_boosted_scores(
    candidates: Sequence[Candidate], signals: Signals | None, params: BoostCapParams
) -> list[float]:
    categories = signals.categories if signals is not None else {}
    items = signals.items if signals is not None else {}
    cap = params.cap
    category_weight, item_weight = params.category_weight, params.item_weight

    def clipped(boost: float) -> float:
        return 0.0 if math.isnan(boost) else min(max(boost, 0.0), cap)

    by_category: dict[str | None, float] = {c: category_weight * w for c, w in categories.items()}
    if items:
        boosts = [
            clipped(by_category.get(c.category, 0.0) + item_weight * items.get(c.item_id, 0.0))
            for c in candidates
        ]
    else:
        capped: dict[str | None, float] = {c: clipped(b) for c, b in by_category.items()}
        boosts = [capped.get(c.category, 0.0) for c in candidates]
    bases = [_reference_base(c.score) for c in candidates]
    if params.combine == "multiplicative":
        return [
            base + abs(base) * boost if math.isfinite(base) else base
            for base, boost in zip(bases, boosts, strict=True)
        ]
    finite = [b for b in bases if math.isfinite(b)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = high - low
    return [
        ((base - low) / span if span > 0 else 0.0) + boost if math.isfinite(base) else base
        for base, boost in zip(bases, boosts, strict=True)
    ]


def reference_boost_apply(
    candidates: Sequence[Candidate], signals: Signals | None, params: BoostCapParams
) -> Sequence[Candidate]:
    if signals is None and params.apply_when == "personalized":
        return candidates if isinstance(candidates, list | tuple) else list(candidates)
    scores = reference_boosted_scores(candidates, signals, params)
    bases = [_reference_base(c.score) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], -bases[i]))
    return [candidates[i] for i in order]


def _reference_slot_count(share: float, k: int, available: int) -> int:
    wanted = math.floor(share * k + 0.5)
    return max(0, min(wanted, k - 1, available))


def _reference_seed(salt: str, request_id: str) -> int:
    digest = hashlib.sha256(f"{salt}\x00{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def reference_explore(
    candidates: Sequence[Candidate], params: ExplorationParams, request_id: str
) -> list[Candidate]:
    ranked = list(candidates)
    times = [
        c.published_at
        for c in ranked
        if isinstance(c.published_at, int | float) and math.isfinite(c.published_at)
    ]
    now = max(times) if times else 0.0
    k = min(params.k, len(ranked))
    top, pool = ranked[:k], ranked[k:]
    n = _reference_slot_count(params.share, params.k, len(pool)) if k == params.k else 0
    if n == 0:
        return ranked
    rng = random.Random(_reference_seed(params.salt, request_id))
    slots = sorted(rng.sample(range(1, k), n))
    shown = {c.category for c in top[: k - n]}
    shown_ids = {c.item_id for c in top[: k - n]}
    half_life = params.half_life
    novelty = params.novelty

    def recency(candidate: Candidate) -> float:
        published = candidate.published_at
        if half_life is None or not (
            isinstance(published, int | float) and math.isfinite(published)
        ):
            return 1.0
        return float(0.5 ** (max(now - published, 0.0) / half_life))

    drawable = [(c, c.category, recency(c)) for c in pool if c.item_id not in shown_ids]
    drawn: set[int] = set()
    picks: list[Candidate] = []
    for _ in slots:
        if not drawable:
            break
        weights = [
            (1.0 + novelty if category not in shown else 1.0) * rec for _, category, rec in drawable
        ]
        total = sum(weights)
        if not (total > 0 and math.isfinite(total)):
            weights = [1.0] * len(drawable)
            total = float(len(drawable))
        point = rng.random() * total
        index = 0
        last = len(weights) - 1
        while index < last and point >= weights[index]:
            point -= weights[index]
            index += 1
        chosen = drawable[index][0]
        drawn.add(id(chosen))
        shown.add(chosen.category)
        picks.append(replace(chosen, propensity=weights[index] / total))
        drawable = [entry for entry in drawable if entry[0].item_id != chosen.item_id]
    kept = iter(top)
    placed = dict(zip(slots, picks, strict=False))
    head = [placed[i] if i in placed else next(kept) for i in range(k)]
    return head + list(kept) + [c for c in pool if id(c) not in drawn]


def reference_explore_apply(
    candidates: Sequence[Candidate],
    signals: Signals | None,
    params: ExplorationParams,
    request_id: str,
) -> Sequence[Candidate]:
    if signals is None and params.apply_when == "personalized":
        return candidates if isinstance(candidates, list | tuple) else list(candidates)
    return reference_explore(candidates, params, request_id)


# --- comparing outcomes ------------------------------------------------------------------------


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """``("ok", value)``, or ``("raised", exception type)``: garbage must fail the same way."""
    try:
        return "ok", fn(*args)
    except (TypeError, ValueError, OverflowError) as error:  # what garbage input can raise
        return "raised", type(error)


def bits(values: Sequence[object]) -> list[str]:
    """Values as ``repr``: tells ``-0.0`` from ``0.0``, ``1`` from ``1.0``, and ``nan`` from all."""
    return [repr(v) for v in values]


def assert_same_scores(new: tuple[str, Any], ref: tuple[str, Any]) -> None:
    assert new[0] == ref[0], (new, ref)
    if ref[0] == "raised":
        assert new[1] is ref[1]
    else:
        assert bits(new[1]) == bits(ref[1])


def assert_same_list(
    new: tuple[str, Any], ref: tuple[str, Any], candidates: Sequence[Candidate]
) -> None:
    """The same candidates in the same order: the very input objects where the reference gives
    an input object back, equal new ones (same fields, same propensity bits) where it made one."""
    assert new[0] == ref[0], (new, ref)
    if ref[0] == "raised":
        assert new[1] is ref[1]
        return
    got, want = new[1], ref[1]
    assert type(got) is type(want)
    assert len(got) == len(want)
    inputs = {id(c) for c in candidates}
    for a, b in zip(got, want, strict=True):
        if id(b) in inputs:
            assert a is b
        else:
            assert id(a) not in inputs
            assert a == b
            assert repr(a.propensity) == repr(b.propensity)
    assert (got is candidates) == (want is candidates)  # passed through, or a fresh list


# --- strategies --------------------------------------------------------------------------------

NOW = 1_700_000_000.0
CATEGORIES = ["shoes", "books", "toys", "bags", "games", "tools", "food", "music", None]
FEW_IDS = [f"i{n}" for n in range(12)]  # many repeats
MANY_IDS = [f"i{n}" for n in range(2_000)]  # mostly unique

specials = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324])
recent = st.floats(NOW - 400 * 86_400, NOW)
NAN_ID = math.nan  # one object: equal to itself by identity only
#: Per kind of list: scores, publication times, and item ids beside the strings.
KINDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any], list[Any]]] = {
    # finite float scores and times: the usual input, and the fast paths
    "clean": (st.floats(-1e6, 1e6), recent, []),
    "typical": (st.floats(-1e6, 1e6) | st.integers(-1_000, 1_000), st.none() | recent, []),
    # floats only, but not all finite: the fast paths must notice
    "floats": (st.floats(-1e6, 1e6) | specials, recent | specials, []),
    # scores so far apart that normalizing them overflows (additive: nan final scores)
    "extreme": (
        st.one_of(
            st.sampled_from([1e308, -1e308, 1.7e308, -1.7e308, 9e307, -9e307, 0.0]),
            st.floats(-1.7e308, 1.7e308),
            st.floats(-10, 10),
        ),
        st.none() | recent,
        [],
    ),
    # any float, ints, the odd float at the edge of the range
    "messy": (
        st.one_of(st.floats(-1e6, 1e6), st.integers(-1_000, 1_000), specials, st.floats()),
        st.one_of(st.none(), recent, st.integers(int(NOW) - 400 * 86_400, int(NOW)), specials),
        [],
    ),
    # what the types forbid, but the plain version tolerated
    "garbage": (
        st.one_of(
            st.floats(), specials, st.sampled_from(["high", None, True, False, 2**1023, -(2**1023)])
        ),
        st.one_of(st.none(), recent, specials, st.sampled_from(["yesterday", True, 2**1023])),
        [1, 1.0, True, None, NAN_ID],
    ),
    # ints too large for a float: the plain version failed, and so must the new one
    "overflow": (
        st.floats(-1e6, 1e6) | st.sampled_from([10**400, 2**1023, -(2**1023)]),
        st.none() | recent | st.sampled_from([10**400, 2**1023, -(2**1023)]),
        [],
    ),
}


@st.composite
def candidate_lists(
    draw: st.DrawFn, *, kinds: Sequence[str] = tuple(KINDS), max_size: int = 600
) -> Any:
    """0 to ``max_size`` candidates: ids from a small or a large set (so repeated or mostly
    not), the same object twice now and then, sorted by score or not."""
    size = draw(st.one_of(st.integers(0, 30), st.integers(0, max_size)))
    scores, times, odd_ids = KINDS[draw(st.sampled_from(kinds))]
    ids = draw(st.sampled_from([FEW_IDS, MANY_IDS])) + odd_ids
    candidate = st.builds(
        Candidate,
        item_id=st.sampled_from(ids),
        score=scores,
        category=st.sampled_from(CATEGORIES),
        published_at=times,
    )
    items = draw(st.lists(candidate, min_size=min(size, 20), max_size=min(size, 20)))
    # Hypothesis is slow at drawing hundreds of elements one by one: past the first 20, repeat
    # and recombine those drawn (a realistic catalog repeats its categories and times anyway).
    rng = random.Random(draw(st.integers(0, 2**32)))
    while items and len(items) < size:
        a, b = rng.choice(items), rng.choice(items)
        if rng.random() < 0.02:
            items.append(a)  # the very same object again
            continue
        items.append(
            Candidate(
                rng.choice(ids),
                a.score if rng.random() < 0.5 else rng.uniform(-100, 100),
                b.category,
                a.published_at if rng.random() < 0.5 else NOW - rng.uniform(0, 400 * 86_400),
            )
        )
    if draw(st.booleans()):
        items.sort(key=lambda c: -c.score if type(c.score) is float else 0.0)  # as a ranking is
    return draw(st.sampled_from([list, tuple]))(items)


weights = st.one_of(
    st.floats(0, 1),
    st.floats(-1, 2),
    st.sampled_from([math.nan, math.inf, -0.0]),
    st.integers(0, 3),
)
signals = st.one_of(
    st.none(),
    st.builds(
        Signals,
        categories=st.dictionaries(st.sampled_from(CATEGORIES), weights, max_size=6),
        items=st.dictionaries(st.sampled_from(FEW_IDS + MANY_IDS[:40]), weights, max_size=8),
        tier=st.just("session"),
    ),
)
boost_params = st.builds(
    lambda cap, combine, category_weight, item_weight, apply_when: BoostCapParams.model_validate(
        {
            "cap": cap,
            "combine": combine,
            "category_weight": category_weight,
            "item_weight": item_weight,
            "apply_when": apply_when,
        }
    ),
    cap=st.one_of(st.floats(0, 10, exclude_min=True), st.sampled_from([0.5, 10.0, 5e-324])),
    combine=st.sampled_from(["multiplicative", "additive"]),
    category_weight=st.one_of(
        st.just(1.0), st.floats(0, 5), st.sampled_from([0.0, -0.0, math.inf])
    ),
    item_weight=st.one_of(st.just(1.0), st.floats(0, 5), st.sampled_from([0.0, -0.0, math.inf])),
    apply_when=st.sampled_from(["personalized", "always"]),
)
exploration_params = st.builds(
    lambda share, k, novelty, half_life, salt, apply_when: ExplorationParams.model_validate(
        {
            "share": share,
            "k": k,
            "novelty": novelty,
            "half_life": half_life,
            "salt": salt,
            "apply_when": apply_when,
        }
    ),
    share=st.one_of(st.sampled_from([0.1, 0.15, 0.2, 0.5]), st.floats(0, 0.5)),
    k=st.one_of(st.integers(1, 40), st.integers(1, 40), st.integers(1, 1_000)),
    novelty=st.one_of(st.just(2.0), st.floats(0, 1e6), st.sampled_from([0.0, math.inf])),
    half_life=st.one_of(
        st.none(),
        st.just(30 * 86_400.0),
        st.floats(1e-3, 1e12),
        st.sampled_from([60.0, 5e-324, math.inf]),
    ),
    salt=st.sampled_from(["exploration", "other"]),
    apply_when=st.sampled_from(["personalized", "always"]),
)
request_ids = st.one_of(st.text(max_size=8), st.integers(0, 10**6).map(lambda n: f"r{n}"))

FAST = settings(max_examples=200)


# --- boost_cap ---------------------------------------------------------------------------------


@FAST
@given(candidates=candidate_lists(), signals=signals, params=boost_params)
def test_boosted_scores_are_the_references(
    candidates: Sequence[Candidate], signals: Signals | None, params: BoostCapParams
) -> None:
    assert_same_scores(
        outcome(boosted_scores, candidates, signals, params),
        outcome(reference_boosted_scores, candidates, signals, params),
    )


def check_boost_apply(
    candidates: Sequence[Candidate], signals: Signals | None, params: BoostCapParams
) -> None:
    step = BoostCapStep.__new__(BoostCapStep)
    step.params = params
    assert_same_list(
        outcome(step.apply, RequestContext(), signals, candidates),
        outcome(reference_boost_apply, candidates, signals, params),
        candidates,
    )


@FAST
@given(candidates=candidate_lists(), signals=signals, params=boost_params)
def test_boost_cap_ranks_as_the_reference(
    candidates: Sequence[Candidate], signals: Signals | None, params: BoostCapParams
) -> None:
    check_boost_apply(candidates, signals, params)


def test_boost_cap_edge_cases_are_the_references() -> None:
    nan, inf = math.nan, math.inf
    lists: list[list[Candidate]] = [
        [],
        [Candidate("a", 0.0), Candidate("b", -0.0), Candidate("c", 0), Candidate("d", False)],
        [Candidate("a", 1e308, "x"), Candidate("b", -1e308, "x"), Candidate("c", 1.0, "y")],
        [Candidate("a", nan), Candidate("b", inf), Candidate("c", -inf), Candidate("d", "s")],  # type: ignore[arg-type]
        [Candidate("a", 1.5, "x"), Candidate("b", 1.0, "y"), Candidate("a", 1.0, "x")],
        [Candidate("a", 2**1023, "x"), Candidate("b", -(2**1023), "x"), Candidate("c", 0)],
        [Candidate("a", 3.0, "x")],  # additive: no span, the score is the boost alone
        # additive: the span overflows, and the top scores are nan, among ties
        [
            Candidate(f"e{n}", (1.7e308, -1.7e308, 1e308, 0.0, 1.0)[n % 5], "xy"[n % 2])
            for n in range(30)
        ],
    ]
    signal_sets = [
        None,
        Signals({}, {}, "s"),
        Signals({"x": 1.0}, {}, "s"),
        Signals({"x": -0.0}, {}, "s"),
        Signals({"x": -0.0, "y": nan}, {"a": 1.0}, "s"),
        Signals({"x": inf}, {"b": -1.0, "c": nan}, "s"),
    ]
    for candidates in lists:
        for signals_ in signal_sets:
            for combine in ("multiplicative", "additive"):
                for item_weight in (1.0, 0.0, -0.0, inf):
                    params = BoostCapParams.model_validate(
                        {"combine": combine, "item_weight": item_weight, "apply_when": "always"}
                    )
                    assert_same_scores(
                        outcome(boosted_scores, candidates, signals_, params),
                        outcome(reference_boosted_scores, candidates, signals_, params),
                    )
                    check_boost_apply(candidates, signals_, params)


# --- exploration -------------------------------------------------------------------------------


def test_explore_edge_cases_are_the_references() -> None:
    nan, inf = math.nan, math.inf
    top = [Candidate(f"t{n}", 1.0, "a", NOW) for n in range(10)]
    same = Candidate("s", 0.0, "b", NOW - 5)
    pools: list[list[Candidate]] = [
        # ids the types forbid: equal across types (1, 1.0, True), and nan, equal to nothing
        [Candidate(i, 0.0, "b", NOW - n) for n, i in enumerate([1, 1.0, True, nan, nan, None] * 2)],  # type: ignore[arg-type]
        [same, Candidate("u", 0.0, "c"), same, Candidate("s", 0.0, "c"), same],  # one object twice
        [
            Candidate(f"p{n}", 0.0, "bcd"[n % 3], (NOW - n, inf, nan, -inf)[n % 4])
            for n in range(12)
        ],
        [Candidate(f"p{n}", 0.0, "bcd"[n % 3], (NOW - n, 1e308, -1e308)[n % 3]) for n in range(12)],
        [Candidate(f"t{n}", 0.0, "b", NOW - n) for n in range(12)],  # every id shown already
    ]
    for pool in pools:
        for share, half_life, novelty in (
            (0.5, None, 2.0),
            (0.5, 60.0, 2.0),  # the old items' weights underflow
            (0.3, inf, 0.0),
            (0.2, 30 * 86_400.0, inf),  # infinite weights: the draw is even
        ):
            params = ExplorationParams(share=share, k=10, half_life=half_life, novelty=novelty)
            for n in range(40):
                candidates = top + pool
                assert_same_list(
                    outcome(explore, candidates, params, f"r{n}"),
                    outcome(reference_explore, candidates, params, f"r{n}"),
                    candidates,
                )


@FAST
@given(
    candidates=candidate_lists(),
    params=exploration_params,
    request_id=request_ids,
    data=st.data(),
)
def test_explore_is_the_reference(
    candidates: Sequence[Candidate],
    params: ExplorationParams,
    request_id: str,
    data: st.DataObject,
) -> None:
    if data.draw(st.booleans()):  # mostly a k within the list, so that there are draws
        k = data.draw(st.integers(1, max(1, len(candidates) - 1)))
        params = params.model_copy(update={"k": k, "share": max(params.share, 1 / (k + 1))})
    assert_same_list(
        outcome(explore, candidates, params, request_id),
        outcome(reference_explore, candidates, params, request_id),
        candidates,
    )


@FAST
@given(
    candidates=candidate_lists(kinds=("clean", "typical"), max_size=200),
    share=st.floats(0.05, 0.5),
    k=st.integers(2, 60),
    novelty=st.one_of(st.just(2.0), st.floats(0, 100)),
    half_life=st.one_of(st.none(), st.floats(60.0, 1e9)),
    request_id=request_ids,
)
@example(  # every weight underflows: the draw is even
    candidates=[Candidate(f"t{n}", 1.0, "a", NOW) for n in range(10)]
    + [Candidate(f"o{n}", 0.0, "b", NOW - 400 * 86_400) for n in range(5)],
    share=0.3,
    k=10,
    novelty=2.0,
    half_life=60.0,
    request_id="r",
)
@example(  # the pool repeats ids: a drawn id is not drawn again
    candidates=[Candidate(f"t{n}", 1.0, "a", NOW) for n in range(10)]
    + [Candidate(f"d{n % 2}", 0.0, ("b", "c")[n % 2], NOW - n) for n in range(9)],
    share=0.5,
    k=10,
    novelty=2.0,
    half_life=None,
    request_id="r",
)
def test_explore_draws_as_the_reference_on_plausible_lists(
    candidates: Sequence[Candidate],
    share: float,
    k: int,
    novelty: float,
    half_life: float | None,
    request_id: str,
) -> None:
    """Realistic lists, where every slot gets filled: the draws themselves are compared."""
    params = ExplorationParams(share=share, k=k, novelty=novelty, half_life=half_life)
    assert_same_list(
        outcome(explore, candidates, params, request_id),
        outcome(reference_explore, candidates, params, request_id),
        candidates,
    )


@FAST
@given(
    candidates=candidate_lists(max_size=100),
    signals=signals,
    params=exploration_params,
    request_id=request_ids,
)
def test_exploration_step_is_the_reference(
    candidates: Sequence[Candidate],
    signals: Signals | None,
    params: ExplorationParams,
    request_id: str,
) -> None:
    step = ExplorationStep.__new__(ExplorationStep)
    step.params = params
    assert_same_list(
        outcome(step.apply, RequestContext(request_id=request_id), signals, candidates),
        outcome(reference_explore_apply, candidates, signals, params, request_id),
        candidates,
    )


def test_explore_matches_the_reference_over_many_request_ids() -> None:
    """The seeded draws, request id after request id, on a catalog-like list of 500."""
    rng = random.Random(11)
    candidates = sorted(
        (
            Candidate(
                f"i{n}",
                rng.uniform(0, 10),
                rng.choice(CATEGORIES),
                None if rng.random() < 0.1 else NOW - rng.uniform(0, 90 * 86_400),
            )
            for n in range(500)
        ),
        key=lambda c: -c.score,
    )
    for params in (
        ExplorationParams(),
        ExplorationParams(share=0.5, k=40, novelty=0.0),
        ExplorationParams(share=0.2, k=20, half_life=None),
    ):
        for n in range(200):
            assert_same_list(
                outcome(explore, candidates, params, f"r{n}"),
                outcome(reference_explore, candidates, params, f"r{n}"),
                candidates,
            )
