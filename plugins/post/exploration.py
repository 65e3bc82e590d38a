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
from itertools import compress, repeat
from operator import mul, ne
from typing import Literal, cast

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
        description="Share of the top k slots given to exploration (0.10 to 0.20 is the "
        "usual range against filter bubbles).",
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
                f"share {self.share:g} is outside 0.10-0.20, the usual range for exploration slots"
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
    published, timed, now = _publication_times(ranked)
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
    # What may be drawn, as parallel lists (``where``: the position in the pool). An item whose
    # id the list already shows is never drawn: exploration adds no duplicates.
    where = list(range(len(pool)))
    ids = [c.item_id for c in pool]
    categories = [c.category for c in pool]
    times, pool_timed = published[k:], None if timed is None else timed[k:]
    for i in reversed(list(compress(where, map(shown_ids.__contains__, ids)))):  # seldom any
        del where[i], ids[i], categories[i], times[i]
        if pool_timed is not None:
            del pool_timed[i]
    recencies = _recencies(times, pool_timed, now, params.half_life)
    picks, rest = _draw(
        rng, len(slots), pool, where, ids, categories, recencies, shown, params.novelty
    )
    # The picks go into their slots; the ranked items fill the other slots in their order, and
    # the last few of the top k, pushed out, lead the rest of the pool.
    kept = iter(top)
    placed = dict(zip(slots, picks, strict=False))
    head = [placed[i] if i in placed else next(kept) for i in range(k)]
    return head + list(kept) + rest


def _is_time(published: object) -> bool:
    """Whether a publication time counts: a finite number."""
    return isinstance(published, int | float) and math.isfinite(published)


def _publication_times(
    ranked: list[Candidate],
) -> tuple[list[float | None], list[bool] | None, float]:
    """Each candidate's ``published_at``; which of them are times (``None``: all are); and the
    newest time (0.0 without any), from which ages count."""
    published = [c.published_at for c in ranked]
    # This runs over every candidate of every decision. The usual list, all finite floats, is
    # recognized by two passes in C: the types, and the sum (finite only if every term is; an
    # overflow merely takes the slow path).
    if set(map(type, published)) == {float}:
        floats = cast(list[float], published)
        if math.isfinite(sum(floats)):
            return published, None, max(floats)
    # Otherwise a finite float is still told inline (``p - p`` is ``0.0`` for it, ``nan`` for
    # an infinity or a ``nan``), and anything else but ``None`` goes through ``_is_time``.
    timed = [p - p == 0.0 if type(p) is float else p is not None and _is_time(p) for p in published]
    return published, timed, max(compress(cast(list[float], published), timed), default=0.0)


def _recencies(
    times: list[float | None], timed: list[bool] | None, now: float, half_life: float | None
) -> list[float]:
    """Each item's recency: ``0.5 ** (age / half_life)``, or 1 without a time or a half life.

    The rule was ``float(0.5 ** (max(now - t, 0.0) / half_life))``. But ``now`` is the newest
    of the times, so no age is negative and ``max`` changes nothing (a subtraction rounds
    monotonically: ``now >= t`` gives ``now - t >= 0``, for ints and floats alike). On the fast
    path every time is an exact ``float``, and ``0.5`` to a float power is a float: ``float()``
    is left out there only; a float subclass (``numpy.float64``) could return its own type.
    """
    if half_life is None:
        return [1.0] * len(times)
    if timed is None:
        return [0.5 ** ((now - t) / half_life) for t in cast(list[float], times)]
    return [
        float(0.5 ** ((now - t) / half_life)) if has_time else 1.0  # type: ignore[operator]
        for t, has_time in zip(times, timed, strict=True)
    ]


def _draw(
    rng: random.Random,
    slots: int,
    pool: list[Candidate],
    where: list[int],
    ids: list[str],
    categories: list[str | None],
    recencies: list[float],
    shown: set[str | None],
    novelty: float,
) -> tuple[list[Candidate], list[Candidate]]:
    """The picks for up to ``slots`` slots, in order, each with its propensity; and the pool
    without the candidates drawn. The drawable items come as parallel lists (``where``: each
    one's position in the pool), which the draws consume.
    """
    boost = 1.0 + novelty
    # An item's weight: ``(1 + novelty if its category is not shown else 1) * recency``. The
    # novelty test is made once per distinct category rather than per item, and the products
    # in C. The weights are then kept from one slot to the next: a draw changes only those of
    # the category it shows, and takes out the items of the id drawn (rather than working out
    # every weight, and a new list, for every slot).
    factors = {c: boost if c not in shown else 1.0 for c in set(categories)}
    weights = list(map(mul, map(factors.__getitem__, categories), recencies))
    # With ids all plain strings, ``==`` (which ``list.index`` uses, in C) is ``not !=``.
    plain_ids = set(map(type, ids)) <= {str}
    picks: list[Candidate] = []
    drawn: list[Candidate] = []
    drawn_at: list[int] = []  # the pool positions of the objects drawn (with plain ids)
    for _ in range(slots):
        if not where:
            break
        drawing, total = weights, sum(weights)
        if not (total > 0 and math.isfinite(total)):  # every weight underflowed: draw evenly
            drawing = [1.0] * len(where)
            total = float(len(where))
        index = _walk(drawing, rng.random() * total)
        chosen = pool[where[index]]
        drawn.append(chosen)
        picks.append(replace(chosen, propensity=drawing[index] / total))
        last_draw = len(picks) == slots  # then no weight is read again
        category = chosen.category
        if category not in shown and not last_draw:
            shown.add(category)
            # Its items lose their novelty: they are ``in shown`` now, by the same test.
            for i in compress(range(len(categories)), map({category}.__contains__, categories)):
                weights[i] = 1.0 * recencies[i]
        # An id drawn once is not drawn again (the input may repeat ids).
        if plain_ids:
            gone = _positions(ids, chosen.item_id)
            # Every occurrence of the object drawn is among them: were one left out before,
            # its id, the same, would have left too.
            drawn_at.extend(where[i] for i in gone if pool[where[i]] is chosen)
        else:
            differs = map(ne, ids, repeat(chosen.item_id))
            gone = [i for i, other in enumerate(differs) if not other]
        for i in reversed(gone):
            del where[i], ids[i], categories[i], recencies[i], weights[i]
    if plain_ids:
        rest = list(pool)
        for i in sorted(drawn_at, reverse=True):
            del rest[i]
        return picks, rest
    # Any id: the objects drawn leave the pool wherever they are, as they always did.
    gone_objects = {id(c) for c in drawn}
    return picks, [c for c in pool if id(c) not in gone_objects]


def _walk(weights: list[float], point: float) -> int:
    """The index ``point`` falls on, walking the weights in order (the last if it runs out)."""
    index = 0
    last = len(weights) - 1
    while index < last and point >= weights[index]:
        point -= weights[index]
        index += 1
    return index


def _positions(ids: list[str], item_id: str) -> list[int]:
    """Where ``item_id`` is in ``ids``, in order, found by ``list.index`` (in C)."""
    found: list[int] = []
    start = 0
    while True:
        try:
            start = ids.index(item_id, start)
        except ValueError:
            return found
        found.append(start)
        start += 1


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
