"""The ``trending_region`` tier, and the hook that contributes it.

The module itself is the plugin object the entry point names: pluggy finds the
``@hookimpl``-marked function in it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from resilience import (
    Affinities,
    BuildContext,
    Duration,
    GarbageData,
    RequestContext,
    Signals,
    SourceName,
    Step,
    StepParams,
    Tier,
    TierParams,
    hookimpl,
    normalize_weights,
)

__all__ = ["TrendingParams", "TrendingRegionTier", "resilience_step_types"]


class TrendingParams(TierParams):
    """``type: trending_region``."""

    timeout: Duration = Field(default=0.003, gt=0, description="Cutoff for the read.")
    source: SourceName = Field(
        default="trending_store", description="Affinities (category weights) per region."
    )
    attribute: str = Field(
        default="region", min_length=1, description="Request attribute holding the region."
    )


class TrendingRegionTier(Tier):
    """Serves the categories trending in the visitor's region; a request without a region, or
    a region the store does not know, is a miss."""

    name = "trending_region"
    Params = TrendingParams

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, TrendingParams)
        # expect=Affinities: anything else the store returns is garbage, counted by its breaker
        self._source = context.source(params.source, expect=Affinities)
        self._attribute = params.attribute

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        region = request.attributes.get(self._attribute)
        if not region:
            return None
        return self._signals(self._source.call(region, timeout))

    async def arun(self, request: RequestContext, timeout: float) -> Signals | None:
        region = request.attributes.get(self._attribute)
        if not region:
            return None
        if self._source.awaits:
            return self._signals(await self._source.acall(region, timeout))
        return self._signals(self._source.call(region, timeout))

    def _signals(self, found: object) -> Signals | None:
        if found is None:
            return None
        if not isinstance(found, Affinities):  # expect= refused it already; this narrows
            raise GarbageData(f"expected Affinities, got {type(found).__name__}")
        weights = normalize_weights(found.categories)
        return Signals(weights, {}, self.step_id, (self._source.name,)) if weights else None


@hookimpl
def resilience_step_types() -> Sequence[type[Step]]:
    return [TrendingRegionTier]
