"""The chaos soak (benchmarks/soak.py, docs/chaos-soak.md): its quick run, and its checkers.

The quick run asserts correctness under chaos, never timing: no decision failed, every trace is
consistent, every kind of chaos happened, and what the engine started is gone after close.
The checkers are tested on their own, on hand-built traces, so that each rule is seen to fail.
"""

from __future__ import annotations

import copy
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benchmarks import soak
from resilience import (
    Candidate,
    Decision,
    Engine,
    HoldoutOptions,
    Outcome,
    Reason,
    RequestContext,
    StepRecord,
    Trace,
    in_holdout,
    load_policies,
)
from resilience.testing import HandFlags

from .conftest import need_redis_server

# On the real clock: run alone, after the parallel run (see the Makefile).
pytestmark = pytest.mark.serial


@pytest.fixture(scope="module")
def soak_run() -> dict[str, Any]:
    """One quick soak for the module: 1.5 s of chaos (one whole round at least) with a fixed
    seed, light enough for CI."""
    need_redis_server()
    return soak.run(seconds=1.5, seed=11, threads=2, tasks=8)


# --- the quick run ------------------------------------------------------------------------------


def test_no_decision_failed_and_every_trace_is_consistent(soak_run: dict[str, Any]) -> None:
    for mode in ("sync", "async"):
        figures = soak_run[mode]
        assert figures["decisions"] > 0, mode
        assert figures["failed"] == 0, figures["failures"]
        assert figures["trace_problems"] == 0, figures["problem_examples"]
    assert soak_run["async_error"] is None
    assert soak_run["chaos"]["error"] is None
    assert soak_run["chaos"]["problems"] == []
    assert soak_run["internal_errors"] == []


def test_every_kind_of_chaos_happened(soak_run: dict[str, Any]) -> None:
    actions = soak_run["chaos"]["actions"]
    assert set(actions) == set(soak.ACTIONS)
    assert [kind for kind, count in actions.items() if count == 0] == []
    events = soak_run["events"]
    # Every valid reload changed the policy, and every invalid one was refused, as events say.
    assert events["resilience.policy.reloaded"] == actions["reload_ok"]
    assert events["resilience.policy.reload_failed"] == actions["reload_refused"]
    assert events.get("resilience.flag.changed", 0) >= 1
    assert events.get("resilience.breaker.opened[session_store]", 0) >= 1
    assert events.get("resilience.breaker.closed[session_store]", 0) >= 1
    assert events.get("resilience.stream_lag.tripped", 0) >= 1
    assert events.get("resilience.stream_lag.recovered", 0) >= 1
    assert soak_run["recovered_s"] is not None
    assert None not in soak_run["drill"].values()


def test_both_sides_decided_under_the_chaos(soak_run: dict[str, Any]) -> None:
    for mode in ("sync", "async"):
        reasons = soak_run[mode]["reasons"]
        # The guards, the kill switch and the holdout each answered some decisions.
        assert {"guard", "switched_off", "holdout", "primary"} <= set(reasons), (mode, reasons)
        assert soak_run[mode]["served_by"].get("session", 0) > 0
    live = set(soak_run["chaos"]["versions_live"])
    assert len(live) > 1  # reloads happened while deciding
    for mode in ("sync", "async"):
        assert set(soak_run[mode]["versions"]) <= live


def test_threads_descriptors_and_connections_are_back_after_close(
    soak_run: dict[str, Any],
) -> None:
    resources = soak_run["resources"]
    base, after = resources["baseline"], resources["after"]
    # none alive that was not before (earlier tests' threads may have ended meanwhile)
    assert set(after["thread_ids"]) <= set(base["thread_ids"])
    assert set(after["os_thread_ids"]) <= set(base["os_thread_ids"])
    assert after["fds"] <= base["fds"] + 2
    assert after["redis_clients"] == 0
    assert [s["share"] for s in resources["run"]] == [0.25, 0.5, 0.75, 1.0]
    # While running there was more of each: the samples see what they count.
    started = set(base["thread_ids"])
    assert any(set(sample["thread_ids"]) - started for sample in resources["run"])
    assert resources["warm"]["redis_clients"] > 0


