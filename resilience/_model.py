"""The records that cross the engine's boundary: requests, candidates, source data and signals.

All are immutable and slotted. Sources return :class:`SessionState` or :class:`Affinities`;
tiers turn them into :class:`Signals`; post steps re-rank :class:`Candidate` lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import isfinite
from types import MappingProxyType
from typing import NamedTuple

from ._errors import GarbageData

__all__ = [
    "Affinities",
    "Candidate",
    "Click",
    "RequestContext",
    "SessionState",
    "Signals",
    "normalize_weights",
]

_EMPTY: Mapping[str, float] = MappingProxyType({})
_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Candidate:
    """One search result before personalization.

    Args:
        item_id: the item's id.
        score: its query-relevance score (higher is better).
        category: its category, if known.
        published_at: wall-clock seconds when the item was published, if known.
        propensity: see below; leave it ``None`` on input.
    """

    item_id: str
    score: float
    category: str | None = None
    published_at: float | None = None
    #: set by an exploration step on the items it placed: the probability that this item was
    #: picked for its slot under the policy (for off-policy evaluation); ``None`` otherwise.
    propensity: float | None = None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the search service knows about one request.

    Every field is optional: a request with no user, no session and no candidates still gets an
    answer (the un-personalized one).

    Args:
        user_id: the signed-in user, or ``None`` for an anonymous visitor.
        session_id: the browsing session, or ``None``.
        policy: the policy to run; ``None`` runs the file's ``default_policy``.
        request_id: an id to correlate the trace with the service's own logs.
        query: the search query.
        candidates: the results to re-rank, best first by query relevance.
        segment: the user's segment (demographic bucket), for the ``segment`` tier.
        time_left: seconds the upstream request has left; the decision uses the smaller of this
            and the policy's budget.
        attributes: free-form request attributes for plugins (country, device, ...).
        recent_clicks: the client's newest clicks, which may not have reached the session
            store yet (it lags 100-500 ms behind a click); the ``session`` tier merges them in.
    """

    user_id: str | None = None
    session_id: str | None = None
    policy: str | None = None
    request_id: str = ""
    query: str = ""
    candidates: Sequence[Candidate] = ()
    segment: str | None = None
    time_left: float | None = None
    attributes: Mapping[str, str] = field(default_factory=lambda: _NO_ATTRIBUTES)
    recent_clicks: tuple[Click, ...] = ()


@dataclass(frozen=True, slots=True)
class Click:
    """One click in a session, as the stream processor recorded it.

    Args:
        item_id: the clicked item.
        category: its category, if known.
        at: wall-clock seconds of the click (event time).
    """

    item_id: str
    category: str | None
    at: float


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a session store returns for one session.

    Args:
        clicks: the session's clicks, oldest first. Empty for a new session.
        event_time: wall-clock seconds of the newest event the stream processor has applied to
            this state; used to judge freshness. ``None`` when unknown.
    """

    clicks: tuple[Click, ...] = ()
    event_time: float | None = None


@dataclass(frozen=True, slots=True)
class Affinities:
    """Preference weights: what a profile store returns for a user, or a segment table for a
    segment.

    Args:
        categories: category -> non-negative weight.
        items: item id -> non-negative weight.
        updated_at: wall-clock seconds when these weights were computed, if known.
    """

    categories: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    items: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    updated_at: float | None = None


class Signals(NamedTuple):
    """The personalization signals one tier chose for a request.

    Weights are normalized so that each mapping sums to 1 (or is empty). Post steps read them to
    re-rank candidates. Immutable; a named tuple because one is built on every request, at a
    third of a frozen dataclass's cost.

    Args:
        categories: category -> weight.
        items: item id -> weight.
        tier: the id of the tier that produced them.
        sources: the names of the sources read to build them (provenance).
        session_weight: the share of in-session signals in the blend, 0 to 1 (0 for a profile or
            segment, 1 for session data with no profile to blend with).
        observed_at: wall-clock seconds of the newest data behind them, if known.
        note: a short remark the trace shows beside the tier's ``ok`` (``"age 12.0s"``), or
            ``""``.
    """

    categories: Mapping[str, float]
    items: Mapping[str, float]
    tier: str
    sources: tuple[str, ...] = ()
    session_weight: float = 0.0
    observed_at: float | None = None
    note: str = ""


def normalize_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Scale non-negative weights to sum to 1; an all-zero or empty mapping gives ``{}``.

    Raises:
        GarbageData: a weight that is not a finite non-negative number, or a key that is not a
            string.
    """
    total = 0.0
    for key, weight in weights.items():
        if (
            type(key) is not str
            or type(weight) not in (float, int)
            or not isfinite(weight)
            or weight < 0
        ):
            raise GarbageData(f"weight {key!r}: {weight!r} is not a finite non-negative number")
        total += weight
    if total <= 0.0:
        return {}
    return {key: weight / total for key, weight in weights.items() if weight > 0}
