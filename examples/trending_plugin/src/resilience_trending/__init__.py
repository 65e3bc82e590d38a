"""An example third-party plugin for resilience: the ``trending_region`` tier."""

from .plugin import TrendingParams, TrendingRegionTier

__all__ = ["TrendingParams", "TrendingRegionTier"]
