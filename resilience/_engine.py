"""The engine: compiles a policy set once, then runs one decision per request.

This is the only module on the per-request path. Everything it calls per request was built at
compile time: step objects with their sources bound, parameters resolved, timeouts read. There is
no hook dispatch, no lookup by step name, no logging on the happy path.

The sync (:meth:`Engine.decide`) and asyncio (:meth:`Engine.adecide`) entry points share the same
core: budget set-up, guards, outcome classification, post steps and the trace are one code path;
the two differ only in how a tier is invoked (a call, or an ``await`` under a deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from ._breaker import CircuitBreaker
from ._clock import Clock, SystemClock
from ._diversity import DiversityMonitor
from ._errors import (
    BreakerOpen,
    BulkheadFull,
    GarbageData,
    PolicyError,
    PolicyIssue,
    PolicyValidationError,
    SourceBindingError,
)
from ._fleet import FleetSync
from ._model import Candidate, RequestContext, Signals
from ._outcomes import Outcome
from ._plugins import PluginHost
from ._policy import Policy, PolicySet, load_policies, load_policies_file
from ._sources import STEP_DEADLINE, SourceFunction, SourceOptions, SourceRuntime
from ._steps import BuildContext, Guard, PostStep, Step, Tier, source_fields
from ._trace import Decision, Reason, StepRecord, Trace
from .events import (
    DECISION,
    ENGINE_BUILT,
    ENGINE_CLOSED,
    ENGINE_INTERNAL_ERROR,
    EventSink,
    StructlogSink,
)

__all__ = ["Engine"]

_OK = Outcome.OK
_MISS = Outcome.MISS
_ERROR = Outcome.ERROR
_TIMEOUT = Outcome.TIMEOUT
_GARBAGE = Outcome.GARBAGE
_SKIPPED = Outcome.SKIPPED_BUDGET
_DISABLED = Outcome.DISABLED
_BREAKER_OPEN = Outcome.BREAKER_OPEN
_REJECTED = Outcome.REJECTED


class _Plan:
    """One policy, compiled: its steps as built objects, in execution order."""

    __slots__ = ("budget", "guards", "name", "observers", "post", "terminal", "tiers", "version")

    def __init__(
        self,
        policy: Policy,
        guards: tuple[Guard, ...],
        tiers: tuple[Tier, ...],
        post: tuple[PostStep, ...],
    ) -> None:
        self.name = policy.name
        self.version = policy.version
        self.budget = policy.budget
        self.guards = guards
        self.tiers = tiers
        self.terminal = tiers[-1:]
        self.post = post
        # Only steps that override Step.observe are told of each decision.
        self.observers: tuple[Callable[[Trace], None], ...] = tuple(
            step.observe
            for step in (*guards, *tiers, *post)
            if type(step).observe is not Step.observe
        )


def _slot(tier: Tier, left: float) -> float | None:
    """The seconds ``tier`` may take when the request has ``left``; ``None``: skip it."""
    if left >= tier.timeout:
        return tier.timeout
    if left > 0.0:
        return left
    if tier.terminal:  # needs no data and cannot fail: it runs on an empty budget
        return tier.timeout
    return None


def _failure(exc: BaseException) -> tuple[Outcome, str]:
    """The outcome of a step that raised ``exc``."""
    if isinstance(exc, GarbageData):
        return _GARBAGE, str(exc)[:200]
    if isinstance(exc, BreakerOpen):
        return _BREAKER_OPEN, exc.source
    if isinstance(exc, BulkheadFull):
        return _REJECTED, exc.source
    if isinstance(exc, TimeoutError):  # e.g. a socket timeout set from the step's budget
        return _TIMEOUT, type(exc).__name__
    return _ERROR, type(exc).__name__


def _run_sync(
    tier: Tier, request: RequestContext, timeout: float, t0: float, now: Callable[[], float]
) -> tuple[Outcome, str, Signals | None, float]:
    """Call a sync tier and classify what it did: ``(outcome, detail, result, elapsed)``.
    Shared by ``decide`` and ``adecide``."""
    try:
        result = tier.run(request, timeout)
    except (Exception, asyncio.CancelledError) as exc:
        outcome, detail = _failure(exc)
        return outcome, detail, None, now() - t0
    elapsed = now() - t0
    outcome, detail = _classify(result, elapsed, timeout)
    return outcome, detail, result, elapsed


def _classify(result: object, elapsed: float, timeout: float) -> tuple[Outcome, str]:
    """The outcome of a tier that returned ``result`` after ``elapsed`` seconds."""
    if elapsed > timeout:
        return _TIMEOUT, f"returned after {elapsed * 1e3:.1f}ms"
    if result is None:
        return _MISS, ""
    if type(result) is not Signals:
        return _GARBAGE, f"returned {type(result).__name__}"
    return _OK, result.note


class Engine:
    """Runs validated policies on requests. Thread-safe; several engines may share a process.

    Args:
        policies: the validated policy set.
        sources: the source functions the policies name, by name.
        clock: the clocks; :class:`SystemClock` by default.
        events: where events go; structlog (as the application configured it) by default.
        seed: seeds the decision-event sampler, for reproducible runs.

    Raises:
        SourceBindingError: a policy names a source that ``sources`` does not bind.
        PolicyValidationError: a step could not be built from its parameters.
    """

    def __init__(
        self,
        policies: PolicySet,
        sources: Mapping[str, SourceFunction] | None = None,
        *,
        clock: Clock | None = None,
        events: EventSink | None = None,
        seed: int | None = None,
    ) -> None:
        self.policies = policies
        self._clock = clock or SystemClock()
        self._now: Callable[[], float] = self._clock.monotonic
        self._events = events or StructlogSink()
        self._shared: dict[object, Any] = {}
        self._steps: list[Step] = []
        self._closed = False
        bound = self._bind(policies, sources or {})
        self._sources = bound
        self._fleet: FleetSync | None = None
        self._plans: dict[str, _Plan] = {}
        try:
            for policy in policies.policies.values():
                self._plans[policy.name] = self._compile(policy, bound)
            self._verify()
        except BaseException:
            self._release()
            raise
        self._default = policies.default_policy
        self._start_fleet()
        self._sample_rate = policies.settings.events.decision_sample_rate
        monitoring = policies.settings.monitoring
        self._monitor_rate = monitoring.sample_rate
        self._draws = self._sample_rate > 0 or self._monitor_rate > 0
        self._random = random.Random(seed).random
        #: rolling diversity and CTR aggregates of this engine's served lists
        self.monitor = DiversityMonitor(monitoring, self._clock.monotonic, self._clock.wall)
        self._events.emit(
            ENGINE_BUILT,
            policies=list(self._plans),
            versions={name: plan.version for name, plan in self._plans.items()},
        )

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_yaml(
        cls,
        text: str | bytes,
        sources: Mapping[str, SourceFunction] | None = None,
        *,
        plugins: PluginHost | None = None,
        **options: Any,
    ) -> Engine:
        """Validate ``text`` and build an engine from it. See :func:`load_policies`."""
        events = options.get("events")
        return cls(load_policies(text, plugins=plugins, events=events), sources, **options)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        sources: Mapping[str, SourceFunction] | None = None,
        *,
        plugins: PluginHost | None = None,
        **options: Any,
    ) -> Engine:
        """Validate the file at ``path`` and build an engine from it."""
        events = options.get("events")
        return cls(load_policies_file(path, plugins=plugins, events=events), sources, **options)

    def _bind(
        self, policies: PolicySet, sources: Mapping[str, SourceFunction]
    ) -> dict[str, SourceRuntime]:
        issues: list[PolicyIssue] = []
        bound: dict[str, SourceRuntime] = {}
        for policy in policies.policies.values():
            for spec in policy.steps():
                for field_name, source in source_fields(spec.params):
                    if source in bound:
                        continue
                    options = policies.source_options(source)
                    target = sources.get(source)
                    if options.redis is not None:
                        problem = self._from_policy(source, options, target, bound)
                        if problem:
                            issues.append(
                                PolicyIssue(
                                    policies.file,
                                    spec.line,
                                    spec.column,
                                    f"{spec.path}.{field_name}",
                                    problem[0],
                                    problem[1],
                                )
                            )
                        continue
                    if target is None:
                        known = ", ".join(sorted(sources)) or "none"
                        issues.append(
                            PolicyIssue(
                                policies.file,
                                spec.line,
                                spec.column,
                                f"{spec.path}.{field_name}",
                                f"source {source!r} is not bound",
                                f"pass sources={{{source!r}: ...}} when building the engine "
                                f"(bound: {known})",
                            )
                        )
                        continue
                    try:
                        bound[source] = SourceRuntime(
                            source,
                            target,
                            policies.source_options(source),
                            self._clock,
                            self._events,
                        )
                    except TypeError as exc:
                        issues.append(
                            PolicyIssue(
                                policies.file,
                                spec.line,
                                spec.column,
                                f"{spec.path}.{field_name}",
                                str(exc),
                                "bind a callable",
                            )
                        )
        if issues:
            # One source missing in several steps is reported once per step.
            raise SourceBindingError(issues)
        return bound

    def _from_policy(
        self,
        name: str,
        options: SourceOptions,
        target: SourceFunction | None,
        bound: dict[str, SourceRuntime],
    ) -> tuple[str, str] | None:
        """Make a source the policy declares in full; returns a problem and its fix, if any."""
        if target is not None:
            return (
                f"source {name!r} is declared with redis: in the policy and also bound in code",
                "bind nothing under this name: connection settings belong in the policy",
            )
        try:
            bound[name] = SourceRuntime.from_policy(name, options, self._clock, self._events)
        except (ValueError, ImportError) as exc:
            return (
                f"source {name!r} could not be made: {exc}",
                "check sources.<name>.redis, its environment variables, and that the "
                "redis extra is installed",
            )
        return None

    def _compile(self, policy: Policy, bound: dict[str, SourceRuntime]) -> _Plan:
        kinds = {spec.step_id: spec.type.kind for spec in policy.steps()}

        def build(spec: Any) -> Any:
            context = BuildContext(
                policy=policy.name,
                step_id=spec.step_id,
                steps=kinds,
                clock=self._clock,
                events=self._events,
                sources=bound,
                shared=self._shared,
            )
            try:
                step = spec.type(spec.params, context)
            except Exception as exc:
                raise PolicyValidationError(
                    [
                        PolicyIssue(
                            self.policies.file,
                            spec.line,
                            spec.column,
                            spec.path,
                            f"step {spec.step_id!r} could not be built: "
                            f"{type(exc).__name__}: {exc}",
                            f"check its parameters, or report it to the plugin "
                            f"{self.policies.plugins.origin(spec.type.name)!r}",
                        )
                    ]
                ) from exc
            if isinstance(step, Tier):
                requested = context.requested
                step.awaits = step.awaits or any(source.awaits for source in requested)
                step.async_only = step.async_only or any(s.is_async for s in requested)
            self._steps.append(step)
            return step

        return _Plan(
            policy,
            tuple(build(s) for s in policy.guards),
            tuple(build(s) for s in policy.chain),
            tuple(build(s) for s in policy.post),
        )

    def _start_fleet(self) -> None:
        shared = [
            (runtime.breaker, runtime.breaker.options.fleet)
            for runtime in self._sources.values()
            if runtime.breaker is not None and runtime.breaker.options.fleet is not None
        ]
        if not shared:
            return
        try:
            self._fleet = FleetSync(shared, self._clock.wall, self._events).start()
        except (ValueError, ImportError) as exc:
            self._release()
            raise PolicyValidationError(
                [
                    PolicyIssue(
                        self.policies.file,
                        0,
                        0,
                        "sources.*.breaker.fleet",
                        f"the fleet's Redis could not be set up: {exc}",
                        "check breaker.fleet url/url_env and that the redis extra is installed",
                    )
                ]
            ) from exc

    @property
    def fleet(self) -> FleetSync | None:
        """The background exchange of fleet breakers, if any breaker declares ``fleet:``."""
        return self._fleet

    def _verify(self) -> None:
        issues: list[PolicyIssue] = []
        for policy in self.policies.policies.values():
            plan = self._plans[policy.name]
            for spec, step in zip(
                policy.steps(), plan.guards + plan.tiers + plan.post, strict=True
            ):
                problem = step.verify()
                if problem:
                    issues.append(
                        PolicyIssue(self.policies.file, spec.line, spec.column, spec.path, problem)
                    )
        if issues:
            raise PolicyValidationError(issues)

    # --- the per-request path -------------------------------------------------------------------

    def decide(self, request: RequestContext) -> Decision:
        """Decide how to personalize ``request``. Never raises.

        Async tiers cannot run here; they are recorded as ``error`` and the chain goes on.
        """
        try:
            start = self._now()
            plan = self._plans.get(request.policy or self._default or "")
            if plan is None or self._closed:
                return self._no_plan(request, start, plan)
            deadline, records, tiers, reason = self._begin(plan, request, start)
            now = self._now
            served: Tier | None = None
            signals: Signals | None = None
            for tier in tiers:
                t0 = now()
                timeout = _slot(tier, deadline - t0)
                if timeout is None:
                    records.append(StepRecord(tier.step_id, _SKIPPED, 0))
                    continue
                if tier.async_only:
                    records.append(StepRecord(tier.step_id, _ERROR, 0, "async tier in decide()"))
                    continue
                outcome, detail, result, elapsed = _run_sync(tier, request, timeout, t0, now)
                records.append(StepRecord(tier.step_id, outcome, int(elapsed * 1e6 + 0.5), detail))
                if outcome is _OK:
                    served, signals = tier, result
                    break
            return self._finish(plan, request, start, deadline, records, reason, served, signals)
        except Exception as exc:  # the engine's own bug: still answer
            return self._internal_error(request, exc)

    async def adecide(self, request: RequestContext) -> Decision:
        """The asyncio form of :meth:`decide`. Never raises, except to propagate the caller's
        own cancellation.

        Async tiers are awaited under their deadline and cancelled when it passes; sync tiers are
        called directly, with no thread hop.
        """
        try:
            start = self._now()
            plan = self._plans.get(request.policy or self._default or "")
            if plan is None or self._closed:
                return self._no_plan(request, start, plan)
            deadline, records, tiers, reason = self._begin(plan, request, start)
            now = self._now
            served: Tier | None = None
            signals: Signals | None = None
            for tier in tiers:
                t0 = now()
                timeout = _slot(tier, deadline - t0)
                if timeout is None:
                    records.append(StepRecord(tier.step_id, _SKIPPED, 0))
                    continue
                if tier.awaits:
                    when = asyncio.get_running_loop().time() + timeout
                    cutoff = asyncio.timeout_at(when)
                    marker = STEP_DEADLINE.set(when)  # sources tell a cut from a cancel by it
                    try:
                        async with cutoff:
                            result = await tier.arun(request, timeout)
                    except (Exception, asyncio.CancelledError) as exc:
                        STEP_DEADLINE.reset(marker)
                        self._propagate_cancellation(plan, request, start, records)
                        if cutoff.expired():
                            outcome, detail = _TIMEOUT, "cancelled at deadline"
                        else:
                            outcome, detail = _failure(exc)
                    else:
                        STEP_DEADLINE.reset(marker)
                        self._propagate_cancellation(plan, request, start, records)
                        outcome, detail = _classify(result, now() - t0, timeout)
                else:
                    outcome, detail, result, _ = _run_sync(tier, request, timeout, t0, now)
                records.append(
                    StepRecord(tier.step_id, outcome, int((now() - t0) * 1e6 + 0.5), detail)
                )
                if outcome is _OK:
                    served, signals = tier, result
                    break
            return self._finish(plan, request, start, deadline, records, reason, served, signals)
        except Exception as exc:
            return self._internal_error(request, exc)

    def _propagate_cancellation(
        self, plan: _Plan, request: RequestContext, start: float, records: list[StepRecord]
    ) -> None:
        """Re-raise the caller's cancellation if a step swallowed or converted it.

        ``asyncio.timeout`` uncancels what it cancelled itself, so anything left pending here is
        the caller's: it must win over any outcome. Observers still hear of the decision (reason
        ``cancelled``), so that nothing they hold for it, such as a probe, is lost.
        """
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            if plan.observers:
                trace = Trace(
                    plan.name,
                    plan.version,
                    request.request_id,
                    "",
                    Reason.CANCELLED,
                    tuple(records),
                    0,
                    int((self._now() - start) * 1e6 + 0.5),
                )
                for observe in plan.observers:
                    try:
                        observe(trace)
                    except Exception as exc:
                        self._observer_failed(plan, exc)
            raise asyncio.CancelledError

    def _begin(
        self, plan: _Plan, request: RequestContext, start: float
    ) -> tuple[float, list[StepRecord], tuple[Tier, ...], Reason | None]:
        """Set the deadline and run the guards; returns the tiers the chain may try."""
        budget = plan.budget
        time_left = request.time_left
        if time_left is not None and not time_left >= budget:  # NaN counts as nothing left
            budget = time_left if time_left > 0.0 else 0.0
        deadline = start + budget
        records: list[StepRecord] = []
        if not plan.guards:
            return deadline, records, plan.tiers, None
        now = self._now
        for guard in plan.guards:
            t0 = now()
            if t0 >= deadline:
                records.append(StepRecord(guard.step_id, _SKIPPED, 0))
                continue
            try:
                verdict = guard.check(request)
            except Exception as exc:
                records.append(
                    StepRecord(
                        guard.step_id, _ERROR, int((now() - t0) * 1e6 + 0.5), type(exc).__name__
                    )
                )
                continue
            elapsed = int((now() - t0) * 1e6 + 0.5)
            if verdict is None:
                records.append(StepRecord(guard.step_id, _OK, elapsed))
            else:
                records.append(StepRecord(guard.step_id, _DISABLED, elapsed, str(verdict)))
                return deadline, records, plan.terminal, Reason.GUARD
        return deadline, records, plan.tiers, None

    def _finish(
        self,
        plan: _Plan,
        request: RequestContext,
        start: float,
        deadline: float,
        records: list[StepRecord],
        reason: Reason | None,
        served: Tier | None,
        signals: Signals | None,
    ) -> Decision:
        """Run the post steps, then build the decision and its trace."""
        if served is None or served.terminal:
            signals = None
        if reason is None:
            if served is plan.tiers[0]:
                reason = Reason.PRIMARY
            elif any(r.outcome is _SKIPPED for r in records):
                reason = Reason.BUDGET
            else:
                reason = Reason.FALLBACK
        candidates = request.candidates
        if plan.post:
            candidates = self._post(plan, request, signals, candidates, deadline, records)
        now = self._now()
        draw = self._random() if self._draws else 1.0  # one draw samples events and lists
        served_id = served.step_id if served is not None else ""
        sampled = draw < self._monitor_rate
        trace = Trace(
            plan.name,
            plan.version,
            request.request_id,
            served_id,
            reason,
            tuple(records),
            int((deadline - start) * 1e6 + 0.5),
            int((now - start) * 1e6 + 0.5),
            sampled,
        )
        for observe in plan.observers:
            try:
                observe(trace)
            except Exception as exc:  # an observer's bug must not cost the answer
                self._observer_failed(plan, exc)
        if sampled:
            self.monitor.measure(plan.name, served_id, candidates, request.candidates)
        if draw < self._sample_rate:
            self._emit_decision(trace)
        return Decision(signals, candidates, trace)

    def _observer_failed(self, plan: _Plan, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            self._events.emit(
                ENGINE_INTERNAL_ERROR,
                policy=plan.name,
                error=f"observer failed: {type(exc).__name__}: {exc}",
            )

    def _post(
        self,
        plan: _Plan,
        request: RequestContext,
        signals: Signals | None,
        candidates: Sequence[Candidate],
        deadline: float,
        records: list[StepRecord],
    ) -> Sequence[Candidate]:
        now = self._now
        for step in plan.post:
            t0 = now()
            if t0 >= deadline:
                records.append(StepRecord(step.step_id, _SKIPPED, 0))
                continue
            try:
                result = step.apply(request, signals, candidates)
            except Exception as exc:
                records.append(
                    StepRecord(
                        step.step_id, _ERROR, int((now() - t0) * 1e6 + 0.5), type(exc).__name__
                    )
                )
                continue
            t1 = now()
            elapsed = int((t1 - t0) * 1e6 + 0.5)
            if t1 > deadline:
                records.append(StepRecord(step.step_id, _TIMEOUT, elapsed, "result discarded"))
            elif type(result) not in (list, tuple) or not all(type(c) is Candidate for c in result):
                records.append(
                    StepRecord(step.step_id, _GARBAGE, elapsed, f"returned {type(result).__name__}")
                )
            else:
                records.append(StepRecord(step.step_id, _OK, elapsed))
                candidates = result
        return candidates

    # --- the rare paths -------------------------------------------------------------------------

    def _no_plan(self, request: RequestContext, start: float, plan: _Plan | None) -> Decision:
        reason = Reason.CLOSED if self._closed else Reason.UNKNOWN_POLICY
        name = request.policy or self._default or ""
        trace = Trace(
            name,
            plan.version if plan is not None else "",
            request.request_id,
            "",
            reason,
            (),
            0,
            int((self._now() - start) * 1e6 + 0.5),
        )
        return Decision(None, request.candidates, trace)

    def _internal_error(self, request: object, exc: Exception) -> Decision:
        # The request itself may be what is broken: read it defensively.
        name = getattr(request, "policy", None) or self._default or ""
        if not isinstance(name, str):
            name = repr(name)
        with contextlib.suppress(Exception):  # a broken sink must not turn a bug into a crash
            self._events.emit(
                ENGINE_INTERNAL_ERROR, policy=name, error=f"{type(exc).__name__}: {exc}"
            )
        plan = self._plans.get(name)
        candidates = getattr(request, "candidates", ())
        trace = Trace(
            name,
            plan.version if plan is not None else "",
            str(getattr(request, "request_id", "")),
            "",
            Reason.INTERNAL_ERROR,
            (),
            0,
            0,
        )
        return Decision(None, candidates if isinstance(candidates, list | tuple) else (), trace)

    def _emit_decision(self, trace: Trace) -> None:
        with contextlib.suppress(Exception):
            self._events.emit(
                DECISION,
                policy=trace.policy,
                config_version=trace.config_version,
                served=trace.served,
                reason=trace.reason.value,
                used_us=trace.used_us,
                budget_us=trace.budget_us,
                steps={r.step: r.outcome.value for r in trace.steps},
            )

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def policy_names(self) -> list[str]:
        """The names of the compiled policies."""
        return list(self._plans)

    def record_click(self, trace: Trace) -> None:
        """Report a click on the list a decision served, for CTR beside diversity.

        Only clicks on sampled decisions (``trace.sampled``) count, so that CTR and the
        diversity figures describe the same lists; nothing is kept per request.
        """
        if trace.sampled:
            self.monitor.record_click(trace.policy, trace.served)

    def breaker(self, source: str) -> CircuitBreaker:
        """The circuit breaker of ``source``, for operators (``force_open()``, ``snapshot()``).

        Raises:
            PolicyError: the source has no breaker declared, or no such source is bound.
        """
        runtime = self._sources.get(source)
        if runtime is None or runtime.breaker is None:
            with_breakers = sorted(n for n, r in self._sources.items() if r.breaker is not None)
            raise PolicyError(
                f"source {source!r} has no breaker (sources with one: {with_breakers or 'none'})"
            )
        return runtime.breaker

    def source_stats(self) -> dict[str, dict[str, object]]:
        """Per source: its breaker's snapshot and its bulkhead's counters, where declared."""
        stats: dict[str, dict[str, object]] = {}
        for name, runtime in self._sources.items():
            entry: dict[str, object] = {"isolation": runtime.options.isolation}
            if runtime.breaker is not None:
                entry["breaker"] = runtime.breaker.snapshot()._asdict()
            if runtime.bulkhead is not None:
                entry["bulkhead"] = runtime.bulkhead.stats._asdict()
            stats[name] = entry
        return stats

    def config_version(self, policy: str | None = None) -> str:
        """The config version of ``policy`` (the default policy if ``None``)."""
        name = policy or self._default
        if name is None or name not in self._plans:
            raise PolicyError(f"no policy named {name!r}")
        return self._plans[name].version

    def close(self) -> None:
        """Release what the engine holds (its steps and their shared state). Idempotent.

        Decisions after ``close()`` answer un-personalized with reason ``closed``. Sources bound
        in code are the caller's and are not closed; sources the engine made from the policy
        (Redis) are, and the fleet exchange stops.
        """
        if self._closed:
            return
        self._closed = True
        self._release()
        self._events.emit(ENGINE_CLOSED, policies=list(self._plans))

    async def aclose(self) -> None:
        """The asyncio form of :meth:`close`; also closes the asyncio connections of sources the
        engine made itself (Redis)."""
        if self._closed:
            return
        for runtime in self._sources.values():
            with contextlib.suppress(Exception):
                await runtime.aclose()
        self.close()

    def _release(self) -> None:
        fleet = getattr(self, "_fleet", None)
        if fleet is not None:
            fleet.stop()
        for step in self._steps:
            with contextlib.suppress(Exception):
                step.close()
        for runtime in getattr(self, "_sources", {}).values():
            with contextlib.suppress(Exception):
                runtime.close()
        for obj in self._shared.values():
            closer = getattr(obj, "close", None)
            if callable(closer):
                with contextlib.suppress(Exception):
                    closer()
        self._shared.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
