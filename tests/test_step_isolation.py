"""A plugin step that raises, answers garbage, runs slow or blocks costs its own step only, as
far as the ``isolation:`` its declaration chose can make it so: every kind, both isolations,
``decide`` and ``adecide``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from resilience import (
    Candidate,
    Decision,
    Engine,
    Outcome,
    PluginHost,
    PolicyValidationError,
    RequestContext,
    load_policies,
)
from resilience.testing import RecordingSink, wait_for

from .conftest import Stores
from .plugin_fixtures import misbehaving
from .plugin_fixtures import steps as fixture_steps

CANDIDATES = (Candidate("a", 3.0, "shoes"), Candidate("b", 2.0, "books"), Candidate("c", 1.0))
ABC = ["a", "b", "c"]
CBA = ["c", "b", "a"]


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(extra=[fixture_steps, misbehaving], entry_points_=[])


@pytest.fixture(autouse=True)
def release_blocked_steps() -> Iterator[None]:
    misbehaving.RELEASE.clear()
    misbehaving.BLOCKED.clear()
    yield
    misbehaving.RELEASE.set()  # blocked bulkhead threads return, and their engine can close


def policy(kind: str, behaviour: str, isolation: str) -> str:
    """A policy with one misbehaving step ``bad`` of ``kind`` and good steps around it: the
    tier ``fixed`` after a bad tier, and the post step ``after`` (reverses the list).

    The engine runs on the fake clock, but a bulkhead waits on the real one. So a step that
    blocks is waited for briefly (a 10 ms tier, a guard or post step's default 5 ms): it never
    returns, whatever the host's load. Every other step is waited for long (seconds), so that
    its answer arrives on a loaded host too; ``slow`` then overruns on the fake clock (by
    ``delay``): past a tier's timeout by half, past the whole budget for a guard or post step.
    """
    if behaviour == "block":
        budget, timeout, delay = 0.030, 0.010, 0.0
    else:
        budget, timeout = 60.0, 20.0
        delay = 30.0 if kind == "tier" else 70.0
    if isolation == "bulkhead" and kind != "tier" and behaviour != "block":
        isolation = f"{{mode: bulkhead, timeout: {timeout}s}}"
    bad = (
        f"{{type: misbehaving_{kind}, id: bad, behaviour: {behaviour}, isolation: {isolation}"
        + (f", timeout: {timeout}s" if kind == "tier" else "")
        + (f", delay: {delay}" if delay else "")
        + "}"
    )
    guards = f"[{bad}]" if kind == "guard" else "[]"
    chain = f"[{bad}, fixed, unpersonalized]" if kind == "tier" else "[fixed, unpersonalized]"
    post = f"[{bad}, " if kind == "post" else "["
    post += "{type: misbehaving_post, id: after}]"
    return f"""
version: 1
default_policy: p
policies:
  p:
    budget: {budget}s
    guards: {guards}
    chain: {chain}
    post: {post}
"""


def decide(engine: Engine, api: str) -> Decision:
    request = RequestContext(user_id="u1", candidates=CANDIDATES)
    if api == "sync":
        return engine.decide(request)
    return asyncio.run(engine.adecide(request))


def items(decision: Decision) -> list[str]:
    return [c.item_id for c in decision.candidates]


# (kind, behaviour, delay) -> (outcome of bad, served, outcome of the next step, item order).
# The next step: ``fixed`` after a bad tier or guard, ``after`` after a bad post step.
EXPECTED: dict[tuple[str, str], tuple[Outcome, str, Outcome, list[str]]] = {
    ("tier", "raise"): (Outcome.ERROR, "fixed", Outcome.OK, CBA),
    ("tier", "garbage"): (Outcome.GARBAGE, "fixed", Outcome.OK, CBA),
    # 30 s of a 20 s tier: too late, and 30 s of the 60 s budget remain for the next one
    ("tier", "slow"): (Outcome.TIMEOUT, "fixed", Outcome.OK, CBA),
    ("tier", "block"): (Outcome.TIMEOUT, "fixed", Outcome.OK, CBA),
    ("guard", "raise"): (Outcome.ERROR, "fixed", Outcome.OK, CBA),
    # False is not a reason: the chain runs (it would otherwise switch everyone off)
    ("guard", "garbage"): (Outcome.GARBAGE, "fixed", Outcome.OK, CBA),
    # 70 s of a 60 s budget: its verdict is discarded, and nothing is left for the chain
    ("guard", "slow"): (Outcome.TIMEOUT, "unpersonalized", Outcome.SKIPPED_BUDGET, ABC),
    ("guard", "block"): (Outcome.TIMEOUT, "fixed", Outcome.OK, CBA),
    ("post", "raise"): (Outcome.ERROR, "fixed", Outcome.OK, CBA),
    ("post", "garbage"): (Outcome.GARBAGE, "fixed", Outcome.OK, CBA),
    ("post", "slow"): (Outcome.TIMEOUT, "fixed", Outcome.SKIPPED_BUDGET, ABC),
    ("post", "block"): (Outcome.TIMEOUT, "fixed", Outcome.OK, CBA),
}

CASES = [
    pytest.param(kind, behaviour, isolation, id=f"{kind}-{behaviour}-{isolation}")
    for (kind, behaviour) in EXPECTED
    for isolation in ("inline", "bulkhead")
    # an inline step that blocks holds the request: what inline means, and not testable
    if not (behaviour == "block" and isolation == "inline")
]


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize(("kind", "behaviour", "isolation"), CASES)
def test_a_misbehaving_step_costs_its_own_step_only(
    make_engine: Callable[..., Engine],
    stores: Stores,
    host: PluginHost,
    kind: str,
    behaviour: str,
    isolation: str,
    api: str,
) -> None:
    engine = make_engine(policy(kind, behaviour, isolation), stores.sync(), plugins=host)
    decision = decide(engine, api)
    bad, served, following, order = EXPECTED[kind, behaviour]
    trace = decision.trace
    assert trace.outcome_of("bad") is bad, trace
    assert trace.served == served, trace
    nxt = "after" if kind == "post" else "fixed"
    assert trace.outcome_of(nxt) is following, trace
    assert items(decision) == order, trace
    if kind == "post":  # the chain before it was untouched
        assert trace.outcome_of("fixed") is Outcome.OK
    if behaviour == "block":
        assert misbehaving.BLOCKED == ["bad"]  # it did start, and the request did not wait


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("kind", ["tier", "guard", "post"])
def test_a_full_step_bulkhead_refuses_at_once_until_its_calls_return(
    make_engine: Callable[..., Engine],
    stores: Stores,
    host: PluginHost,
    recording_sink: RecordingSink,
    kind: str,
    api: str,
) -> None:
    isolation = "{mode: bulkhead, max_concurrent: 1}"
    engine = make_engine(policy(kind, "block", isolation), stores.sync(), plugins=host)
    first = decide(engine, api)
    assert first.trace.outcome_of("bad") is Outcome.TIMEOUT
    second = decide(engine, api)  # the hung call holds the only slot
    assert second.trace.outcome_of("bad") is Outcome.REJECTED, second.trace
    assert second.trace.served == "fixed"
    assert items(second) == CBA
    (abandoned,) = recording_sink.of("resilience.bulkhead.abandoned")
    assert abandoned["source"] == "p.bad"
    (bad,) = (step for step in engine.steps("p") if step.step_id == "bad")
    assert bad.isolated_by is not None
    readings = {
        r.name: r.value for r in engine.readings() if r.labels == {"policy": "p", "step": "bad"}
    }
    assert readings == {
        "resilience_step_bulkhead_in_flight": 1.0,
        "resilience_step_bulkhead_rejected_total": 1.0,
        "resilience_step_bulkhead_abandoned_total": 1.0,
    }
    misbehaving.RELEASE.set()
    assert wait_for(lambda: bad.isolated_by is not None and not bad.isolated_by.stats.in_flight, 5)
    misbehaving.RELEASE.clear()
    third = decide(engine, api)  # the slot is free again: the step is called (and hangs)
    assert third.trace.outcome_of("bad") is Outcome.TIMEOUT


def test_an_inline_step_is_a_plain_call_and_a_bulkhead_one_is_not(
    make_engine: Callable[..., Engine], stores: Stores, host: PluginHost
) -> None:
    engine = make_engine(policy("tier", "ok", "inline"), stores.sync(), plugins=host)
    (bad,) = (step for step in engine.steps("p") if step.step_id == "bad")
    assert bad.isolated_by is None
    assert engine.decide(RequestContext()).trace.served == "bad"


def test_closing_the_engine_closes_the_step_bulkheads(
    make_engine: Callable[..., Engine], stores: Stores, host: PluginHost
) -> None:
    engine = make_engine(policy("guard", "ok", "bulkhead"), stores.sync(), plugins=host)
    assert engine.decide(RequestContext()).trace.outcome_of("bad") is Outcome.OK
    (bad,) = (step for step in engine.steps("p") if step.step_id == "bad")
    engine.close()
    assert bad.isolated_by is not None
    assert bad.isolated_by.stats.completed == 1
    with pytest.raises(Exception, match="is full"):  # closed: refuses every call
        bad.isolated_by.submit(lambda: None)


def test_isolation_is_part_of_the_config_version(host: PluginHost) -> None:
    def version(isolation: str) -> str:
        return load_policies(policy("tier", "ok", isolation), plugins=host).policies["p"].version

    plain = policy("tier", "ok", "inline").replace(", isolation: inline", "")
    assert load_policies(plain, plugins=host).policies["p"].version == version("inline")
    assert version("bulkhead") != version("inline")


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{type: unpersonalized, isolation: bulkhead}", "terminal tier cannot run in a bulkhead"),
        ("{type: fixed, isolation: threads}", "'inline' or 'bulkhead'"),
        ("{type: fixed, isolation: {mode: inline, max_concurrent: 2}}", "bulkhead only"),
        ("{type: fixed, isolation: {mode: bulkhead, timeout: 2ms}}", "its own timeout"),
        ("{type: fixed, isolation: {mode: bulkhead, max_concurrent: 0}}", "at least 1"),
        ("{type: fixed, isolation: {mode: bulkhead, size: 2}}", "unknown parameter 'size'"),
        ("{type: fixed, isolation: [bulkhead]}", "expected a mapping"),
    ],
)
def test_a_wrong_isolation_is_a_validation_error(host: PluginHost, step: str, message: str) -> None:
    text = f"version: 1\npolicies:\n  p:\n    chain: [{step}, unpersonalized]\n"
    if "unpersonalized," in step:
        text = f"version: 1\npolicies:\n  p:\n    chain: [fixed, {step}]\n"
    with pytest.raises(PolicyValidationError) as caught:
        load_policies(text, plugins=host)
    (issue,) = caught.value.issues
    assert ".isolation" in issue.path
    assert message in f"{issue.message} ({issue.hint})"


def test_a_tier_reading_an_async_source_cannot_run_in_a_bulkhead(
    make_engine: Callable[..., Engine], stores: Stores
) -> None:
    text = """
version: 1
policies:
  p:
    chain: [{type: profile_only, isolation: bulkhead}, unpersonalized]
"""
    with pytest.raises(PolicyValidationError, match="reads an async source"):
        make_engine(text, stores.asyncio())


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("kind", ["tier", "guard", "post"])
def test_a_step_in_a_bulkhead_sees_the_request_s_context(
    make_engine: Callable[..., Engine], stores: Stores, host: PluginHost, kind: str, api: str
) -> None:
    """On its worker thread a step reads the request's context variables, as inline: a policy
    in shadow must write no shared state from a bulkhead either."""
    text = policy(kind, "ok", "bulkhead").replace("  p:\n", "  p:\n    mode: shadow\n")
    engine = make_engine(text, stores.sync(), plugins=host)
    misbehaving.SAW_SHADOW.clear()
    decision = decide(engine, api)
    assert decision.trace.shadow
    assert misbehaving.SAW_SHADOW and all(misbehaving.SAW_SHADOW), misbehaving.SAW_SHADOW


def test_a_step_type_can_refuse_the_bulkhead(host: PluginHost) -> None:
    text = """
version: 1
policies:
  p:
    guards: [{type: error_rate, isolation: bulkhead}]
    chain: [fixed, unpersonalized]
"""
    with pytest.raises(PolicyValidationError) as caught:
        load_policies(text, plugins=host)
    (issue,) = caught.value.issues
    assert issue.path == "policies.p.guards[0].isolation"
    assert "'error_rate' cannot run in a bulkhead" in issue.message
