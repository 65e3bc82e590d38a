"""Step types that misbehave on request, one of each kind: a plugin you would not trust.

Each has ``behaviour``:

- ``ok``: answers well (a tier: signals; a guard: ``None``; a post step: the list reversed);
- ``raise``: raises;
- ``garbage``: answers with the wrong type (``False``, a string, a list of ints);
- ``slow``: answers well, but the engine's clock (a :class:`FakeClock` in tests) says it took
  ``delay`` seconds: a step that ran long and then returned;
- ``block``: never returns until :data:`RELEASE` is set: a step that hangs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from resilience import (
    IN_SHADOW,
    BuildContext,
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
from resilience.testing import FakeClock

Behaviour = Literal["ok", "raise", "garbage", "slow", "block"]

#: Set it to let every blocked step return (tests set it when they finish).
RELEASE = threading.Event()
#: Every step that started blocking, so a test can wait until one is stuck.
BLOCKED: list[str] = []
#: ``IN_SHADOW`` as each step saw it when called (the request's, on whatever thread).
SAW_SHADOW: list[bool] = []


class MisbehavingParams(StepParams):
    behaviour: Behaviour = "ok"
    delay: float = Field(default=0.040, gt=0)


class MisbehavingTierParams(TierParams):
    behaviour: Behaviour = "ok"
    delay: float = Field(default=0.040, gt=0)


class _Misbehaviour:
    """What every kind shares: doing the misbehaviour, then answering ``good``."""

    def __init__(self, behaviour: Behaviour, delay: float, context: BuildContext) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.clock = context.clock
        self.step_id = context.step_id

    def before_answer(self) -> bool:
        """Misbehave; ``True`` when the caller should answer with garbage."""
        SAW_SHADOW.append(IN_SHADOW.get())
        behaviour = self.behaviour
        if behaviour == "raise":
            raise RuntimeError(f"{self.step_id}: plugin bug")
        if behaviour == "slow":
            assert isinstance(self.clock, FakeClock), "slow steps are for fake-clock tests"
            self.clock.advance(self.delay)
        elif behaviour == "block":
            BLOCKED.append(self.step_id)
            RELEASE.wait()
        return behaviour == "garbage"


class MisbehavingTier(Tier):
    name = "misbehaving_tier"
    Params = MisbehavingTierParams

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, MisbehavingTierParams)
        self.fault = _Misbehaviour(params.behaviour, params.delay, context)

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        if self.fault.before_answer():
            return "garbage"  # type: ignore[return-value]
        return Signals({"toys": 1.0}, {}, self.step_id)


class MisbehavingGuard(GuardBase):
    name = "misbehaving_guard"
    Params = MisbehavingParams

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, MisbehavingParams)
        self.fault = _Misbehaviour(params.behaviour, params.delay, context)

    def check(self, request: RequestContext) -> str | None:
        if self.fault.before_answer():
            return False  # type: ignore[return-value]  # "all is well", by mistake
        return None


class MisbehavingPost(PostBase):
    name = "misbehaving_post"
    Params = MisbehavingParams

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, MisbehavingParams)
        self.fault = _Misbehaviour(params.behaviour, params.delay, context)

    def apply(
        self, request: RequestContext, signals: Signals | None, candidates: Sequence[Candidate]
    ) -> Sequence[Candidate]:
        if self.fault.before_answer():
            return [1, 2, 3]  # type: ignore[list-item]
        return list(reversed(candidates))


@hookimpl
def resilience_step_types() -> Sequence[type[Step]]:
    return [MisbehavingTier, MisbehavingGuard, MisbehavingPost]
