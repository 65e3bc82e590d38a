"""Assertions on decision traces, for plugin authors' and embedders' tests.

``assert_trace`` checks what a test names and nothing more, and when it fails it says what
differed and prints the whole trace, the way ``str(trace)`` shows it::

    assert_trace(
        decision.trace,
        served="trending_region",
        reason="primary",
        outcomes={"trending_region": "ok"},
        details={"stale_cache": "age"},
    )

``trace_problems`` lists what is inconsistent in any trace, whatever the policy: what the chaos
soak checks of every decision, less what needs the policy's declaration. A test can assert it
is empty for every decision it makes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from resilience._outcomes import Outcome
from resilience._trace import Reason, Trace

__all__ = ["assert_trace", "trace_problems"]

#: Reasons of a decision that ran its policy's plan, which the terminal tier at least answers.
_SERVED_BY_A_TIER = frozenset(
    {
        Reason.PRIMARY,
        Reason.FALLBACK,
        Reason.BUDGET,
        Reason.GUARD,
        Reason.HOLDOUT,
        Reason.SWITCHED_OFF,
    }
)


def assert_trace(
    trace: Trace,
    *,
    served: str | None = None,
    reason: Reason | str | None = None,
    outcomes: Mapping[str, Outcome | str | None] | None = None,
    details: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
    group: str | None = None,
    shadow: bool | None = None,
) -> None:
    """Assert what ``trace`` says; every argument left out is not checked.

    Args:
        served: the id of the tier that served (``""``: none).
        reason: why (a :class:`~resilience.Reason` or its value, e.g. ``"fallback"``).
        outcomes: step id -> its outcome (an :class:`~resilience.Outcome` or its value);
            ``None`` asserts the step was not tried.
        details: step id -> a text its record's detail must contain.
        order: the ids of the steps tried, exactly, in order.
        group: the holdout group (``"holdout"``, ``"treatment"`` or ``""``).
        shadow: whether the policy ran in shadow mode.

    Raises:
        AssertionError: listing every difference, then the trace.
    """
    problems: list[str] = []
    if served is not None and trace.served != served:
        problems.append(f"served {trace.served!r}, expected {served!r}")
    if reason is not None and trace.reason is not Reason(reason):
        problems.append(f"reason {trace.reason.value!r}, expected {Reason(reason).value!r}")
    records = {record.step: record for record in trace.steps}
    for step, expected in (outcomes or {}).items():
        found = records.get(step)
        if expected is None:
            if found is not None:
                problems.append(f"{step} was tried ({found.outcome.value}), expected not")
        elif found is None:
            problems.append(f"{step} was not tried, expected {Outcome(expected).value!r}")
        elif found.outcome is not Outcome(expected):
            problems.append(
                f"{step} ended {found.outcome.value!r}, expected {Outcome(expected).value!r}"
            )
    for step, text in (details or {}).items():
        found = records.get(step)
        if found is None or text not in found.detail:
            have = "not tried" if found is None else repr(found.detail)
            problems.append(f"{step} detail {have}, expected one containing {text!r}")
    if order is not None and [r.step for r in trace.steps] != list(order):
        problems.append(f"steps {[r.step for r in trace.steps]}, expected {list(order)}")
    if group is not None and trace.group != group:
        problems.append(f"group {trace.group!r}, expected {group!r}")
    if shadow is not None and trace.shadow != shadow:
        problems.append(f"shadow {trace.shadow}, expected {shadow}")
    if problems:
        raise AssertionError("; ".join(problems) + f"\n  trace: {trace}")


def trace_problems(trace: Trace) -> list[str]:
    """What is inconsistent in ``trace``, as sentences; empty when nothing is.

    Checks what holds of every trace the engine writes, as far as a trace alone can tell (it
    does not say which step is a guard, a tier or a post step): each step is recorded once; the
    served tier has a record, and it is ``ok``; no guard disabled the request after that; the
    reason agrees with the records (``guard``: a ``disabled`` record; ``budget``: a step
    skipped for budget; ``holdout``: exactly the holdout group); the steps' times add up to no
    more than the decision's.
    """
    problems: list[str] = []
    steps = [record.step for record in trace.steps]
    twice = sorted({step for step in steps if steps.count(step) > 1})
    if twice:
        problems.append(f"steps recorded twice: {twice}")
    if trace.used_us < 0:
        problems.append(f"used_us is negative ({trace.used_us})")
    if trace.budget_us < 0:
        problems.append(f"budget_us is negative ({trace.budget_us})")
    if sum(record.elapsed_us for record in trace.steps) > trace.used_us + len(trace.steps):
        problems.append("the steps took longer than the decision")
    records = {record.step: record for record in trace.steps}
    if trace.served:
        served = records.get(trace.served)
        if served is None:
            problems.append(f"served {trace.served!r}, which has no record")
        elif served.outcome is not Outcome.OK:
            problems.append(f"served {trace.served!r}, whose outcome is {served.outcome.value}")
        else:
            index = steps.index(trace.served)
            disabled = [r.step for r in trace.steps[index + 1 :] if r.outcome is Outcome.DISABLED]
            if disabled:
                problems.append(f"a guard disabled the request after it was served: {disabled}")
    elif trace.reason in _SERVED_BY_A_TIER:
        # the terminal tier always answers a planned decision: nothing served is a bug
        problems.append(f"reason {trace.reason.value} but no tier served")
    if trace.reason is Reason.GUARD and not any(r.outcome is Outcome.DISABLED for r in trace.steps):
        problems.append("reason guard, but no guard record is disabled")
    if trace.reason is Reason.BUDGET and not any(
        r.outcome is Outcome.SKIPPED_BUDGET for r in trace.steps
    ):
        problems.append("reason budget, but no step was skipped for budget")
    if (trace.reason is Reason.HOLDOUT) != (trace.group == "holdout"):
        problems.append(f"reason {trace.reason.value} with group {trace.group!r}")
    return problems
