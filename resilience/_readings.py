"""Readings: the engine's state of the moment, as named numbers a metrics collector exports.

The request path counts (:mod:`resilience._stats`); everything else that a dashboard shows is
state that already exists somewhere (a breaker's window, a guard's lag, a flag's value), and is
read only when metrics are scraped. A step that holds such state says so by overriding
:meth:`resilience.Step.readings`; the engine knows no step by name, and the collector knows no
step at all: it exports whatever readings it is given.

Names follow Prometheus' conventions: ``resilience_`` first, base units (``_seconds``,
``_ratio``), ``_total`` only on counters, and no label that grows with traffic (no user, session
or request id).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ._breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

__all__ = [
    "BREAKER_STATES",
    "METRICS",
    "MetricSpec",
    "Reading",
    "breaker_readings",
    "register_metric",
]


class Reading(NamedTuple):
    """One value of one series, read at scrape time.

    Attributes:
        name: the metric's name as catalogued in :data:`METRICS` (a counter's ends in
            ``_total``); a reading of an uncatalogued name is not exported.
        value: its value now; ``nan`` when unknown.
        labels: label name -> value, the label names its catalogue entry declares.
    """

    name: str
    value: float
    labels: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its type, its labels and what it means."""

    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    help: str
    #: The module that registered it (:func:`register_metric`); "" for the engine's own.
    module: str = ""


#: Every metric the engine and the built-in steps export, by its exposed name (counters end in
#: ``_total``). A third-party step's readings add their own names.
METRICS: dict[str, MetricSpec] = {
    "resilience_decisions_total": MetricSpec(
        "counter",
        ("policy", "tier", "reason", "mode"),
        "Decisions, by the tier that served (none: no tier ran), why it served, and mode "
        "(on; shadow: what a shadow policy would have done).",
    ),
    "resilience_decision_duration_seconds": MetricSpec(
        "histogram",
        ("policy",),
        "Time the engine spent on a decision, from entry to answer "
        "(buckets: settings.metrics.duration_buckets).",
    ),
    "resilience_step_outcomes_total": MetricSpec(
        "counter",
        ("policy", "step", "outcome"),
        "Steps that ended in each outcome (ok, miss, error, timeout, garbage, skipped_budget, "
        "breaker_open, rejected, disabled, switched_off, shadow).",
    ),
    "resilience_config_info": MetricSpec(
        "gauge", ("policy", "version"), "The config version each policy runs (always 1)."
    ),
    "resilience_policy_budget_seconds": MetricSpec(
        "gauge", ("policy",), "The policy's latency budget for all personalization work."
    ),
    "resilience_reloads_total": MetricSpec(
        "counter", ("result",), "Policy reloads, by result: ok or refused (the last good kept)."
    ),
    "resilience_flag_state": MetricSpec(
        "gauge", ("flag", "state"), "1 for the flag's effective value (on, off, shadow)."
    ),
    "resilience_flag_overridden": MetricSpec(
        "gauge", ("flag",), "1 while a flag source holds the flag away from its declared mode."
    ),
    "resilience_flag_stale": MetricSpec(
        "gauge", ("flag",), "1 while the source deciding the flag cannot be read."
    ),
    "resilience_flag_source_up": MetricSpec(
        "gauge", ("source",), "1 if the flag source's last read succeeded."
    ),
    "resilience_flag_source_staleness_seconds": MetricSpec(
        "gauge", ("source",), "Seconds since the flag source was last read successfully."
    ),
    "resilience_breaker_state": MetricSpec(
        "gauge",
        ("breaker", "state"),
        "1 for the breaker's state (closed, open, half_open). Breakers are named after their "
        "source, or <policy>.<step> for a guard's (error_rate).",
    ),
    "resilience_breaker_forced": MetricSpec(
        "gauge", ("breaker",), "1 while an operator holds the breaker open or closed."
    ),
    "resilience_breaker_failure_ratio": MetricSpec(
        "gauge", ("breaker",), "Failed share of the calls in the breaker's window."
    ),
    "resilience_breaker_slow_call_ratio": MetricSpec(
        "gauge", ("breaker",), "Slow share of the calls in the breaker's window."
    ),
    "resilience_breaker_window_calls": MetricSpec(
        "gauge", ("breaker",), "Calls in the breaker's window now."
    ),
    "resilience_bulkhead_in_flight": MetricSpec(
        "gauge", ("source",), "Calls holding a slot of the source's bulkhead."
    ),
    "resilience_bulkhead_max_concurrent": MetricSpec(
        "gauge", ("source",), "Calls the source's bulkhead admits at once."
    ),
    "resilience_bulkhead_rejected_total": MetricSpec(
        "counter", ("source",), "Calls the source's bulkhead refused because it was full."
    ),
    "resilience_bulkhead_abandoned_total": MetricSpec(
        "counter", ("source",), "Calls whose caller stopped waiting while the call ran on."
    ),
    "resilience_step_bulkhead_in_flight": MetricSpec(
        "gauge",
        ("policy", "step"),
        "Calls holding a slot of a step's bulkhead (isolation: bulkhead), abandoned ones "
        "still running included.",
    ),
    "resilience_step_bulkhead_rejected_total": MetricSpec(
        "counter", ("policy", "step"), "Calls of a step its full bulkhead refused."
    ),
    "resilience_step_bulkhead_abandoned_total": MetricSpec(
        "counter",
        ("policy", "step"),
        "Calls of a step whose request stopped waiting while the call ran on in its thread.",
    ),
    "resilience_window_impressions": MetricSpec(
        "gauge",
        ("policy", "tier", "group"),
        "Lists served over the monitoring window, of the decisions sampled for diversity.",
    ),
    "resilience_window_clicks": MetricSpec(
        "gauge", ("policy", "tier", "group"), "Clicks on those lists over the window."
    ),
    "resilience_ctr_ratio": MetricSpec(
        "gauge", ("policy", "tier", "group"), "Clicks per list served, over the window."
    ),
    "resilience_diversity_category_coverage_ratio": MetricSpec(
        "gauge",
        ("policy", "tier", "group"),
        "Distinct categories in the top of served lists over those among the candidates.",
    ),
    "resilience_diversity_category_entropy_bits": MetricSpec(
        "gauge", ("policy", "tier", "group"), "Entropy of categories in the top of served lists."
    ),
    "resilience_diversity_item_age_seconds": MetricSpec(
        "gauge",
        ("policy", "tier", "group", "quantile"),
        "Age of the items in the top of served lists (quantile 0.5 and 0.9).",
    ),
    "resilience_exposure_records_written_total": MetricSpec(
        "counter", (), "Exposure and click records written to the exposure log."
    ),
    "resilience_exposure_records_dropped_total": MetricSpec(
        "counter", (), "Exposure and click records dropped because the log's queue was full."
    ),
}


