"""A plugin whose hook returns something that is not a step class."""

from __future__ import annotations

from resilience import hookimpl


@hookimpl
def resilience_step_types() -> list[object]:
    return ["session"]
