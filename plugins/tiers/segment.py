"""``segment``: segment-level preferences, for users without a profile (cold start).

Reads the preferences of the request's segment (``RequestContext.segment``, e.g. a demographic
bucket the search service knows). A request without a segment, or a segment without preferences,
is a ``miss``.
"""

from __future__ import annotations

from pydantic import Field

from resilience import Duration, RequestContext, SourceName

from .affinity import AffinityParams, AffinityTier

__all__ = ["SegmentParams", "SegmentTier"]


class SegmentParams(AffinityParams):
    """Parameters of the ``segment`` tier."""

    timeout: Duration = Field(default=0.005, gt=0, description="Cutoff for the segment read.")
    source: SourceName = Field(
        default="segment_store", description="Source returning Affinities per segment."
    )


class SegmentTier(AffinityTier):
    """Reads segment preferences by ``RequestContext.segment``."""

    name = "segment"
    Params = SegmentParams

    def key(self, request: RequestContext) -> str | None:
        return request.segment
