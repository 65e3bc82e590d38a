"""What a decision returns: the signals, the re-ranked candidates and the trace explaining it."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple

from ._model import Candidate, Signals
from ._outcomes import Outcome

__all__ = ["Decision", "Reason", "StepRecord", "Trace"]


class Reason(StrEnum):
    """Why the serving tier served. Low cardinality, fit for a metric label."""

    PRIMARY = "primary"  # the first tier of the chain served
    FALLBACK = "fallback"  # an earlier tier did not; a later one served
    GUARD = "guard"  # a guard switched personalization off; the terminal tier served
    SWITCHED_OFF = "switched_off"  # the policy is switched off (flag or mode); terminal tier only
    HOLDOUT = "holdout"  # the user is in the policy's holdout group: terminal tier only
    BUDGET = "budget"  # the budget ran out before a personalized tier could serve
    UNKNOWN_POLICY = "unknown_policy"  # the request named no known policy (nor is there a default)
    CLOSED = "closed"  # the engine was closed
    CANCELLED = "cancelled"  # the caller cancelled adecide(); only observers see this trace
    INTERNAL_ERROR = "internal_error"  # the engine caught a bug of its own; see the event log


class StepRecord(NamedTuple):
    """One step tried, in the order tried.

    Attributes:
        step: the step's id in the policy.
        outcome: how it ended.
        elapsed_us: microseconds it took (0 when not tried).
        detail: a short explanation (the exception type, the guard's reason, the age of stale
            data a tier served), or ``""``.
    """

    step: str
    outcome: Outcome
    elapsed_us: int
    detail: str = ""


class Trace(NamedTuple):
    """How one decision was reached. Immutable (a named tuple: one is built per request).

    Attributes:
        policy: the policy run (as requested, for an unknown one).
        config_version: the hash of that policy's normalized content.
        request_id: the request's id.
        served: the id of the tier whose signals were served (``""`` when none ran).
        reason: why that tier served.
        steps: every step tried, guards then tiers then post steps.
        budget_us: the budget this decision had (the policy's, or less if the caller had less).
        used_us: microseconds the decision took.
        sampled: whether diversity monitoring measured this decision's list.
        shadow: the policy ran in shadow mode: ``served`` and ``steps`` say what it would have
            done, and the decision carries no signals and the candidates as given.
        group: the user's group under the policy's holdout (``holdout``, ``treatment``), or
            ``""``.
    """

    policy: str
    config_version: str
    request_id: str
    served: str
    reason: Reason
    steps: tuple[StepRecord, ...]
    budget_us: int
    used_us: int
    #: whether this decision was sampled for diversity monitoring (its clicks then count for CTR)
    sampled: bool = False
    #: the policy ran in shadow mode: the decision applied nothing of what the trace shows
    shadow: bool = False
    #: ``holdout`` or ``treatment`` under the policy's holdout; ``""`` without one (or with no
    #: user id: anonymous traffic is in neither group)
    group: str = ""

    def outcome_of(self, step: str) -> Outcome | None:
        """The outcome of the step with id ``step``, or ``None`` if it was not tried."""
        for record in self.steps:
            if record.step == step:
                return record.outcome
        return None

    def as_dict(self) -> dict[str, object]:
        """The trace as plain data (JSON-ready), e.g. to attach to the service's own logs."""
        return {
            "policy": self.policy,
            "config_version": self.config_version,
            "request_id": self.request_id,
            "served": self.served,
            "reason": self.reason.value,
            "budget_us": self.budget_us,
            "used_us": self.used_us,
            "shadow": self.shadow,
            "group": self.group,
            "steps": [
                {
                    "step": r.step,
                    "outcome": r.outcome.value,
                    "elapsed_us": r.elapsed_us,
                    "detail": r.detail,
                }
                for r in self.steps
            ],
        }

    def __str__(self) -> str:
        head = (
            f"{self.policy}@{self.config_version or '-'} served {self.served or 'nothing'} "
            f"({self.reason.value}) in {_ms(self.used_us)} of {_ms(self.budget_us)}"
        )
        if self.shadow:
            head = f"[shadow] {head}"
        if self.group:
            head = f"{head} [{self.group}]"
        if not self.steps:
            return head
        parts = []
        for r in self.steps:
            text = f"{r.step}={r.outcome.value}"
            if r.detail:
                text += f"[{r.detail}]"
            if r.elapsed_us >= 1000:
                text += f" {_ms(r.elapsed_us)}"
            parts.append(text)
        return f"{head}\n  {', '.join(parts)}"


def _ms(micros: int) -> str:
    return f"{micros / 1000:.2f}ms"


class Decision(NamedTuple):
    """The engine's answer for one request. Immutable (a named tuple: one per request).

    Attributes:
        signals: the personalization signals to apply, or ``None`` for un-personalized results.
        candidates: the candidates as re-ranked by the policy's post steps (as given when it has
            none, or when they were skipped).
        trace: how the decision was reached.
    """

    signals: Signals | None
    candidates: Sequence[Candidate]
    trace: Trace

    @property
    def personalized(self) -> bool:
        """Whether personalization signals were served."""
        return self.signals is not None
