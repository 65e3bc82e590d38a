"""Step types a test plugin contributes: a guard, a post step and a tier."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from resilience import (
    Candidate,
    RequestContext,
    Signals,
    Step,
    StepParams,
    Tier,
    TierParams,
    hookimpl,
)
from resilience import Guard as GuardBase
from resilience import PostStep as PostBase


class OffForParams(StepParams):
    users: list[str] = Field(default_factory=list)
    explode: bool = False


class OffForGuard(GuardBase):
    """Switches personalization off for the listed users."""

    name = "off_for"
    Params = OffForParams

    def check(self, request: RequestContext) -> str | None:
        assert isinstance(self.params, OffForParams)
        if self.params.explode:
            raise RuntimeError("guard bug")
        return "listed_user" if request.user_id in self.params.users else None


class ByCategoryParams(StepParams):
    fault: str = "ok"


class ByCategoryPost(PostBase):
    """Sorts candidates by the served category weight; modes inject faults."""

    name = "by_category"
    Params = ByCategoryParams

    def apply(
        self, request: RequestContext, signals: Signals | None, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]:
        assert isinstance(self.params, ByCategoryParams)
        mode = self.params.fault
        if mode == "raise":
            raise ValueError("post bug")
        if mode == "garbage":
            return "not a list"  # type: ignore[return-value]
        if mode == "garbage_items":
            return [1, 2]  # type: ignore[list-item]
        weights = signals.categories if signals else {}
        return sorted(candidates, key=lambda c: -weights.get(c.category or "", 0.0))


class FixedTier(Tier):
    """Serves fixed weights."""

    name = "fixed"
    Params = TierParams

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        return Signals({"toys": 1.0}, {}, self.step_id)


@hookimpl
def resilience_step_types() -> Sequence[type[Step]]:
    return [OffForGuard, ByCategoryPost, FixedTier]
