"""A plugin that clashes with the built-in ``session`` tier."""

from __future__ import annotations

from collections.abc import Sequence

from resilience import RequestContext, Signals, Step, Tier, hookimpl


class OtherSession(Tier):
    name = "session"

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        return None


@hookimpl
def resilience_step_types() -> Sequence[type[Step]]:
    return [OtherSession]