def test_the_bounds_can_be_missed(soak_run: dict[str, Any]) -> None:
    verdicts = soak.bound_verdicts(soak_run)
    assert set(verdicts) == set(soak.BOUNDS)
    changes: dict[str, Callable[[dict[str, Any]], object]] = {
        "failed": lambda r: r["async"].update(failed=1),
        "trace_problems": lambda r: r["sync"].update(trace_problems=1),
        "chaos_problems": lambda r: r["chaos"]["problems"].append("refused a valid reload"),
        "internal_errors": lambda r: r["events"].update({"resilience.engine.internal_error": 1}),
        "recovered": lambda r: r["drill"].update(recovered_s=None),
        "threads": lambda r: r["resources"]["after"]["thread_ids"].append(-1),
        "fds": lambda r: r["resources"]["after"].update(fds=10_000),
        "redis_clients": lambda r: r["resources"]["after"].update(redis_clients=1),
        "rss_growth": lambda r: r["resources"]["run"][-1].update(rss_mib=10_000.0),
        "objects_growth": lambda r: r["resources"]["run"][-1].update(objects=10**9),
    }
    assert set(changes) == set(soak.BOUNDS)
    for name, change in changes.items():
        broken = copy.deepcopy(soak_run)
        change(broken)
        assert not soak.bound_verdicts(broken)[name]["met"], name


# --- the schedule -------------------------------------------------------------------------------


def test_the_schedule_is_seeded_and_each_round_holds_every_move() -> None:
    def rounds(seed: int) -> list[list[tuple[str, bool]]]:
        rng = random.Random(seed)
        return [soak._round(rng) for _ in range(3)]

    assert rounds(5) == rounds(5)
    assert rounds(5) != rounds(6)
    for moves in rounds(5):
        begun = sorted(kind for kind, begins in moves if begins)
        assert begun == sorted([*soak.EPISODES, *soak.INSTANTS])
        assert sorted(kind for kind, begins in moves if not begins) == sorted(soak.EPISODES)
        open_: set[str] = set()
        for kind, begins in moves:
            if kind not in soak.EPISODES:
                continue
            assert (kind in open_) != begins, (kind, begins)  # begins closed, ends open
            (open_.add if begins else open_.discard)(kind)
            assert len(open_ & set(soak._REDIS_EPISODES)) <= 1  # never frozen and down at once
        assert open_ == set()


# --- the checkers -------------------------------------------------------------------------------

SHAPE = soak.Shape(
    "search",
    ("stream_lag", "error_rate"),
    ("session", "stale_cache", "profile_only", "segment", "unpersonalized"),
    ("boost_cap", "exploration"),
    30_000,
    HoldoutOptions(salt="soak-holdout", percent=5),
)
SHAPES = {"v1": SHAPE}


def _record(step: str, outcome: Outcome = Outcome.OK, us: int = 10, detail: str = "") -> StepRecord:
    return StepRecord(step, outcome, us, detail)


