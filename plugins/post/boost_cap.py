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


def boosted_scores(
    candidates: Sequence[Candidate], signals: Signals | None, params: BoostCapParams
) -> list[float]:
    """The final score of each candidate, in input order."""
    categories = signals.categories if signals is not None else {}
    items = signals.items if signals is not None else {}
    cap = params.cap
    category_weight, item_weight = params.category_weight, params.item_weight

    def clipped(boost: float) -> float:
        return 0.0 if math.isnan(boost) else min(max(boost, 0.0), cap)

    # Worked out once per category; the item part only for the few items the signals name.
    by_category: dict[str | None, float] = {c: category_weight * w for c, w in categories.items()}
    if items:
        boosts = [
            clipped(by_category.get(c.category, 0.0) + item_weight * items.get(c.item_id, 0.0))
            for c in candidates
        ]
    else:
        capped: dict[str | None, float] = {c: clipped(b) for c, b in by_category.items()}
        boosts = [capped.get(c.category, 0.0) for c in candidates]
    bases = [_base(c.score) for c in candidates]
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
        scores = boosted_scores(candidates, signals, params)
        bases = [_base(c.score) for c in candidates]
        # Ties in the final score (normalizing can merge near-equal scores) go to the higher
        # base score, then keep their input order: with no boost this is the base order.
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], -bases[i]))
        return [candidates[i] for i in order]
