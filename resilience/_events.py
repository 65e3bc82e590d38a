"""Events: the names the engine and its steps report under, and the sinks that receive them.

Every event name lives in :data:`EVENTS` with its level and meaning, so that dashboards and
alerts can rely on them. State changes (a policy loaded, an engine closed, an internal error)
always go out; per-decision events are sampled at the rate ``settings.events.decision_sample_rate``.

The library never configures logging: :class:`StructlogSink` hands events to
``structlog.get_logger("resilience")``, which renders them however the embedding application set
structlog up. Event fields never carry a raw user or session id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

__all__ = [
    "DECISION",
    "ENGINE_BUILT",
    "ENGINE_CLOSED",
    "ENGINE_INTERNAL_ERROR",
    "EVENTS",
    "PLUGIN_LOADED",
    "POLICY_LOADED",
    "EventSink",
    "EventSpec",
    "NullSink",
    "StructlogSink",
]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """What an event name means and at which level it is logged."""

    level: str
    description: str


POLICY_LOADED = "resilience.policy.loaded"
PLUGIN_LOADED = "resilience.plugin.loaded"
ENGINE_BUILT = "resilience.engine.built"
ENGINE_CLOSED = "resilience.engine.closed"
ENGINE_INTERNAL_ERROR = "resilience.engine.internal_error"
DECISION = "resilience.decision"

#: Every event name the core emits. Step modules add their own names beside their code and
#: register them here through :func:`register_event`.
EVENTS: dict[str, EventSpec] = {
    POLICY_LOADED: EventSpec(
        "info", "A policy file was validated; fields: file, policies, versions."
    ),
    PLUGIN_LOADED: EventSpec(
        "info", "A third-party plugin was loaded; fields: plugin, distribution, step_types."
    ),
    ENGINE_BUILT: EventSpec(
        "info", "An engine was compiled from a policy set; fields: policies, versions."
    ),
    ENGINE_CLOSED: EventSpec("info", "An engine released what it held; fields: policies."),
    ENGINE_INTERNAL_ERROR: EventSpec(
        "error",
        "The engine caught an unexpected exception of its own and answered un-personalized; "
        "fields: policy, error. Always a bug worth reporting.",
    ),
    DECISION: EventSpec(
        "info",
        "One decision (sampled); fields: policy, config_version, served, reason, used_us, "
        "budget_us, steps (step=outcome pairs).",
    ),
}


def register_event(name: str, level: str, description: str) -> str:
    """Declare an event name a step module emits; returns the name. Idempotent."""
    EVENTS.setdefault(name, EventSpec(level, description))
    return name


@runtime_checkable
class EventSink(Protocol):
    """Receives events. Must not raise; the engine guards against it anyway."""

    def emit(self, event: str, /, **fields: Any) -> None:
        """Report ``event`` with its fields."""
        ...


class NullSink:
    """Drops every event."""

    __slots__ = ()

    def emit(self, event: str, /, **fields: Any) -> None:
        return None


class StructlogSink:
    """Sends events to structlog at the level declared in :data:`EVENTS` (``info`` if unknown).

    Args:
        logger_name: the name bound to the structlog logger.
    """

    __slots__ = ("_logger",)

    def __init__(self, logger_name: str = "resilience") -> None:
        self._logger: Any = structlog.get_logger(logger_name)

    def emit(self, event: str, /, **fields: Any) -> None:
        spec = EVENTS.get(event)
        method = getattr(self._logger, spec.level if spec else "info")
        method(event, **fields)
