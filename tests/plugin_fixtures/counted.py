"""A tier whose module registers a metric: the contract check wants it in ``telemetry``."""

from __future__ import annotations

from resilience import RequestContext, Signals, Tier, register_metric

LOOKUPS = register_metric(
    "contract_test_lookups", "counter", ("step",), "Lookups of the contract test's tier."
)


class CountedTier(Tier):
    """Misses always; declares (or not) the metric its module registers."""

    name = "counted"

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        return None
