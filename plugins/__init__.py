"""The built-in plugins, installed as ``resilience_plugins``.

They register through the same hook a third-party plugin implements
(:func:`resilience.hookspecs.resilience_step_types`); the engine knows none of them by name.
"""

from __future__ import annotations

from collections.abc import Sequence

from resilience import Step, hookimpl

from .guards.error_rate import ErrorRateGuard
from .guards.stream_lag import StreamLagGuard
from .post.boost_cap import BoostCapStep
from .post.exploration import ExplorationStep
from .tiers.profile_only import ProfileOnlyTier
from .tiers.segment import SegmentTier
from .tiers.session import SessionTier
from .tiers.stale_cache import StaleCacheTier
from .tiers.unpersonalized import UnpersonalizedTier

__all__ = ["resilience_step_types"]


@hookimpl
def resilience_step_types() -> Sequence[type[Step]]:
    return [
        SessionTier,
        StaleCacheTier,
        ProfileOnlyTier,
        SegmentTier,
        UnpersonalizedTier,
        ErrorRateGuard,
        StreamLagGuard,
        BoostCapStep,
        ExplorationStep,
    ]
