"""What ``profile_only`` and ``segment`` share: one read of :class:`Affinities` by a key."""

from __future__ import annotations

from resilience import (
    Affinities,
    BuildContext,
    GarbageData,
    RequestContext,
    Signals,
    SourceName,
    StepParams,
    Tier,
    TierParams,
    normalize_weights,
)

__all__ = ["AffinityParams", "AffinityTier"]


class AffinityParams(TierParams):
    """Parameters shared by tiers that read one :class:`Affinities` record."""

    source: SourceName


class AffinityTier(Tier):
    """Reads ``Affinities`` for :meth:`key` and serves them normalized.

    A missing key, a missing record or a record without weights is a ``miss``; a record of
    another type or with malformed weights is ``garbage``.
    """

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, AffinityParams)
        self._source = context.source(params.source, expect=Affinities)
        self._provenance = (params.source,)

    def key(self, request: RequestContext) -> str | None:
        """The key to read for ``request``, or ``None`` when it has none (a miss)."""
        raise NotImplementedError

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        key = self.key(request)
        if not key:
            return None
        return self._signals(self._source.call(key, timeout))

    async def arun(self, request: RequestContext, timeout: float) -> Signals | None:
        key = self.key(request)
        if not key:
            return None
        if self._source.awaits:
            return self._signals(await self._source.acall(key, timeout))
        return self._signals(self._source.call(key, timeout))

    def _signals(self, found: object) -> Signals | None:
        if found is None:
            return None
        if type(found) is not Affinities:
            raise GarbageData.unexpected(found, "Affinities", self._source.name)
        categories = normalize_weights(found.categories)
        items = normalize_weights(found.items)
        if not categories and not items:
            return None
        return Signals(categories, items, self.step_id, self._provenance, 0.0, found.updated_at)