GUARDS_OK = (_record("stream_lag"), _record("error_rate"))
POST_OK = (_record("boost_cap"), _record("exploration"))
GOOD = Trace(
    "search",
    "v1",
    "r1",
    "session",
    Reason.PRIMARY,
    (*GUARDS_OK, _record("session", us=300), *POST_OK),
    30_000,
    400,
    group="treatment",
)
FALLBACK = GOOD._replace(
    served="stale_cache",
    reason=Reason.FALLBACK,
    steps=(
        *GUARDS_OK,
        _record("session", Outcome.ERROR, 50, "ConnectionError"),
        _record("stale_cache"),
        *POST_OK,
    ),
)
GUARDED = GOOD._replace(
    served="unpersonalized",
    reason=Reason.GUARD,
    steps=(
        _record("stream_lag", Outcome.DISABLED, detail="stream lag 45s above 30s"),
        _record("unpersonalized"),
        *POST_OK,
    ),
)
SWITCHED_OFF = GOOD._replace(
    served="unpersonalized", reason=Reason.SWITCHED_OFF, steps=(_record("unpersonalized"),)
)
HELD_OUT = GOOD._replace(
    served="unpersonalized",
    reason=Reason.HOLDOUT,
    group="holdout",
    steps=(_record("unpersonalized"), *POST_OK),
)
STEP_OFF = FALLBACK._replace(
    steps=(
        _record("session", Outcome.SWITCHED_OFF, 0, "flag:redis"),
        *GUARDS_OK,
        _record("stale_cache"),
        *POST_OK,
    )
)
OUT_OF_TIME = GOOD._replace(
    served="unpersonalized",
    reason=Reason.BUDGET,
    used_us=31_000,
    steps=(
        *GUARDS_OK,
        _record("session", Outcome.TIMEOUT, 30_500, "returned after 30.5ms"),
        _record("stale_cache", Outcome.SKIPPED_BUDGET, 0),
        _record("profile_only", Outcome.SKIPPED_BUDGET, 0),
        _record("segment", Outcome.SKIPPED_BUDGET, 0),
        _record("unpersonalized"),
        _record("boost_cap", Outcome.SKIPPED_BUDGET, 0),
        _record("exploration", Outcome.SKIPPED_BUDGET, 0),
    ),
)


# A guard whose verdict came after the deadline (its thread was preempted): discarded.
LATE_GUARD = OUT_OF_TIME._replace(
    used_us=4_300,
    budget_us=4_000,
    steps=(
        _record("stream_lag"),
        _record("error_rate", Outcome.TIMEOUT, 4_100, "verdict discarded"),
        *(_record(tier, Outcome.SKIPPED_BUDGET, 0) for tier in SHAPE.tiers[:-1]),
        _record("unpersonalized"),
        *(_record(step, Outcome.SKIPPED_BUDGET, 0) for step in SHAPE.post),
    ),
)


@pytest.mark.parametrize(
    "trace",
    [GOOD, FALLBACK, GUARDED, SWITCHED_OFF, HELD_OUT, STEP_OFF, OUT_OF_TIME, LATE_GUARD],
    ids=["primary", "fallback", "guard", "switched_off", "holdout", "step_off", "budget", "late"],
)
def test_consistent_traces_pass(trace: Trace) -> None:
    assert soak.trace_problems(trace, SHAPES) == []


def _steps(*records: StepRecord) -> dict[str, Any]:
    return {"steps": records}


