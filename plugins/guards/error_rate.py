"""``error_rate``: the brief's 5% guard over personalization as a whole.

Each decision of the policy is judged once it is finished (``Step.observe``) by the counting
rule:

- ``unserved`` (the default): the request *failed* when personalization was attempted and no
  personalized tier could serve because of failures (a tier ended in ``error``, ``timeout``,
  ``garbage``, ``rejected`` or ``breaker_open`` and the terminal tier served), or when a post step
  failed. A request whose tiers all missed (a new user, an anonymous visitor) counts neither way,
  nor does one switched off by another guard, a kill switch or the holdout (which skip the
  guards altogether);
- ``any_failure``: stricter; the request failed when any tier or post step failed, even if a
  fallback tier then served.

When the failed share over the window exceeds ``threshold`` (with at least ``minimum_requests``
in it), the guard switches personalization off for the policy: the terminal tier serves, and the
trace records ``error_rate=disabled[...]``. After ``open_for`` it lets ``half_open_probes``
requests through; all succeeding switches personalization back on, one failing keeps it off.
The state machine is a :class:`resilience.CircuitBreaker`, so its transitions are reported as
``resilience.breaker.*`` events named ``<policy>.<step id>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Literal

from pydantic import Field

from resilience import (
    BreakerOptions,
    BuildContext,
    CircuitBreaker,
    Duration,
    Guard,
    Outcome,
    Reading,
    Reason,
    RequestContext,
    StepKind,
    StepParams,
    Trace,
    breaker_readings,
    register_metric,
)

__all__ = ["ERROR_RATIO", "ErrorRateGuard", "ErrorRateParams"]

ERROR_RATIO = register_metric(
    "resilience_personalization_error_ratio",
    "gauge",
    ("policy", "step"),
    "Failed share of the judged requests in the error_rate guard's window (0 to 1); the guard "
    "switches personalization off above its threshold.",
)

_FAILURES = frozenset(
    {Outcome.ERROR, Outcome.TIMEOUT, Outcome.GARBAGE, Outcome.REJECTED, Outcome.BREAKER_OPEN}
)


class ErrorRateParams(StepParams):
    """Parameters of the ``error_rate`` guard."""

    threshold: float = Field(
        default=0.05, gt=0, lt=1, description="Switch off when the failed share exceeds this."
    )
    count: Literal["unserved", "any_failure"] = Field(
        default="unserved", description="The counting rule (see the step's docs)."
    )
    window: Literal["count", "time"] = Field(
        default="time", description="count: the last `size` requests; time: the last `duration`."
    )
    size: int = Field(default=1000, ge=1, le=100_000, description="Requests in a count window.")
    duration: Duration = Field(default=60.0, gt=0, description="Length of a time window.")
    buckets: int = Field(default=12, ge=1, le=1000, description="Buckets of a time window.")
    minimum_requests: int = Field(
        default=100, ge=1, description="Judged requests the window must hold before it trips."
    )
    open_for: Duration = Field(default=30.0, gt=0, description="How long it stays off.")
    half_open_probes: int = Field(
        default=10, ge=1, le=1000, description="Requests let through to test recovery."
    )
    probe_deadline: Duration = Field(
        default=10.0, gt=0, description="Probes not all judged by then count as failed."
    )


class ErrorRateGuard(Guard):
    """Switches personalization off while its failed share is above the threshold."""

    name = "error_rate"
    Params = ErrorRateParams
    # Its window is a circuit breaker over requests, named <policy>.<step id>: the breaker's
    # events and readings are the guard's.
    telemetry = (
        "resilience.breaker.opened",
        "resilience.breaker.half_opened",
        "resilience.breaker.closed",
        ERROR_RATIO,
        "resilience_breaker_state",
        "resilience_breaker_forced",
        "resilience_breaker_failure_ratio",
        "resilience_breaker_slow_call_ratio",
        "resilience_breaker_window_calls",
    )
    bulkhead_refusal = (
        "check() hands observe() the request's ticket in the caller's context, which a worker "
        "thread does not share back; the guard computes on memory and needs no bulkhead"
    )

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, ErrorRateParams)
        # Shared under the guard's identity and parameters: a reload that leaves this guard
        # unchanged hands the new build the same window, so its error rate is not reset.
        key = ("error_rate", context.policy, self.step_id, params.model_dump_json())
        self._breaker = context.shared(
            key,
            lambda: CircuitBreaker(
                f"{context.policy}.{self.step_id}",
                BreakerOptions(
                    window=params.window,
                    size=params.size,
                    duration=params.duration,
                    buckets=params.buckets,
                    failure_rate=params.threshold,
                    minimum_calls=params.minimum_requests,
                    open_for=params.open_for,
                    half_open_probes=params.half_open_probes,
                    probe_deadline=params.probe_deadline,
                ),
                context.clock,
                context.events,
            ),
        )
        self._labels = {"policy": context.policy, "step": self.step_id}
        self._reason = f"failed share above {params.threshold * 100:.4g}%"  # 0.025: "2.5%"
        self._strict = params.count == "any_failure"
        tiers = [step for step, kind in context.steps.items() if kind is StepKind.TIER]
        self._personalized = frozenset(tiers[:-1])
        self._post = frozenset(s for s, k in context.steps.items() if k is StepKind.POST)
        # check() and observe() of one request run in the same thread or task: the ticket
        # travels between them in a context variable, one per breaker (its key), reused by
        # every build that shares the breaker: each thread's context keeps an entry per
        # variable it ever set, so a variable per build grew every thread by one per reload.
        self._ticket = _ticket_variable(key)

    @property
    def breaker(self) -> CircuitBreaker:
        """The guard's state machine, for operators and tests."""
        return self._breaker

    def readings(self) -> Sequence[Reading]:
        readings = breaker_readings(self._breaker)
        ratio = self._breaker.snapshot().failure_rate
        readings.append(Reading(ERROR_RATIO, ratio, self._labels))
        return readings

    def check(self, request: RequestContext) -> str | None:
        ticket = self._breaker.permit()
        self._ticket.set(ticket)
        return self._reason if ticket is None else None

    def observe(self, trace: Trace) -> None:
        ticket = self._ticket.get()
        if ticket is None:
            return  # this guard switched the request off: nothing was attempted
        self._ticket.set(None)
        if trace.outcome_of(self.step_id) is not Outcome.OK:
            # check() did not let this request through (a guard before it tripped, or it never
            # ran): the ticket is a leftover of an earlier request in this thread or task, whose
            # observe() never came. Give it back.
            self._breaker.release(ticket)
            return
        reason = trace.reason
        if reason is Reason.PRIMARY and not self._post:
            self._breaker.record(ticket, failed=False, slow=False)  # the common case, quickly
            return
        if reason is Reason.GUARD or reason is Reason.CANCELLED:
            self._breaker.release(ticket)  # switched off by another guard, or never finished
            return
        failed_tier = False
        failed_post = False
        for record in trace.steps:
            if record.outcome in _FAILURES:
                if record.step in self._personalized:
                    failed_tier = True
                elif record.step in self._post:
                    failed_post = True
        served = trace.served in self._personalized
        failed = (
            failed_tier or failed_post
            if self._strict
            else (failed_post or (failed_tier and not served))
        )
        if not failed and not served:
            self._breaker.release(ticket)  # nothing personal to serve: neither way
            return
        self._breaker.record(ticket, failed=failed, slow=False)


#: a breaker's shared key -> the context variable carrying its tickets; bounded by the guard
#: configurations a service ever ran, not by its reloads. (A ticket is only ever given back to
#: the breaker that issued it: a new breaker gets a new variable.)
_TICKETS: dict[tuple[str, ...], ContextVar[int | None]] = {}


def _ticket_variable(key: tuple[str, ...]) -> ContextVar[int | None]:
    found = _TICKETS.get(key)
    if found is None:
        # setdefault: two builds racing for the same key agree on one variable
        found = _TICKETS.setdefault(
            key, ContextVar(f"resilience_error_rate_ticket_{key[1]}_{key[2]}", default=None)
        )
    return found