def register_metric(
    name: str, kind: Literal["counter", "gauge"], labels: Sequence[str], help: str
) -> str:
    """Declare a metric a step module exports through :meth:`Step.readings`; returns ``name``
    (a counter's as read, without ``_total``). Idempotent."""
    exposed = f"{name}_total" if kind == "counter" else name
    module = str(sys._getframe(1).f_globals.get("__name__", ""))  # whose telemetry it is
    METRICS.setdefault(exposed, MetricSpec(kind, tuple(labels), help, module))
    return name


#: A breaker's states as exported (the ``state`` label of ``resilience_breaker_state``).
BREAKER_STATES: tuple[tuple[str, str], ...] = (
    (CLOSED, "closed"),
    (OPEN, "open"),
    (HALF_OPEN, "half_open"),
)


def breaker_readings(breaker: CircuitBreaker) -> list[Reading]:
    """The readings of a circuit breaker, labelled ``breaker=<its name>``: its state (one series
    per state, 1 for the current one, as Resilience4j exports it), whether an operator forced
    it, its window's failure and slow-call ratios and the calls they are over."""
    snapshot = breaker.snapshot()
    name = snapshot.name
    labels = {"breaker": name}
    readings = [
        Reading(
            "resilience_breaker_state",
            1.0 if snapshot.state == state else 0.0,
            {"breaker": name, "state": exported},
        )
        for state, exported in BREAKER_STATES
    ]
    readings += [
        Reading("resilience_breaker_forced", 0.0 if snapshot.forced is None else 1.0, labels),
        Reading("resilience_breaker_failure_ratio", snapshot.failure_rate, labels),
        Reading("resilience_breaker_slow_call_ratio", snapshot.slow_rate, labels),
        Reading("resilience_breaker_window_calls", float(snapshot.calls), labels),
    ]
    return readings
