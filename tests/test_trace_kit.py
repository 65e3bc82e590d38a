"""The kit's trace assertions: they pass on what the engine writes and fail, saying why, on
anything else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from resilience import Engine, Outcome, Reason, RequestContext, StepRecord, Trace
from resilience.testing import FakeClock, assert_trace, trace_problems

from .conftest import REFERENCE_POLICIES, Stores


def _trace(**changes: object) -> Trace:
    base = Trace(
        "p",
        "v1",
        "r1",
        "session",
        Reason.PRIMARY,
        (StepRecord("error_rate", Outcome.OK, 5), StepRecord("session", Outcome.OK, 40, "w=0.5")),
        30_000,
        60,
    )
    return base._replace(**changes)


def test_assert_trace_passes_on_what_it_is_told() -> None:
    assert_trace(
        _trace(),
        served="session",
        reason="primary",
        outcomes={"session": "ok", "error_rate": Outcome.OK, "profile_only": None},
        details={"session": "w="},
        order=["error_rate", "session"],
        group="",
        shadow=False,
    )


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ({"served": "profile_only"}, "served 'session', expected 'profile_only'"),
        ({"reason": Reason.FALLBACK}, "reason 'primary', expected 'fallback'"),
        ({"outcomes": {"session": "timeout"}}, "session ended 'ok', expected 'timeout'"),
        ({"outcomes": {"segment": "ok"}}, "segment was not tried"),
        ({"outcomes": {"session": None}}, "session was tried (ok), expected not"),
        ({"details": {"session": "age"}}, "expected one containing 'age'"),
        ({"order": ["session"]}, "steps ['error_rate', 'session'], expected ['session']"),
        ({"group": "holdout"}, "group '', expected 'holdout'"),
        ({"shadow": True}, "shadow False, expected True"),
    ],
)
def test_assert_trace_says_what_differed_and_shows_the_trace(
    expectation: dict[str, object], message: str
) -> None:
    with pytest.raises(AssertionError) as caught:
        assert_trace(_trace(), **expectation)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "trace: p@v1 served session (primary)" in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"served": "profile_only"}, "which has no record"),
        (
            {"steps": (StepRecord("session", Outcome.TIMEOUT, 10),)},
            "whose outcome is timeout",
        ),
        ({"served": "", "reason": Reason.FALLBACK}, "no tier served"),
        # what the chaos soak found: a terminal tier recorded late left a holdout unserved
        ({"served": "", "reason": Reason.HOLDOUT, "group": "holdout"}, "no tier served"),
        ({"reason": Reason.GUARD}, "no guard record is disabled"),
        ({"reason": Reason.BUDGET}, "no step was skipped for budget"),
        ({"group": "holdout"}, "reason primary with group 'holdout'"),
        ({"used_us": 10}, "took longer than the decision"),
        (
            {"steps": (StepRecord("session", Outcome.OK, 1), StepRecord("session", Outcome.OK, 1))},
            "recorded twice",
        ),
    ],
)
def test_trace_problems_finds_each_inconsistency(changes: dict[str, object], problem: str) -> None:
    found = trace_problems(_trace(**changes))
    assert any(problem in p for p in found), found


def test_every_trace_the_engine_writes_has_no_problem(
    make_engine: Callable[..., Engine], stores: Stores, fake_clock: FakeClock
) -> None:
    engine = make_engine(REFERENCE_POLICIES.read_text(), stores.sync())
    requests = [
        RequestContext(user_id=f"u{n}", session_id=f"s{n % 3}", segment="sports") for n in range(40)
    ]
    traces = [engine.decide(r).trace for r in requests]
    stores.session.raises()
    traces += [engine.decide(r).trace for r in requests]
    stores.profile.slow(0.050)
    traces += [engine.decide(r).trace for r in requests]
    traces += [asyncio.run(engine.adecide(r)).trace for r in requests[:5]]
    reasons = {t.reason for t in traces}
    assert len(reasons) >= 3, reasons  # the traces are varied, not forty of one kind
    for trace in traces:
        assert trace_problems(trace) == [], trace
