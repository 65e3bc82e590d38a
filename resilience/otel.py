"""OpenTelemetry spans for decisions: an optional integration (``pip install
'search-resilience[otel]'``).

:func:`instrument` adds a listener to an engine that turns every decision's
:class:`~resilience.Trace` into one span, ``resilience.decision``, a child of the caller's
current span, with one ``resilience.step`` event per step tried. See ``docs/opentelemetry.md``.

The listener runs on the request path, so everything that does not depend on the trace (the
tracer, attribute keys, the string form of every reason and outcome, the error status) is made
once, here or in :func:`instrument`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType

try:
    from opentelemetry import trace as _otel_trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue
except ImportError as _missing:  # tests/test_otel.py hides the package to check this
    raise ImportError(
        "resilience.otel needs OpenTelemetry, which is not installed: "
        "pip install 'search-resilience[otel]'",
        name=_missing.name,
    ) from _missing

from ._engine import Engine
from ._outcomes import Outcome
from ._trace import Reason, Trace

__all__ = ["SPAN_NAME", "STEP_EVENT", "Instrumentation", "instrument"]

#: the name of the span made for each decision
SPAN_NAME = "resilience.decision"
#: the name of the span event made for each step tried
STEP_EVENT = "resilience.step"

_POLICY = "resilience.policy"
_CONFIG_VERSION = "resilience.config_version"
_REQUEST_ID = "resilience.request_id"
_SERVED = "resilience.served"
_REASON = "resilience.reason"
_BUDGET_US = "resilience.budget_us"
_USED_US = "resilience.used_us"
_SHADOW = "resilience.shadow"
_GROUP = "resilience.group"
_STEP = "resilience.step"
_OUTCOME = "resilience.outcome"
_ELAPSED_US = "resilience.elapsed_us"
_DETAIL = "resilience.detail"

# Plain strings for the exported attributes (not the enum members), looked up by member.
_REASONS: dict[Reason, str] = {reason: reason.value for reason in Reason}
_OUTCOMES: dict[Outcome, str] = {outcome: outcome.value for outcome in Outcome}
_ERROR_STATUS = Status(
    StatusCode.ERROR,
    "the engine caught a bug of its own and answered un-personalized "
    "(see the resilience.engine.internal_error event)",
)
_INTERNAL = SpanKind.INTERNAL
_INTERNAL_ERROR = Reason.INTERNAL_ERROR


def _library_version() -> str | None:
    try:
        return version("search-resilience")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree not installed
        return None


class Instrumentation:
    """What :func:`instrument` returns: spans flow until :meth:`close` (or the end of a ``with``
    block)."""

    __slots__ = ("_remove",)

    def __init__(self, remove: Callable[[], None]) -> None:
        self._remove: Callable[[], None] | None = remove

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._remove is None

    def close(self) -> None:
        """Stop making spans (remove the engine listener). Safe to call more than once."""
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def instrument(
    engine: Engine,
    tracer_provider: TracerProvider | None = None,
    *,
    tracer_name: str = "resilience",
) -> Instrumentation:
    """Make one OpenTelemetry span per decision of ``engine``, until the result is closed.

    Each span, ``resilience.decision`` (kind ``INTERNAL``), is a child of the caller's current
    span (the engine calls its listeners on the request's own thread or task), covers the
    decision (it ends when the decision is finished and starts ``used_us`` earlier), and carries
    the trace's fields as ``resilience.*`` attributes and one ``resilience.step`` event per step
    tried, in order. A decision with reason ``internal_error`` gets status ``ERROR``. No user or
    session id is ever recorded.

    Args:
        engine: the engine to instrument.
        tracer_provider: the provider to take the tracer from; the global one (as set by the
            application, now or later) when ``None``. This function never sets a global
            provider.
        tracer_name: the instrumentation scope's name.

    Returns:
        An :class:`Instrumentation`; ``close()`` it (or use it as a context manager) to stop.
    """
    tracer = _otel_trace.get_tracer(
        tracer_name, _library_version(), tracer_provider=tracer_provider
    )
    return Instrumentation(engine.add_listener(_listener(tracer)))


def _listener(tracer: Tracer) -> Callable[[Trace], None]:
    start_span = tracer.start_span
    now_ns = time.time_ns
    reasons = _REASONS
    outcomes = _OUTCOMES
    error_status = _ERROR_STATUS
    kind = _INTERNAL
    internal_error = _INTERNAL_ERROR

    def on_trace(trace: Trace) -> None:
        end = now_ns()
        start = end - trace.used_us * 1000
        attributes: dict[str, AttributeValue] = {
            _POLICY: trace.policy,
            _CONFIG_VERSION: trace.config_version,
            _SERVED: trace.served,
            _REASON: reasons[trace.reason],
            _BUDGET_US: trace.budget_us,
            _USED_US: trace.used_us,
            _SHADOW: trace.shadow,
        }
        if trace.request_id:
            attributes[_REQUEST_ID] = trace.request_id
        if trace.group:
            attributes[_GROUP] = trace.group
        span = start_span(SPAN_NAME, kind=kind, attributes=attributes, start_time=start)
        if span.is_recording():  # a sampled-out span needs no events
            add_event = span.add_event
            at = start
            for record in trace.steps:
                event: dict[str, AttributeValue] = {
                    _STEP: record.step,
                    _OUTCOME: outcomes[record.outcome],
                    _ELAPSED_US: record.elapsed_us,
                }
                if record.detail:
                    event[_DETAIL] = record.detail
                # Rounding each step to a microsecond may add up past the end: never past it.
                add_event(STEP_EVENT, event, at if at < end else end)
                at += record.elapsed_us * 1000
            if trace.reason is internal_error:
                span.set_status(error_status)
        span.end(end)

    return on_trace
