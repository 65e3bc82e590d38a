"""Events: the names the engine and its steps report under, and the sinks that receive them.

Every event name lives in :data:`EVENTS` with its level and meaning, so that dashboards and
alerts can rely on them. State changes (a policy loaded, an engine closed, an internal error)
always go out; per-decision events are sampled at the rate ``settings.events.decision_sample_rate``.

The library never configures logging: :class:`StructlogSink` hands events to structlog as the
embedding application set it up, or, when it did not, to the standard-library logger
``resilience`` as JSON lines. Event fields never carry a raw user or session id.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable

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
    "register_event",
    "use_json_logging",
]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """What an event name means and at which level it is logged."""

    level: str
    description: str
    #: The module that registered it (:func:`register_event`); "" for the engine's own.
    module: str = ""


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


def use_json_logging(
    stream: IO[str] | None = None, level: int | str = logging.INFO, logger_name: str = "resilience"
) -> logging.Handler:
    """Opt in to the project's logging setup: the events of :class:`StructlogSink` (JSON, one
    per line) go to ``stream`` (stderr by default) from ``level`` up.

    Only the logger ``logger_name`` is touched (a handler, its level, no propagation to the
    root logger, so lines are not written twice); nothing global. For applications without a
    logging setup of their own. An application that configured structlog gets events through
    its own processors instead.

    Returns:
        The handler, to remove with ``logging.getLogger(logger_name).removeHandler(handler)``.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def register_event(name: str, level: str, description: str) -> str:
    """Declare an event name a step module emits; returns the name. Idempotent."""
    EVENTS.setdefault(name, EventSpec(level, description, _caller_module()))
    return name


def _caller_module() -> str:
    # The module calling register_*: the docs and the plugin contract check tell a step's own
    # telemetry from names its module merely imports.
    frame = sys._getframe(2)
    return str(frame.f_globals.get("__name__", ""))


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
    """Sends events through structlog at the level declared in :data:`EVENTS`.

    Where they end up is the application's choice, never the library's:

    - if the application configured structlog (``structlog.is_configured()`` when the sink is
      made), events go to ``structlog.get_logger(logger_name)`` and its processors;
    - otherwise they are rendered as JSON by a structlog logger local to this sink and handed to
      the standard-library logger ``logger_name``, which shows nothing until the application
      configures ``logging`` (warnings and errors reach stderr through ``logging.lastResort``).

    No global configuration of structlog or logging is ever changed.

    Args:
        logger_name: the logger's name.
        logger: a structlog logger to use instead, e.g. one with bound context.
    """

    __slots__ = ("_logger",)

    def __init__(self, logger_name: str = "resilience", logger: Any = None) -> None:
        if logger is None:
            if structlog.is_configured():
                logger = structlog.get_logger(logger_name)
            else:
                logger = structlog.wrap_logger(
                    logging.getLogger(logger_name),
                    processors=[
                        # first: an event the logger would drop is never rendered
                        structlog.stdlib.filter_by_level,
                        structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.JSONRenderer(),
                    ],
                    wrapper_class=structlog.stdlib.BoundLogger,
                )
        self._logger = logger

    def emit(self, event: str, /, **fields: Any) -> None:
        spec = EVENTS.get(event)
        method = getattr(self._logger, spec.level if spec else "info")
        method(event, **fields)
