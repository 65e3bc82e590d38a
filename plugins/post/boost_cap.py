"""``boost_cap``: apply the personalization signals to the base ranking, with a capped boost.

Each candidate's boost is what the served signals say of it: ``category_weight`` times the
signals' weight of its category plus ``item_weight`` times the weight of the item itself (the
signals' weights sum to 1). The boost is clipped to ``[0, cap]`` and applied by ``combine``:

- ``multiplicative`` (default): ``final = base + |base| * boost``, which is ``base * (1 + boost)``
  for the usual non-negative scores, and still raises, never lowers, a negative one;
- ``additive``: base scores min-max normalized to ``[0, 1]`` over the list, then
  ``final = normalized + boost``.

So no item's final score exceeds ``base + |base| * cap`` (``normalized + cap``), and with no
boost the order is the base order: candidates are sorted by final score, ties kept in their
input order. By default it applies only when a personalized tier served
(``apply_when: personalized``); un-personalized results keep their order. Candidates without a
category get no category boost; a non-finite base score sorts last. The candidates themselves
are returned unchanged, reordered: their ``score`` stays the base score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import repeat
from typing import Literal

from pydantic import Field

from resilience import Candidate, PostStep, RequestContext, Signals, StepParams

__all__ = ["BoostCapParams", "BoostCapStep", "boosted_scores"]


class BoostCapParams(StepParams):
    """Parameters of the ``boost_cap`` post step."""

    combine: Literal["multiplicative", "additive"] = Field(
        default="multiplicative", description="How the boost meets the base score."
    )
    cap: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="Largest boost: a share of the base score (multiplicative) or of the "
        "normalized score range (additive).",
    )
    category_weight: float = Field(
        default=1.0, ge=0, description="Scale of the category part of the boost."
    )
    item_weight: float = Field(default=1.0, ge=0, description="Scale of the item part.")
    apply_when: Literal["personalized", "always"] = Field(
        default="personalized",
        description="personalized: only when a personalized tier served; always: also on "
        "un-personalized results (then the boost is 0 and only the base order is applied).",
    )


def _base(score: float) -> float:
    return score if isinstance(score, int | float) and math.isfinite(score) else -math.inf


def _bases(candidates: Sequence[Candidate]) -> tuple[list[float], bool]:
    """Each candidate's base score (its score if a finite number, else ``-inf``), and whether
    every one is finite.

    This runs on every decision, over every candidate, so the usual list, all finite floats,
    is recognized by two passes in C: the scores' types, and their sum (finite only if every
    term is; an overflow merely takes the slow path). Then each base is the score itself, as
    ``_base`` would return it. Otherwise ``_base`` decides, errors included, but a finite float
    (``s - s`` is ``0.0`` for it, ``nan`` for an infinity or ``nan``) skips the call.
    """
    scores = [c.score for c in candidates]
    if set(map(type, scores)) == {float} and math.isfinite(sum(scores)):
        return scores, True
    bases = [s if type(s) is float and s - s == 0.0 else _base(s) for s in scores]
    return bases, False


def boosted_scores(
    candidates: Sequence[Candidate], signals: Signals | None, params: BoostCapParams
) -> list[float]:
    """The final score of each candidate, in input order."""
    boosts = _boosts(candidates, signals, params)
    bases, all_finite = _bases(candidates)
    return _final_scores(bases, all_finite, boosts, params)


def _boosts(
    candidates: Sequence[Candidate], signals: Signals | None, params: BoostCapParams
) -> list[float]:
    """Each candidate's boost, clipped to ``[0, cap]``."""
    categories = signals.categories if signals is not None else {}
    items = signals.items if signals is not None else {}
    cap = params.cap
    category_weight, item_weight = params.category_weight, params.item_weight

    def clipped(boost: float) -> float:
        return 0.0 if math.isnan(boost) else min(max(boost, 0.0), cap)

    by_category: dict[str | None, float] = {c: category_weight * w for c, w in categories.items()}
    if not items:  # a category's boost, clipped once per category
        capped = {c: clipped(b) for c, b in by_category.items()}
        return list(map(capped.get, [c.category for c in candidates], repeat(0.0)))
    # The item part is worked out only for the few candidates whose id the signals name. Any
    # other gets its category's boost plus ``item_weight * 0.0``, as if named with weight 0.0:
    # that sum (``nan`` for an infinite item_weight, then clipped to 0.0) is clipped once per
    # category too.
    unnamed = item_weight * 0.0
    capped = {c: clipped(b + unnamed) for c, b in by_category.items()}
    default = clipped(0.0 + unnamed)
    return [
        capped.get(c.category, default)
        if c.item_id not in items
        else clipped(by_category.get(c.category, 0.0) + item_weight * items[c.item_id])
        for c in candidates
    ]


def _final_scores(
    bases: list[float], all_finite: bool, boosts: list[float], params: BoostCapParams
) -> list[float]:
    """``boosted_scores``, given the bases (``apply`` needs them too: worked out once) and the
    boosts."""
    multiplicative = params.combine == "multiplicative"
    if all_finite and multiplicative:  # the usual case: no base to leave out
        return [base + abs(base) * boost for base, boost in zip(bases, boosts, strict=True)]
    # A base is a finite number or -inf (``_bases``): comparing with -inf tells the finite ones
    # without a call to math.isfinite.
    neg_inf = -math.inf
    if multiplicative:
        return [
            base + abs(base) * boost if base != neg_inf else base
            for base, boost in zip(bases, boosts, strict=True)
        ]
    finite = bases if all_finite else [b for b in bases if b != neg_inf]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = high - low
    if span > 0:
        return [
            (base - low) / span + boost if base != neg_inf else base
            for base, boost in zip(bases, boosts, strict=True)
        ]
    return [
        0.0 + boost if base != neg_inf else base for base, boost in zip(bases, boosts, strict=True)
    ]


class BoostCapStep(PostStep):
    """Re-ranks by the capped boosted score. See the module docstring."""

    name = "boost_cap"
    Params = BoostCapParams

    def apply(
        self, request: RequestContext, signals: Signals | None, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]:
        params = self.params
        assert isinstance(params, BoostCapParams)
        if signals is None and params.apply_when == "personalized":
            return candidates if isinstance(candidates, list | tuple) else list(candidates)
        # The boosts before the bases: input bad both ways fails with the error it always did.
        boosts = _boosts(candidates, signals, params)
        bases, all_finite = _bases(candidates)
        scores = _final_scores(bases, all_finite, boosts, params)
        # Ties in the final score (normalizing can merge near-equal scores) go to the higher
        # base score, then keep their input order: with no boost this is the base order.
        if not math.isnan(sum(scores)):  # no nan among the scores (inf - inf also lands below)
            # Then both keys are totally ordered, and two stable sorts give the (final, base)
            # order: by base, then by final score. Floats compare much faster than tuples, and
            # the first sort is nearly free on the usual input, already in base order. (Stable
            # descending is stable ascending on the negated key: ties keep their order.)
            order = sorted(range(len(candidates)), key=bases.__getitem__, reverse=True)
            order.sort(key=scores.__getitem__, reverse=True)
        else:  # a nan compares false with anything: keep to the very tuple comparisons
            keys = [(-score, -base) for score, base in zip(scores, bases, strict=True)]
            order = sorted(range(len(candidates)), key=keys.__getitem__)
        return [candidates[i] for i in order]
