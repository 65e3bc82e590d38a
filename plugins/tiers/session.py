"""``session``: recent-session signals, blended with the long-term profile as clicks accrue.

Why blending lives here: the brief asks a new session to use the long-term profile until its
first click and then blend session signals in gradually. That needs both in one decision, so this
tier reads the session store and (optionally) the profile store:

- no session id, or a session with no clicks: ``miss``; the chain goes on (a ``profile_only``
  tier further down then serves the long-term profile);
- ``n`` clicks: session weight ``w = min(n / (n + blend_k), max_session_weight)``, blended with
  the normalized profile as ``w * session + (1 - w) * profile``. Without a profile (none, or its
  read failed) the session signals serve alone (``w = 1``).

A successful read feeds the stale cache named by ``cache`` (a write only when the session changed).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping

from pydantic import Field, model_validator

from resilience import (
    IN_SHADOW,
    Affinities,
    BuildContext,
    Click,
    Duration,
    GarbageData,
    RequestContext,
    SessionState,
    Signals,
    SourceName,
    StepParams,
    Tier,
    TierParams,
    normalize_weights,
)

from ..signal_cache import SignalCache, cache_key

__all__ = ["SessionParams", "SessionTier", "blend", "with_recent_clicks"]


class SessionParams(TierParams):
    """Parameters of the ``session`` tier."""

    timeout: Duration = Field(
        default=0.010,
        gt=0,
        description="Cutoff for both reads together (10ms: slower than that, the "
        "session store costs more than it adds).",
    )
    source: SourceName = Field(
        default="session_store", description="Source returning a SessionState per session id."
    )
    profile_source: SourceName | None = Field(
        default="profile_store",
        description="Source returning Affinities per user id, blended in; null: session only.",
    )
    profile_timeout: Duration = Field(
        default=0.005,
        gt=0,
        description="Cutoff for the profile read, within the tier's timeout: a slow profile "
        "store costs the blend, not the session signals, where the read can be cut (an async "
        "store, a bulkhead, or a client that honours its timeout); a blocking call inline that "
        "outlasts the tier's timeout costs the tier.",
    )
    blend_k: float = Field(
        default=3.0,
        gt=0,
        description="Clicks at which session and profile weigh the same (w = n / (n + blend_k)).",
    )
    max_session_weight: float = Field(
        default=0.8, ge=0, le=1, description="Cap on the session's share of the blend."
    )
    max_clicks: int = Field(default=50, ge=1, description="Only the newest clicks count.")
    decay: Duration | None = Field(
        default=None,
        gt=0,
        description="Time constant of click decay exp(-age/decay); null: no decay.",
    )
    dedupe_window: Duration = Field(
        default=5.0,
        ge=0,
        description="A client-reported click of an item the store already has within this "
        "time is the same click.",
    )
    max_recent_clicks: int = Field(
        default=10, ge=0, le=100, description="Most client-reported clicks merged per request."
    )
    cache: str | None = Field(
        default="session",
        min_length=1,
        description="Name of the stale cache this tier feeds; null: feed none.",
    )

    @model_validator(mode="after")
    def _profile_read_fits(self) -> SessionParams:
        if self.profile_source is not None and self.profile_timeout >= self.timeout:
            raise ValueError(
                "profile_timeout must be below timeout; lower profile_timeout so that a slow "
                "profile store leaves time to serve the session signals alone"
            )
        return self


def with_recent_clicks(
    state: SessionState | None, recent: tuple[Click, ...], window: float, limit: int = 10
) -> SessionState:
    """The stored session with the client's newest clicks merged in, oldest first.

    The client is not trusted: of its clicks only the newest ``limit`` well-formed ones count
    (an item id, a finite time), each once; one of an item the store has within ``window``
    seconds of it is the same click, already propagated, and not counted twice.
    """
    stored = state.clicks if state is not None else ()
    well_formed = [
        click
        for click in recent
        if type(click) is Click
        and type(click.item_id) is str
        and (click.category is None or type(click.category) is str)
        and isinstance(click.at, int | float)
        and math.isfinite(click.at)
    ]
    fresh: list[Click] = []
    for click in sorted(well_formed, key=lambda c: c.at)[-limit:]:
        if any(
            old.item_id == click.item_id and abs(old.at - click.at) <= window
            for old in (*stored, *fresh)
        ):
            continue
        fresh.append(click)
    if not fresh:
        return state if state is not None else SessionState()
    merged = tuple(sorted((*stored, *fresh), key=lambda c: c.at))
    return SessionState(merged, state.event_time if state is not None else None)


def session_weight(clicks: int, blend_k: float, cap: float) -> float:
    """``min(n / (n + k), cap)``: 0.25 after 1 click and 0.5 after 3 with ``k = 3``."""
    return min(clicks / (clicks + blend_k), cap)


def blend(
    state: SessionState,
    profile: Affinities | None,
    params: SessionParams,
    now: float,
) -> tuple[dict[str, float], dict[str, float], float]:
    """Session signals blended with the profile: ``(categories, items, session_weight)``.

    Raises:
        GarbageData: the session holds values of the wrong type (a malformed profile is no
            profile: the session signals serve alone).
    """
    clicks = state.clicks[-params.max_clicks :]
    categories: dict[str, float] = {}
    items: dict[str, float] = {}
    tau = params.decay
    try:
        for click in clicks:
            item, category = click.item_id, click.category
            if type(item) is not str or not (category is None or type(category) is str):
                raise GarbageData(f"malformed click in session: {click!r}")
            weight = 1.0 if tau is None else math.exp(-max(now - click.at, 0.0) / tau)
            if category is not None:
                categories[category] = categories.get(category, 0.0) + weight
            items[item] = items.get(item, 0.0) + weight
    except (AttributeError, TypeError) as exc:
        raise GarbageData(f"malformed click in session: {exc}") from exc
    categories = _scaled(categories)
    items = _scaled(items)
    if profile is None:
        return categories, items, 1.0
    try:
        profile_categories = normalize_weights(profile.categories)
        profile_items = normalize_weights(profile.items)
    except GarbageData:
        return categories, items, 1.0  # a malformed profile costs the blend, not the session
    if not profile_categories and not profile_items:
        return categories, items, 1.0
    w = session_weight(len(clicks), params.blend_k, params.max_session_weight)
    return _mix(categories, profile_categories, w), _mix(items, profile_items, w), w


def _scaled(counts: dict[str, float]) -> dict[str, float]:
    # Built above from checked clicks: only a NaN click time can make the total unusable.
    total = sum(counts.values())
    if not math.isfinite(total):
        raise GarbageData("click times give non-finite weights")
    if total <= 0.0:
        return {}
    return {key: value / total for key, value in counts.items()}


def _mix(session: Mapping[str, float], profile: Mapping[str, float], w: float) -> dict[str, float]:
    if not profile:
        return dict(session)
    if not session:
        return dict(profile)
    out = {key: (1.0 - w) * value for key, value in profile.items()}
    for key, value in session.items():
        out[key] = out.get(key, 0.0) + w * value
    return out


class SessionTier(Tier):
    """Reads the session store and blends in the profile. See the module docstring."""

    name = "session"
    Params = SessionParams

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, SessionParams)
        self._params = params
        self._session = context.source(params.source, expect=SessionState)
        self._profile = (
            context.source(params.profile_source, expect=Affinities)
            if params.profile_source is not None
            else None
        )
        self._now = context.clock.monotonic
        self._wall = context.clock.wall
        self._profile_timeout = params.profile_timeout
        self._notes: dict[float, str] = {}
        self._cache: SignalCache | None = None
        if params.cache is not None:
            self._cache = context.shared(cache_key(params.cache), SignalCache)
            self._cache.writers.append(f"{context.policy}.{self.step_id}")
        self._sources_read = (params.source,)
        self._sources_blended = (
            (params.source, params.profile_source) if params.profile_source else (params.source,)
        )

    def verify(self) -> str | None:
        # A cache that no stale_cache tier reads would only cost a write per request.
        if self._cache is not None and not self._cache.readers:
            self._cache = None
        return None

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        session_id = request.session_id
        if not session_id:
            return None
        t0 = self._now()
        state = self._session.call(session_id, timeout)
        state = self._usable(state, request)
        if state is None:
            return None
        profile = None
        if self._profile is not None and request.user_id:
            started = self._now()
            wait = min(self._profile_timeout, timeout - (started - t0))
            if wait > 0.0:
                try:
                    profile = self._profile.call(request.user_id, wait)
                except Exception:  # the profile only refines the session's signals
                    profile = None
                if self._now() - started > wait:
                    profile = None  # late: the async form would have cut it off
        return self._signals(session_id, state, profile, t0, timeout)

    async def arun(self, request: RequestContext, timeout: float) -> Signals | None:
        session_id = request.session_id
        if not session_id:
            return None
        t0 = self._now()
        if self._session.awaits:
            state = await self._session.acall(session_id, timeout)
        else:
            state = self._session.call(session_id, timeout)
        state = self._usable(state, request)
        if state is None:
            return None
        profile = None
        if self._profile is not None and request.user_id:
            started = self._now()
            wait = min(self._profile_timeout, timeout - (started - t0))
            if wait > 0.0:
                try:
                    if self._profile.awaits:
                        # Its own cutoff, before the tier's: a hang costs the blend only.
                        async with asyncio.timeout(wait):
                            profile = await self._profile.acall(request.user_id, wait)
                    else:
                        profile = self._profile.call(request.user_id, wait)
                except Exception:  # the profile only refines the session's signals
                    profile = None
                if self._now() - started > wait:
                    profile = None
        return self._signals(session_id, state, profile, t0, timeout)

    def _usable(self, state: object, request: RequestContext) -> SessionState | None:
        """The session read, checked and merged with the client's newest clicks; ``None`` when
        it has no clicks (a miss)."""
        if state is not None and type(state) is not SessionState:
            raise GarbageData.unexpected(state, "SessionState", self._session.name)
        if request.recent_clicks:
            state = with_recent_clicks(
                state,
                request.recent_clicks,
                self._params.dedupe_window,
                self._params.max_recent_clicks,
            )
        return state if state is not None and state.clicks else None

    def _signals(
        self, session_id: str, state: SessionState, profile: object, t0: float, timeout: float
    ) -> Signals:
        usable = profile if type(profile) is Affinities else None
        now = self._wall()
        categories, items, weight = blend(state, usable, self._params, now)
        note = self._notes.get(weight)
        if note is None:  # a handful of distinct weights: each formatted once
            note = self._notes[weight] = f"w={weight:.2f}" if len(self._notes) < 256 else ""
        signals = Signals(
            categories,
            items,
            self.step_id,
            self._sources_blended if usable is not None and weight < 1.0 else self._sources_read,
            weight,
            state.event_time,
            note,
        )
        # A late read is discarded by the engine; it must not live on in the stale cache. Nor
        # may a policy in shadow mode feed a cache that live policies serve from.
        if self._cache is not None and self._now() - t0 <= timeout and not IN_SHADOW.get():
            self._cache.remember(session_id, signals, now)
        return signals
