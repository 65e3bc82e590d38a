"""The fixed set of outcomes a step can end in.

Every step the engine tries ends in exactly one of these, recorded in the decision trace. The set
is closed on purpose: dashboards, the breaker and the error-rate guard key on these values, so a
plugin cannot invent its own. A plugin that needs to say more puts it in the record's ``detail``.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FAILURE_OUTCOMES", "Outcome"]


class Outcome(StrEnum):
    """How one step ended.

    ``ok``
        The step produced its result (a tier served signals, a guard passed, a post step re-ranked).
    ``miss``
        No data for this user or session: a new session, a user without a profile. Not a failure:
        never fed to a breaker or an error rate. The chain goes on.
    ``error``
        The step or its source raised. The chain goes on.
    ``timeout``
        The step overran its deadline (the smaller of its own timeout and what the request had
        left). An async step is cancelled at the deadline; a sync step is judged when it returns
        and its late result is discarded.
    ``garbage``
        The step returned something that is not what its kind must return (a tier that does not
        return :class:`~resilience.Signals`, a post step that does not return candidates).
    ``skipped_budget``
        Not tried: the request's budget was spent before the step's turn.
    ``breaker_open``
        Not tried: the step's circuit breaker is open.
    ``rejected``
        Not tried: the step's bulkhead was full.
    ``disabled``
        Recorded by a guard only: it tripped and switched personalization off for this request.
        The tiers it left out have no record (the terminal tier's serves); a kill switch or a
        flag records ``switched_off``.
    ``switched_off``
        Not run: the step is switched off, by a flag or by its ``mode: off`` in the policy. The
        detail names where the switch came from (``flag:redis``, ``policy``...).
    ``shadow``
        Ran in shadow mode and would have acted: a guard would have switched personalization
        off, a post step would have re-ranked. Nothing was changed; the detail says what it
        would have done. A shadow step that would have done nothing records ``ok``.
    """

    OK = "ok"
    MISS = "miss"
    ERROR = "error"
    TIMEOUT = "timeout"
    GARBAGE = "garbage"
    SKIPPED_BUDGET = "skipped_budget"
    BREAKER_OPEN = "breaker_open"
    REJECTED = "rejected"
    DISABLED = "disabled"
    SWITCHED_OFF = "switched_off"
    SHADOW = "shadow"


#: Outcomes that count as a failure of the step (for breakers and error rates).
FAILURE_OUTCOMES: frozenset[Outcome] = frozenset({Outcome.ERROR, Outcome.TIMEOUT, Outcome.GARBAGE})
