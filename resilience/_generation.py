"""One build of an engine: a policy set compiled into step objects, with what they hold.

An engine runs one generation at a time. A reload builds the next generation beside the running
one, all or nothing; only when every step is built and verified does the engine switch to it. The
new generation takes over from the old one what is unchanged, so that a reload does not reset
what the engine has learnt:

- a source whose declaration under ``sources:`` (and whose binding in code) is unchanged is the
  same object: its breaker, bulkhead, retry state and connections carry over;
- an object steps share through :meth:`BuildContext.shared <resilience.BuildContext.shared>` is
  handed over when a new step asks for it under the same key (its ``renew()`` is called first,
  if it has one, to forget the old build's wiring, and its ``settle()`` once the new build
  runs, to apply what the new steps declared: a refused build changes nothing of it). The
  built-ins key their state so that a stale cache carries over while its name is used, and an
  ``error_rate`` guard's window while its policy, id and parameters are unchanged;
- every step object is built anew, from the new parameters and the new neighbours.

What the old generation alone held is closed when it retires, after requests in flight on it
have had time to finish. Nothing here runs per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ._clock import Clock
from ._errors import PolicyIssue, PolicyValidationError, SourceBindingError
from ._fleet import FleetSync
from ._isolation import StepBulkhead
from ._policy import Policy, PolicySet, StepSpec
from ._sources import SourceFunction, SourceOptions, SourceRuntime
from ._steps import BuildContext, Guard, PostStep, Step, Tier, source_fields
from .events import EventSink

__all__ = ["Compiled", "Generation"]


class Compiled:
    """One policy's steps, built, in declaration order (before any flag is applied)."""

    __slots__ = ("guards", "layouts", "policy", "post", "tiers")

    def __init__(
        self,
        policy: Policy,
        guards: tuple[Guard, ...],
        tiers: tuple[Tier, ...],
        post: tuple[PostStep, ...],
    ) -> None:
        self.policy = policy
        self.guards = guards
        self.tiers = tiers
        self.post = post
        #: where the plans of this policy count their decisions, per shadow mode (the engine's)
        self.layouts: dict[bool, Any] = {}


