"""``unpersonalized``: the terminal tier. Needs no data, cannot fail, always serves.

It serves empty signals, which the engine reports as "no personalization" (``signals=None``);
the candidates keep their query-relevance order unless post steps change it. Every chain ends
with a terminal tier; it runs even when the budget is spent.
"""

from __future__ import annotations

from pydantic import Field

from resilience import BuildContext, Duration, RequestContext, Signals, StepParams, Tier, TierParams

__all__ = ["UnpersonalizedParams", "UnpersonalizedTier"]


class UnpersonalizedParams(TierParams):
    """Parameters of the ``unpersonalized`` tier (it has none of its own)."""

    timeout: Duration = Field(default=0.001, gt=0, description="Never reached: it reads nothing.")


class UnpersonalizedTier(Tier):
    """Serves no personalization."""

    name = "unpersonalized"
    Params = UnpersonalizedParams
    terminal = True

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        self._none = Signals({}, {}, self.step_id)

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        return self._none
