"""``profile_only``: the user's long-term profile, with no session signals.

Serves when session data is unavailable, and for a new session before its first click. A
request without a user id, or a user without a profile, is a ``miss``.
"""

from __future__ import annotations

from pydantic import Field

from resilience import Duration, RequestContext, SourceName

from .affinity import AffinityParams, AffinityTier

__all__ = ["ProfileOnlyParams", "ProfileOnlyTier"]


class ProfileOnlyParams(AffinityParams):
    """Parameters of the ``profile_only`` tier."""

    timeout: Duration = Field(default=0.010, gt=0, description="Cutoff for the profile read.")
    source: SourceName = Field(
        default="profile_store", description="Source returning Affinities per user id."
    )


class ProfileOnlyTier(AffinityTier):
    """Reads the long-term profile by user id."""

    name = "profile_only"
    Params = ProfileOnlyParams

    def key(self, request: RequestContext) -> str | None:
        return request.user_id