class Generation:
    """The step objects, sources and shared state built from one policy set.

    Args:
        policies: the validated policy set.
        bindings: the source functions the embedding code bound, by name.
        clock: the engine's clocks.
        events: the engine's event sink.
        previous: the running generation, whose unchanged parts this one takes over.

    Raises:
        SourceBindingError: a policy names a source that is not bound.
        PolicyValidationError: a step could not be built or verified, or the fleet's Redis
            could not be set up. Whatever this build made is released first.
    """

    def __init__(
        self,
        policies: PolicySet,
        bindings: Mapping[str, SourceFunction],
        clock: Clock,
        events: EventSink,
        previous: Generation | None = None,
    ) -> None:
        self.policies = policies
        self.sources: dict[str, SourceRuntime] = {}
        self.shared: dict[object, Any] = {}
        self.steps: list[Step] = []
        self.compiled: dict[str, Compiled] = {}
        self.fleet: FleetSync | None = None
        self._clock = clock
        self._events = events
        self._bindings = bindings
        try:
            self._bind(bindings, previous.sources if previous is not None else {})
            inherited = previous.shared if previous is not None else {}
            for policy in policies.policies.values():
                self.compiled[policy.name] = self._compile(policy, inherited)
            self._verify()
            self._start_fleet(previous)
        except BaseException:
            self.release_new(previous)
            raise

    # --- building -------------------------------------------------------------------------------

    def _bind(
        self, bindings: Mapping[str, SourceFunction], previous: Mapping[str, SourceRuntime]
    ) -> None:
        """Bind every source the policies read, taking over the unchanged ones."""
        policies = self.policies
        issues: list[PolicyIssue] = []
        bound = self.sources
        for policy in policies.policies.values():
            for spec in policy.steps():
                for field_name, source in source_fields(spec.params):
                    if source in bound:
                        continue
                    options = policies.source_options(source)
                    target = bindings.get(source)
                    kept = previous.get(source)
                    if (
                        kept is not None
                        and kept.options == options
                        and (kept.target is target or (kept.owned and target is None))
                    ):
                        bound[source] = kept
                        continue
                    problem = self._make_source(source, options, target)
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
        if issues:
            # One source missing in several steps is reported once per step.
            raise SourceBindingError(issues)

    def _make_source(
        self, name: str, options: SourceOptions, target: SourceFunction | None
    ) -> tuple[str, str] | None:
        """Make source ``name``; returns a problem and its fix, if any."""
        if options.redis is not None:
            if target is not None:
                return (
                    f"source {name!r} is declared with redis: in the policy and also bound in code",
                    "bind nothing under this name: connection settings belong in the policy",
                )
            try:
                self.sources[name] = SourceRuntime.from_policy(
                    name, options, self._clock, self._events
                )
            except (ValueError, ImportError) as exc:
                return (
                    f"source {name!r} could not be made: {exc}",
                    "check sources.<name>.redis, its environment variables, and that the "
                    "redis extra is installed",
                )
            return None
        if target is None:
            known = ", ".join(sorted(self._bindings)) or "none"
            return (
                f"source {name!r} is not bound",
                f"pass sources={{{name!r}: ...}} when building the engine (bound: {known})",
            )
        try:
            self.sources[name] = SourceRuntime(name, target, options, self._clock, self._events)
        except TypeError as exc:
            return str(exc), "bind a callable"
        return None

    def _compile(self, policy: Policy, inherited: Mapping[object, Any]) -> Compiled:
        kinds = {spec.step_id: spec.type.kind for spec in policy.steps()}

        def build(spec: StepSpec) -> Any:
            context = BuildContext(
                policy=policy.name,
                step_id=spec.step_id,
                steps=kinds,
                clock=self._clock,
                events=self._events,
                sources=self.sources,
                shared=self.shared,
                inherited=inherited,
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
                            f"{self._plugin_of(spec)!r}",
                        )
                    ]
                ) from exc
            self.steps.append(step)  # released with the generation, even if refused below
            if isinstance(step, Tier):
                requested = context.requested
                step.awaits = step.awaits or any(source.awaits for source in requested)
                step.async_only = step.async_only or any(s.is_async for s in requested)
            if spec.isolation.bulkhead:
                self._isolate(policy, spec, step)
            return step

        return Compiled(
            policy,
            tuple(build(s) for s in policy.guards),
            tuple(build(s) for s in policy.chain),
            tuple(build(s) for s in policy.post),
        )

    def _plugin_of(self, spec: StepSpec) -> str:
        return self.policies.plugins.origin(spec.type.name)

    def _isolate(self, policy: Policy, spec: StepSpec, step: Step) -> None:
        """Give ``step`` the bulkhead its ``isolation:`` declares."""
        if isinstance(step, Tier) and step.async_only:
            raise PolicyValidationError(
                [
                    PolicyIssue(
                        self.policies.file,
                        spec.line,
                        spec.column,
                        f"{spec.path}.isolation",
                        f"tier {spec.step_id!r} reads an async source, which a bulkhead thread "
                        "cannot await (and which asyncio already cuts at the deadline)",
                        "remove 'isolation:' from it",
                    )
                ]
            )
        step.isolated_by = StepBulkhead(
            f"{policy.name}.{spec.step_id}",
            spec.isolation,
            self._events,
            tier=isinstance(step, Tier),
        )
        if isinstance(step, Tier):
            step.awaits = True  # adecide awaits the thread instead of blocking the loop

    def _verify(self) -> None:
        issues: list[PolicyIssue] = []
        for policy in self.policies.policies.values():
            compiled = self.compiled[policy.name]
            built = compiled.guards + compiled.tiers + compiled.post
            for spec, step in zip(policy.steps(), built, strict=True):
                hint = ""
                try:
                    problem: object = step.verify()
                except Exception as exc:
                    problem = f"step {spec.step_id!r} failed its check: {type(exc).__name__}: {exc}"
                    hint = f"report it to the plugin {self._plugin_of(spec)!r}"
                if problem is not None and not isinstance(problem, str):
                    problem = (
                        f"step {spec.step_id!r} answered its check with "
                        f"{type(problem).__name__}, not a message or None"
                    )
                    hint = f"report it to the plugin {self._plugin_of(spec)!r}"
                if problem:
                    issues.append(
                        PolicyIssue(
                            self.policies.file,
                            spec.line,
                            spec.column,
                            spec.path,
                            str(problem),
                            hint,
                        )
                    )
        if issues:
            raise PolicyValidationError(issues)

    def _start_fleet(self, previous: Generation | None) -> None:
        shared = [
            (runtime.breaker, runtime.breaker.options.fleet)
            for runtime in self.sources.values()
            if runtime.breaker is not None and runtime.breaker.options.fleet is not None
        ]
        if not shared:
            return
        if previous is not None and previous.fleet is not None and previous.fleet.serves(shared):
            self.fleet = previous.fleet
            return
        try:
            self.fleet = FleetSync(shared, self._clock.wall, self._events).start()
        except (ValueError, ImportError) as exc:
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

    def settle(self) -> None:
        """This generation is running: shared objects it took over apply what its steps
        declared on them (their ``settle()``, if they have one)."""
        for obj in self.shared.values():
            settle = getattr(obj, "settle", None)
            if callable(settle):
                with contextlib.suppress(Exception):
                    settle()

    # --- releasing ------------------------------------------------------------------------------

    def release_new(self, previous: Generation | None) -> None:
        """Release what this generation made that ``previous`` does not hold: a build that
        failed, or a generation that never ran."""
        self._release(keep=previous)

    def retire(self, successor: Generation | None) -> None:
        """Release what this generation holds that ``successor`` did not take over (all of it
        when ``successor`` is ``None``: the engine closed)."""
        self._release(keep=successor)

    def _release(self, keep: Generation | None) -> None:
        kept_sources = {id(r) for r in keep.sources.values()} if keep is not None else set()
        kept_shared = {id(o) for o in keep.shared.values()} if keep is not None else set()
        kept_fleet = keep.fleet if keep is not None else None
        if self.fleet is not None and self.fleet is not kept_fleet:
            self.fleet.stop()
        for step in self.steps:
            with contextlib.suppress(Exception):
                step.close()
            if step.isolated_by is not None:
                step.isolated_by.close()
        for runtime in self.sources.values():
            if id(runtime) not in kept_sources:
                with contextlib.suppress(Exception):
                    runtime.close()
        for obj in self.shared.values():
            if id(obj) in kept_shared:
                continue
            closer = getattr(obj, "close", None)
            if callable(closer):
                with contextlib.suppress(Exception):
                    closer()

    async def aretire(self, successor: Generation | None) -> None:
        """The asyncio form of :meth:`retire`: also closes the asyncio connections of sources
        the engine made itself."""
        kept = {id(r) for r in successor.sources.values()} if successor is not None else set()
        for runtime in self.sources.values():
            if id(runtime) not in kept:
                with contextlib.suppress(Exception):
                    await runtime.aclose()
        self.retire(successor)