BAD: dict[str, tuple[Trace, str]] = {
    "unknown_version": (GOOD._replace(config_version="v0"), "belongs to no policy"),
    "other_policy": (GOOD._replace(policy="browse"), "under the version of"),
    "closed_reason": (GOOD._replace(reason=Reason.CLOSED), "reason closed from a running"),
    "no_budget": (GOOD._replace(budget_us=0), "budget 0 us"),
    "budget_above_policy": (GOOD._replace(budget_us=31_000), "budget 31000 us"),
    "negative_time": (GOOD._replace(used_us=-1), "used -1 us"),
    "served_is_not_ok": (GOOD._replace(served="stale_cache"), "served 'stale_cache'"),
    "two_tiers_ok": (
        FALLBACK._replace(**_steps(*GUARDS_OK, _record("session"), _record("stale_cache"))),
        "2 tier records ended ok",
    ),
    # What the engine does when the terminal tier's thread is preempted past its 1 ms timeout.
    "terminal_timed_out": (
        GUARDED._replace(
            served="",
            steps=(
                GUARDED.steps[0],
                _record("unpersonalized", Outcome.TIMEOUT, 1_200, "returned after 1.2ms"),
            ),
        ),
        "0 tier records ended ok",
    ),
    "tier_after_serving": (
        GOOD._replace(**_steps(_record("session"), _record("stale_cache", Outcome.MISS))),
        "tried after session served",
    ),
    "guard_missed": (
        GOOD._replace(**_steps(_record("stream_lag", Outcome.MISS), _record("session"))),
        "guard stream_lag ended miss",
    ),
    "post_step_disabled": (
        GOOD._replace(**_steps(_record("session"), _record("boost_cap", Outcome.DISABLED))),
        "post step boost_cap ended disabled",
    ),
    "tier_ok_with_a_failure_outcome": (
        FALLBACK._replace(
            **_steps(_record("session", Outcome.DISABLED), _record("stale_cache"), *POST_OK)
        ),
        "ended disabled without serving",
    ),
    "disabled_guard_but_primary": (
        GOOD._replace(**_steps(_record("stream_lag", Outcome.DISABLED), _record("session"))),
        "disabled, but the reason is primary",
    ),
    "guard_reason_without_a_disabled_guard": (
        GUARDED._replace(**_steps(*GUARDS_OK, _record("unpersonalized"))),
        "reason guard, but the last guard record is not disabled",
    ),
    "guard_reason_with_a_personalized_tier": (
        GUARDED._replace(
            served="stale_cache",
            steps=(GUARDED.steps[0], _record("session", Outcome.MISS), _record("stale_cache")),
        ),
        "not unpersonalized alone",
    ),
    "holdout_ran_guards": (
        HELD_OUT._replace(**_steps(*GUARDS_OK, _record("unpersonalized"))),
        "held-out user's trace has guard",
    ),
    "holdout_group_without_holdout_reason": (GOOD._replace(group="holdout"), "group 'holdout'"),
    "switched_off_ran_post_steps": (
        SWITCHED_OFF._replace(**_steps(_record("unpersonalized"), *POST_OK)),
        "switched off, but steps besides",
    ),
    "primary_after_another_tier": (
        GOOD._replace(**_steps(_record("stale_cache", Outcome.MISS), _record("session"))),
        "out of declaration order",
    ),
    "fallback_served_by_the_first_tier": (
        GOOD._replace(reason=Reason.FALLBACK),
        "reason fallback, but the first tier served",
    ),
    "budget_without_a_skip": (
        FALLBACK._replace(reason=Reason.BUDGET),
        "reason budget with skipped_budget records: False",
    ),
    "fallback_with_a_skip": (
        OUT_OF_TIME._replace(reason=Reason.FALLBACK),
        "reason fallback with skipped_budget records: True",
    ),
    "post_before_tiers": (
        GOOD._replace(**_steps(*GUARDS_OK, *POST_OK, _record("session"))),
        "out of declaration order",
    ),
    "recorded_twice": (
        GOOD._replace(**_steps(*GUARDS_OK, _record("session"), _record("session"))),
        "recorded twice",
    ),
    "unknown_step": (
        GOOD._replace(**_steps(_record("rerank"), _record("session"))),
        "'rerank' is not in the policy",
    ),
    "switched_off_after_a_step_ran": (
        STEP_OFF._replace(**_steps(*GUARDS_OK, *STEP_OFF.steps[:1], *STEP_OFF.steps[3:])),
        "switched off after steps that ran",
    ),
    "switched_off_from_nowhere": (
        STEP_OFF._replace(
            **_steps(_record("session", Outcome.SWITCHED_OFF, 0, "?"), *STEP_OFF.steps[1:])
        ),
        "switched off from '?'",
    ),
    "skipped_step_took_time": (
        OUT_OF_TIME._replace(
            **_steps(
                *OUT_OF_TIME.steps[:3],
                _record("profile_only", Outcome.SKIPPED_BUDGET, 5),
                *OUT_OF_TIME.steps[5:],
            )
        ),
        "was not run but took 5 us",
    ),
    "steps_longer_than_the_decision": (GOOD._replace(used_us=100), "the decision 100 us"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_inconsistency_is_reported(case: str) -> None:
    trace, phrase = BAD[case]
    problems = soak.trace_problems(trace, SHAPES)
    assert any(phrase in problem for problem in problems), problems


# --- the checkers against a real engine ---------------------------------------------------------


@pytest.fixture
def dead_redis_engine() -> Iterator[tuple[Engine, HandFlags, str]]:
    """The soak's policy, its Redis on a port nothing listens on: sessions fail at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = soak.policy_text(f"redis://127.0.0.1:{port}/0")
    feed = HandFlags("redis")
    engine = Engine(
        load_policies(text), soak._sources(soak._Watermark()), flag_feeds=[feed], seed=0
    )
    try:
        yield engine, feed, text
    finally:
        engine.close()


def test_real_traces_pass_and_a_broken_one_does_not(
    dead_redis_engine: tuple[Engine, HandFlags, str],
) -> None:
    engine, feed, text = dead_redis_engine
    shapes = soak.shapes_of([text])
    candidates = tuple(Candidate(f"c{n}", 1.0 - n / 10, "books") for n in range(10))
    salt = HoldoutOptions(salt="soak-holdout", percent=5)
    held = next(f"u{n}" for n in range(1000) if in_holdout(salt, f"u{n}"))
    requests = [
        RequestContext(
            user_id=f"u{n}", session_id=f"s{n}", request_id=f"r{n}", candidates=candidates
        )
        for n in range(30)
    ]
    requests += [
        RequestContext(user_id="u1", request_id="tight", time_left=0.004),
        RequestContext(user_id="x1", session_id="n1", request_id="cold"),
        RequestContext(user_id=held, session_id="s1", request_id="held"),
    ]
    decisions: list[tuple[Decision, RequestContext]] = []
    for request in requests:
        decisions.append((engine.decide(request), request))
    feed.set("search", "off")
    decisions.append((engine.decide(requests[0]), requests[0]))
    feed.clear("search")
    feed.set("search.session", "off")
    decisions.append((engine.decide(requests[1]), requests[1]))
    reasons = {decision.trace.reason for decision, _ in decisions}
    assert {Reason.FALLBACK, Reason.HOLDOUT, Reason.SWITCHED_OFF} <= reasons, reasons
    for decision, request in decisions:
        assert soak.decision_problems(decision, request, shapes) == [], decision.trace
    decision, request = decisions[0]
    broken = decision._replace(trace=decision.trace._replace(served="segment"))
    assert soak.decision_problems(broken, request, shapes) != []


def test_a_decision_must_agree_with_its_request(
    dead_redis_engine: tuple[Engine, HandFlags, str],
) -> None:
    engine, _, text = dead_redis_engine
    shapes = soak.shapes_of([text])
    salt = HoldoutOptions(salt="soak-holdout", percent=5)
    user = next(f"u{n}" for n in range(1000) if not in_holdout(salt, f"u{n}"))
    request = RequestContext(user_id=user, request_id="r1", time_left=0.015)
    decision = engine.decide(request)
    assert soak.decision_problems(decision, request, shapes) == []
    other_budget = RequestContext(user_id=user, request_id="r1")
    assert any(
        "expected 30000 us" in p for p in soak.decision_problems(decision, other_budget, shapes)
    )
    other_id = RequestContext(user_id=user, request_id="r2", time_left=0.015)
    assert any("request id" in p for p in soak.decision_problems(decision, other_id, shapes))
    held = next(f"u{n}" for n in range(1000) if in_holdout(salt, f"u{n}"))
    other_user = RequestContext(user_id=held, request_id="r1", time_left=0.015)
    assert any(
        "the user's is 'holdout'" in p for p in soak.decision_problems(decision, other_user, shapes)
    )
    assert decision.trace.served == "profile_only"  # the session store is down
    bare = decision._replace(signals=None)
    assert any("signals False" in p for p in soak.decision_problems(bare, request, shapes))


def test_every_invalid_text_is_refused_and_every_variant_applies(
    dead_redis_engine: tuple[Engine, HandFlags, str],
) -> None:
    engine, _, text = dead_redis_engine
    url = text.split('url: "', 1)[1].split('"', 1)[0]
    running = engine.versions()
    for name, edit in soak.INVALID.items():
        result = engine.reload(edit(text))
        assert not result.ok, name
        assert result.issues, name
        assert engine.versions() == running, name
    for variant in soak.VARIANTS:
        variant_text = soak.policy_text(url, variant)
        result = engine.reload(variant_text)
        assert result.ok, (variant, result.issues)
        assert result.versions == {"search": next(iter(soak.shapes_of([variant_text])))}
