"""``stale_cache``: the last good session signals, kept in-process, served while young enough.

When the session store fails or is slow, the signals a ``session`` tier last produced for this
session are often still good: they serve here while younger than ``max_age`` (age counted from
the last successful read, on the wall clock), and the trace shows their age
(``stale_cache=ok[age 12.0s]``). Older entries, and sessions never read, ``miss``. Reads touch
only memory.

The cache is bounded (``max_entries``, least recently used sessions go first) and its entries
expire: the cache's TTL is the largest ``max_age`` of the tiers reading it, so a session that
ended stops holding memory. See :mod:`resilience_plugins.signal_cache`.
"""

from __future__ import annotations

from pydantic import Field

from resilience import (
    BuildContext,
    Duration,
    RequestContext,
    Signals,
    StepParams,
    Tier,
    TierParams,
)

from ..signal_cache import DEFAULT_MAX_ENTRIES, SignalCache, cache_key

__all__ = ["StaleCacheParams", "StaleCacheTier"]


class StaleCacheParams(TierParams):
    """Parameters of the ``stale_cache`` tier."""

    timeout: Duration = Field(default=0.001, gt=0, description="A memory read; 1ms is ample.")
    cache: str = Field(
        default="session",
        min_length=1,
        description="Name of the cache to serve from, as fed by a session tier's 'cache'.",
    )
    max_age: Duration = Field(
        default=300.0,
        gt=0,
        description="Oldest data served, counted from its last good read. Also the cache's TTL: "
        "shared caches keep entries for the largest max_age declared.",
    )
    max_entries: int = Field(
        default=DEFAULT_MAX_ENTRIES,
        ge=1,
        description="Sessions kept (least recently used go first). Shared caches take the "
        "largest size declared.",
    )


class StaleCacheTier(Tier):
    """Serves the cached signals of the request's session. See the module docstring."""

    name = "stale_cache"
    Params = StaleCacheParams

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, StaleCacheParams)
        self._cache_name = params.cache
        self._cache = context.shared(cache_key(params.cache), SignalCache)
        # The session tier may have made the cache: the TTL counts on the engine's wall clock.
        self._cache.bind_clock(context.clock.wall)
        self._cache.ensure_capacity(params.max_entries)
        self._cache.ensure_ttl(params.max_age)
        self._cache.readers.append(f"{context.policy}.{self.step_id}")
        self._max_age = params.max_age
        self._wall = context.clock.wall

    def verify(self) -> str | None:
        if not self._cache.writers:
            return (
                f"no tier feeds the cache {self._cache_name!r}, so this tier can never serve "
                f"(add a session tier with 'cache: {self._cache_name}')"
            )
        return None

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        session_id = request.session_id
        if not session_id:
            return None
        found = self._cache.recall(session_id)
        if found is None:
            return None
        cached, fetched_at = found
        age = self._wall() - fetched_at
        if age > self._max_age:
            return None
        return Signals(
            cached.categories,
            cached.items,
            self.step_id,
            cached.sources,
            cached.session_weight,
            cached.observed_at,
            f"age {max(age, 0.0):.1f}s",  # the wall clock may have stepped back
        )
