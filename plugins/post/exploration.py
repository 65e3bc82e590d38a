"""``exploration``: reserve some of the top slots for diverse items the ranking would not show.

Against filter bubbles, the brief asks to reserve 10-20% of results for exploration. Of the top
``k`` slots, ``n = floor(share * k + 0.5)`` hold items drawn from the *pool*: the candidates the
current ranking places below the top ``k``. The draw is diversity-aware and favours recent items:
an item's weight is

    (1 + novelty, if its category is not yet among the top k or the items drawn so far)
    * 0.5 ** (age / half_life), for an item with a publication time (1 without one)

with ages counted from the newest candidate's publication (not the clock, so that a replay
gives the same list), and items are drawn one slot at a time without replacement, with
probability proportional to weight (evenly, should every weight underflow). Items whose id the
list already shows are not drawn. Each placed item carries its ``propensity``: the probability
that it was drawn for its slot *given the draws before it* (a conditional propensity; the first
slot's is also its marginal), for off-policy evaluation.

Slot positions and draws are seeded by the request id (and ``salt``), so the same request id and
candidates give the same list: a result can be replayed. The top slot is never replaced. Exploration
applies by default only when a personalized tier served (``apply_when: personalized``). No item
is dropped or duplicated: the ranked items keep their order around the exploration slots, and
the ones pushed out of the top k lead the rest of the list.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from pydantic import Field

from resilience import (
    Candidate,
    Duration,
    PostStep,
    RequestContext,
    Signals,
    StepParams,
)

__all__ = ["ExplorationParams", "ExplorationStep", "explore", "slot_count"]


class ExplorationParams(StepParams):
    """Parameters of the ``exploration`` post step."""

    share: float = Field(
        default=0.15,
        ge=0,
        le=0.5,
        description="Share of the top k slots given to exploration (the brief: 0.10 to 0.20).",
    )
    k: int = Field(default=10, ge=1, le=1000, description="How many top slots the share is of.")
    novelty: float = Field(
        default=2.0, ge=0, description="Extra weight for an item of a category not yet shown."
    )
    half_life: Duration | None = Field(
        default=30 * 86_400.0,
        gt=0,
        description="Age at which an item's weight halves; null: age does not count.",
    )
    salt: str = Field(
        default="exploration",
        min_length=1,
        description="Mixed into the seed; change it to draw differently for the same requests.",
    )
    apply_when: Literal["personalized", "always"] = Field(
        default="personalized",
        description="personalized: only when a personalized tier served; always: every request.",
    )

    def advice(self) -> list[str]:
        if self.share > 0 and not 0.10 <= self.share <= 0.20:
            return [
                f"share {self.share:g} is outside 0.10-0.20, the brief's range for exploration "
                "slots"
            ]
        return []


def slot_count(share: float, k: int, available: int) -> int:
    """How many exploration slots: ``floor(share * k + 0.5)``, within what the list allows."""
    wanted = math.floor(share * k + 0.5)
    return max(0, min(wanted, k - 1, available))


def _seed(salt: str, request_id: str) -> int:
    digest = hashlib.sha256(f"{salt}\x00{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def explore(
    candidates: Sequence[Candidate],
    params: ExplorationParams,
    request_id: str,
) -> list[Candidate]:
    """The list with its exploration slots filled. Pure: the same candidates and request id
    give the same list, whenever it is replayed (ages count from the newest candidate)."""
    ranked = list(candidates)
    times = [
        c.published_at
        for c in ranked
        if isinstance(c.published_at, int | float) and math.isfinite(c.published_at)
    ]
    now = max(times) if times else 0.0
    k = min(params.k, len(ranked))
    top, pool = ranked[:k], ranked[k:]
    n = slot_count(params.share, params.k, len(pool)) if k == params.k else 0
    if n == 0:
        return ranked
    rng = random.Random(_seed(params.salt, request_id))
    slots = sorted(rng.sample(range(1, k), n))  # never the top slot
    # The categories and ids the list shows anyway: the ranked items that stay in the top k.
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

    # An item whose id the list already shows is never drawn: exploration adds no duplicates.
    # Recency is worked out once; only the novelty part changes from one slot to the next.
    drawable = [(c, c.category, recency(c)) for c in pool if c.item_id not in shown_ids]
    drawn: set[int] = set()  # the candidate objects drawn
    picks: list[Candidate] = []
    for _ in slots:
        if not drawable:
            break
        weights = [
            (1.0 + novelty if category not in shown else 1.0) * rec for _, category, rec in drawable
        ]
        total = sum(weights)
        if not (total > 0 and math.isfinite(total)):  # every weight underflowed: draw evenly
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
        # An id drawn once is not drawn again (the input may repeat ids).
        drawable = [entry for entry in drawable if entry[0].item_id != chosen.item_id]
    # The picks go into their slots; the ranked items fill the other slots in their order, and
    # the last few of the top k, pushed out, lead the rest of the pool.
    kept = iter(top)
    placed = dict(zip(slots, picks, strict=False))
    head = [placed[i] if i in placed else next(kept) for i in range(k)]
    return head + list(kept) + [c for c in pool if id(c) not in drawn]


class ExplorationStep(PostStep):
    """Fills exploration slots. See the module docstring."""

    name = "exploration"
    Params = ExplorationParams

    def apply(
        self, request: RequestContext, signals: Signals | None, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]:
        params = self.params
        assert isinstance(params, ExplorationParams)
        if signals is None and params.apply_when == "personalized":
            return candidates if isinstance(candidates, list | tuple) else list(candidates)
        return explore(candidates, params, request.request_id)
