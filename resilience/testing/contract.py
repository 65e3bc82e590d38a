"""The contract a plugin's step types keep, checked the way the engine and its tools use them.

One call in a plugin's test suite::

    from resilience.testing import assert_plugin

    def test_the_plugin_keeps_the_contract() -> None:
        assert_plugin(plugin)

checks what loading alone does not: that each step type's parameters are described (the docs'
tables and the editor's hover are made of those descriptions), that its schema and its docs
table can be generated, that the telemetry it declares is registered, and that it keeps the
rule every step keeps, *missing data is never an error*: built into a policy with stores that
have nothing, it answers a request that carries nothing (no user, no session, no segment, no
candidates) without ``error``, ``garbage`` or ``timeout``, sync and asyncio, and the trace is
consistent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Mapping, Sequence
from typing import Any

from resilience._engine import Engine
from resilience._errors import PluginError, PolicyValidationError
from resilience._model import RequestContext
from resilience._outcomes import Outcome
from resilience._plugins import PluginHost
from resilience._policy import load_policies
from resilience._readings import METRICS
from resilience._reference import parameter_table
from resilience._schema import policy_schema
from resilience._steps import Step, StepKind
from resilience._trace import Reason, Trace
from resilience.events import EVENTS, NullSink

from .traces import trace_problems

__all__ = ["assert_plugin", "plugin_problems"]

_FAILURES = frozenset({Outcome.ERROR, Outcome.GARBAGE, Outcome.TIMEOUT})


def plugin_problems(
    plugin: object,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    before: Mapping[str, Sequence[Any]] | None = None,
) -> list[str]:
    """What in ``plugin``'s step types breaks the contract, as sentences; empty when nothing.

    Args:
        plugin: the plugin object, as its entry point names it (a module with
            ``@hookimpl resilience_step_types``, or an object with that method).
        params: parameters to declare, by step type name, for step types whose parameters
            have no defaults (a required source, say).
        before: tiers to put before it in the chain, by step type name, as YAML would
            declare them (``[{"type": "session"}]``), for a step type that serves what
            another feeds.

    Returns:
        One sentence per problem, naming the step type.
    """
    try:
        host = PluginHost(extra=[plugin], entry_points_=[])
    except PluginError as exc:
        return [f"the plugin does not load: {exc}"]
    builtins = set(PluginHost(entry_points_=[]).step_types)
    contributed = {n: t for n, t in host.step_types.items() if n not in builtins}
    if not contributed:
        return ["the plugin contributes no step type (resilience_step_types returned none)"]
    problems: list[str] = []
    try:
        policy_schema(host)
    except Exception as exc:  # a model pydantic cannot describe; the author must see it
        problems.append(f"resilience schema fails: {type(exc).__name__}: {exc}")
    for name, step_type in sorted(contributed.items()):
        declared = (params or {}).get(name, {})
        neighbours = (before or {}).get(name, ())
        problems.extend(
            f"{name}: {p}" for p in step_type_problems(step_type, declared, host, neighbours)
        )
    return problems


def step_type_problems(
    step_type: type[Step],
    declared: Mapping[str, Any],
    host: PluginHost,
    before: Sequence[Any] = (),
) -> list[str]:
    """What in one registered step type breaks the contract (:func:`plugin_problems`, less
    the loading): ``declared`` are its parameters in the policy the check builds."""
    return [
        *_described(step_type),
        *_telemetry(step_type, host),
        *_runs_on_nothing(step_type, dict(declared), host, list(before)),
    ]


def assert_plugin(
    plugin: object,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    before: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """Fail with every problem :func:`plugin_problems` finds.

    Raises:
        AssertionError: listing the problems, one a line.
    """
    problems = plugin_problems(plugin, params=params, before=before)
    if problems:
        raise AssertionError("the plugin breaks the contract:\n  " + "\n  ".join(problems))


def _described(step_type: type[Step]) -> list[str]:
    problems = [
        f"parameter {field!r} has no description (it is the docs' 'meaning' and the editor's "
        "hover: Field(description=...))"
        for field, info in step_type.Params.model_fields.items()
        if not (info.description or "").strip()
    ]
    try:
        parameter_table(step_type)
    except Exception as exc:
        problems.append(f"its parameter table cannot be generated: {type(exc).__name__}: {exc}")
    refusal = step_type.bulkhead_refusal
    if refusal is not None and not (isinstance(refusal, str) and refusal.strip()):
        problems.append("bulkhead_refusal is set but says nothing; give the reason, or None")
    return problems


def _telemetry(step_type: type[Step], host: PluginHost) -> list[str]:
    problems = [
        f"telemetry names {name!r}, which no register_event or register_metric declared"
        for name in step_type.telemetry
        if name not in EVENTS and name not in METRICS
    ]
    problems.extend(
        f"its module registers {name!r}, which no step type of that module lists in its "
        "telemetry (the docs' telemetry table is made of that list)"
        for name in unlisted_telemetry(step_type, host)
    )
    return problems


def unlisted_telemetry(step_type: type[Step], host: PluginHost) -> list[str]:
    """The events and metrics the module of ``step_type`` registered that none of that
    module's step types lists in ``telemetry`` (names it merely imports do not count)."""
    module = step_type.__module__
    listed = {
        name
        for sibling in host.step_types.values()
        if sibling.__module__ == module
        for name in sibling.telemetry
    }
    registered = [n for n, spec in EVENTS.items() if spec.module == module]
    registered += [n for n, spec in METRICS.items() if spec.module == module]
    return sorted(name for name in registered if name not in listed)


def _policy_text(step_type: type[Step], declared: dict[str, Any], before: list[Any]) -> str:
    step = {"type": step_type.name, **declared}
    policy: dict[str, Any] = {"chain": [*before, "unpersonalized"]}
    if getattr(step_type, "terminal", False):
        policy["chain"] = [*before, step]  # it ends the chain itself
    elif step_type.kind is StepKind.TIER:
        policy["chain"] = [*before, step, "unpersonalized"]
    elif step_type.kind is StepKind.GUARD:
        policy["guards"] = [step]
    else:
        policy["post"] = [step]
    document = {"version": 1, "default_policy": "contract", "policies": {"contract": policy}}
    return json.dumps(document)  # JSON is YAML


def _runs_on_nothing(
    step_type: type[Step], declared: dict[str, Any], host: PluginHost, before: list[Any]
) -> list[str]:
    try:
        loaded = load_policies(_policy_text(step_type, declared, before), plugins=host)
    except PolicyValidationError as exc:
        return [
            "with the parameters given, a policy using it does not validate (pass params= "
            f"for a required one): {'; '.join(issue.message for issue in exc.issues)}"
        ]
    from resilience.testing import FakeClock  # noqa: PLC0415 - the package imports this module

    sources = dict.fromkeys(loaded.source_names(), _nothing)
    try:
        # A clock that stands still: a step is judged on what it answers, never on how fast a
        # busy CI machine ran it.
        engine = Engine(
            loaded, sources, clock=FakeClock(), events=NullSink(), flag_feeds=(), seed=0
        )
    except Exception as exc:
        return [f"an engine with it cannot be built: {type(exc).__name__}: {exc}"]
    try:
        judged = [_judged("decide", engine.decide(RequestContext()).trace)]
        # On a loop of its own, in a thread: the caller may be a test running in an event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            decided = thread.submit(asyncio.run, engine.adecide(RequestContext())).result()
        judged.append(_judged("adecide", decided.trace))
    finally:
        engine.close()
    return [problem for problem in judged if problem]


def _judged(api: str, trace: Trace) -> str:
    failed = [f"{r.step}={r.outcome.value}" for r in trace.steps if r.outcome in _FAILURES]
    if failed:
        return (
            f"{api}: missing data is an error, not a miss ({', '.join(failed)}; trace: "
            f"{trace}); answer None from run(), and let the chain go on"
        )
    if trace.reason is Reason.INTERNAL_ERROR:
        return f"{api}: the engine recorded an internal error ({trace})"
    problems = trace_problems(trace)
    return f"{api}: inconsistent trace: {'; '.join(problems)}" if problems else ""


def _nothing(key: str) -> None:
    """A store that has nothing for anyone."""
