"""The engine: compiles a policy set once, then runs one decision per request.

This is the only module on the per-request path. Everything it calls per request was built at
compile time: step objects with their sources bound, parameters resolved, timeouts read, flags
applied. There is no hook dispatch, no lookup by step name, no flag read, no logging on the
happy path.

The sync (:meth:`Engine.decide`) and asyncio (:meth:`Engine.adecide`) entry points share the same
core: budget set-up, guards, outcome classification, post steps and the trace are one code path;
the two differ only in how a tier is invoked (a call, or an ``await`` under a deadline).

Live operation changes nothing on that path either: a reload or a flag change builds a new
dictionary of plans and swaps it in with one assignment. A request reads the dictionary once, so
it finishes on the plan it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Self

from ._breaker import CircuitBreaker
from ._bulkhead import BulkheadStats
from ._clock import Clock, SystemClock
from ._diversity import DiversityMonitor
from ._errors import (
    BreakerOpen,
    BulkheadFull,
    GarbageData,
    PluginError,
    PolicyError,
    PolicyIssue,
    PolicyValidationError,
)
from ._exposure import ExposureLog, ExposureSink, JsonLinesSink
from ._flag_feed import FlagFeed
from ._flags import PRECEDENCE, Flags, FlagState, declared_changes, flag_specs, make_feeds
from ._fleet import FleetSync
from ._fork import hold_across_forks
from ._generation import Compiled, Generation
from ._holdout import bucket as holdout_bucket
from ._model import Candidate, RequestContext, Signals
from ._outcomes import Outcome
from ._plugins import PluginHost
from ._policy import (
    Mode,
    Policy,
    PolicySet,
    beside_policy,
    holdout_salts,
    load_policies,
    plugin_settings,
    read_policy_file,
    unreadable,
)
from ._readings import Reading, breaker_readings
from ._sources import STEP_DEADLINE, SourceFunction
from ._stats import DecisionStats, DecisionTotals, Layout
from ._steps import IN_SHADOW, Guard, PostStep, Step, Tier
from ._trace import Decision, Reason, StepRecord, Trace
from ._watch import FileWatch
from .events import (
    DECISION,
    ENGINE_BUILT,
    ENGINE_CLOSED,
    ENGINE_INTERNAL_ERROR,
    EventSink,
    StructlogSink,
    register_event,
)

__all__ = ["UNKNOWN_POLICY", "Engine", "ReloadResult"]

#: The ``policy`` label of decisions that named no running policy (metrics only: the trace
#: keeps the name as asked).
UNKNOWN_POLICY = "unknown"

POLICY_RELOADED = register_event(
    "resilience.policy.reloaded",
    "warning",
    "A new policy set is running; fields: file, version, previous_version, versions, changed "
    "(policies added, changed or removed), kept_sources.",
)
RELOAD_FAILED = register_event(
    "resilience.policy.reload_failed",
    "error",
    "A policy change was refused; the last good policies keep running; fields: file, "
    "running_version, problems (count), errors (the first 20, each 'file:line:col: path: "
    "what (how to fix)').",
)

_OK = Outcome.OK
_MISS = Outcome.MISS
_ERROR = Outcome.ERROR
_TIMEOUT = Outcome.TIMEOUT
_GARBAGE = Outcome.GARBAGE
_SKIPPED = Outcome.SKIPPED_BUDGET
_DISABLED = Outcome.DISABLED
_BREAKER_OPEN = Outcome.BREAKER_OPEN
_REJECTED = Outcome.REJECTED
_SHADOW = Outcome.SHADOW
_HOLDOUT = "holdout"
_TREATMENT = "treatment"

#: Seconds a replaced generation is kept before what it alone held is closed: requests still
#: running on it finish first (a request is bounded by its budget; a sync source that overruns
#: it is what the grace leaves room for).
RETIRE_AFTER = 5.0

#: Seconds close() waits for a reload in progress to finish.
_CLOSE_WAITS_FOR_RELOAD = 30.0


class ReloadResult(NamedTuple):
    """What :meth:`Engine.reload` did.

    Attributes:
        ok: the new policies are running.
        version: the version of the policy set running now (the old one when ``ok`` is false).
        versions: policy name -> config version, of what is running now.
        changed: the policies added, changed or removed (empty when refused or identical).
        issues: why the change was refused, each with its place in the file.
    """

    ok: bool
    version: str
    versions: dict[str, str]
    changed: tuple[str, ...] = ()
    issues: tuple[PolicyIssue, ...] = ()


class _Plan:
    """One policy as requests run it: its built steps, with the flags of the moment applied.

    Made anew (from existing step objects: cheap) on every flag change and reload.
    """

    __slots__ = (
        "budget",
        "guards",
        "holdout",
        "layout",
        "name",
        "observers",
        "offloads",
        "post",
        "preset",
        "primary",
        "reason",
        "shadow",
        "shadow_guards",
        "terminal",
        "tiers",
        "version",
    )

    def __init__(
        self, compiled: Compiled, flags: Mapping[str, FlagState], stats: DecisionStats
    ) -> None:
        policy = compiled.policy
        self.name = policy.name
        self.version = policy.version
        self.budget = policy.budget
        self.terminal: tuple[Tier, ...] = compiled.tiers[-1:]
        holdout = policy.holdout
        #: (salt, buckets held out), or None: the policy declares no holdout
        self.holdout = (holdout.salt, holdout.buckets_held_out) if holdout is not None else None

        def mode(key: str, declared: Mode) -> tuple[Mode, str]:
            state = flags.get(key)
            if state is None:
                return declared, "policy"
            return state.value, state.source if state.source == "policy" else f"flag:{state.source}"

        policy_mode, _ = mode(policy.name, policy.mode)
        self.shadow = policy_mode is Mode.SHADOW
        preset: list[StepRecord] = []
        guards: list[Guard] = []
        shadow_guards: list[Guard] = []
        tiers: list[Tier] = []
        post: list[tuple[PostStep, bool]] = []
        if policy_mode is Mode.OFF:
            self.reason: Reason | None = Reason.SWITCHED_OFF
            tiers = list(self.terminal)
        else:
            self.reason = None
            terminal = self.terminal[0] if self.terminal else None

            def keep(spec_mode: Mode, step: Step) -> Mode:
                if step is terminal:
                    return Mode.ON
                found, origin = mode(f"{policy.name}.{step.step_id}", spec_mode)
                if found is Mode.OFF:
                    preset.append(StepRecord(step.step_id, Outcome.SWITCHED_OFF, 0, origin))
                return found

            for spec, guard in zip(policy.guards, compiled.guards, strict=True):
                found = keep(spec.mode, guard)
                if found is not Mode.OFF:
                    guards.append(guard)
                    if found is Mode.SHADOW:
                        shadow_guards.append(guard)
            for spec, tier in zip(policy.chain, compiled.tiers, strict=True):
                if keep(spec.mode, tier) is not Mode.OFF:
                    tiers.append(tier)
            for spec, step in zip(policy.post, compiled.post, strict=True):
                found = keep(spec.mode, step)
                if found is not Mode.OFF:
                    post.append((step, found is Mode.SHADOW))
        layout = compiled.layouts.get(self.shadow)
        if layout is None:  # one per policy build and mode: a flag change reuses it
            steps = (*compiled.guards, *compiled.tiers, *compiled.post)
            layout = compiled.layouts[self.shadow] = stats.layout(
                policy.name,
                [step.step_id for step in steps],
                [tier.step_id for tier in compiled.tiers],
                self.shadow,
            )
        self.layout: Layout = layout
        self.preset = tuple(preset)
        self.guards = tuple(guards)
        self.shadow_guards = frozenset(shadow_guards)
        self.tiers = tuple(tiers)
        self.post = tuple(post)
        first = compiled.tiers[0] if compiled.tiers else None
        # The first declared tier; a switched-off one makes every answer a fallback.
        self.primary = first if first in self.tiers else None
        #: A guard or post step runs on a bulkhead: adecide awaits those instead of blocking.
        self.offloads = any(
            step.isolated_by is not None for step in (*self.guards, *(s for s, _ in self.post))
        )
        # Only steps that run and override Step.observe are told of each decision.
        self.observers: tuple[Callable[[Trace], None], ...] = tuple(
            step.observe
            for step in (*self.guards, *self.tiers, *(s for s, _ in self.post))
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


def _read(request: object, attribute: str, default: Any) -> Any:
    """``request.attribute``, or ``default`` when reading it fails in any way."""
    try:
        return getattr(request, attribute, default)
    except Exception:
        return default


def _bug(exc: BaseException) -> str:
    """A bug, named for an event: its type and where it was raised, never its message, which
    may quote request data (a user id in a ``KeyError``)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {os.path.basename(last.filename)}:{last.lineno} in {last.name}"


def _failed(step: Step, exc: BaseException, t0: float, t1: float) -> StepRecord:
    """The record of a guard or post step that raised ``exc``."""
    outcome, detail = _failure(exc)
    return StepRecord(step.step_id, outcome, int((t1 - t0) * 1e6 + 0.5), detail)


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
    bulkhead = tier.isolated_by
    try:
        if bulkhead is None:
            result = tier.run(request, timeout)
        else:
            result = bulkhead.call(tier.run, request, timeout, timeout=timeout)
    except (Exception, asyncio.CancelledError) as exc:
        outcome, detail = _failure(exc)
        return outcome, detail, None, now() - t0
    elapsed = now() - t0
    outcome, detail = _classify(tier, result, elapsed, timeout)
    return outcome, detail, result, elapsed


def _classify(tier: Tier, result: object, elapsed: float, timeout: float) -> tuple[Outcome, str]:
    """The outcome of ``tier``, which returned ``result`` after ``elapsed`` seconds."""
    if elapsed > timeout and not tier.terminal:
        # The terminal tier is never late: it is the answer of last resort, and a thread
        # preempted or a collection run during its call must not leave the request with none.
        return _TIMEOUT, f"returned after {elapsed * 1e3:.1f}ms"
    if result is None:
        return _MISS, ""
    if type(result) is not Signals:
        return _GARBAGE, f"returned {type(result).__name__}"
    return _OK, result.note


def _judge(
    plan: _Plan, guard: Guard, verdict: object, t0: float, t1: float, deadline: float
) -> StepRecord:
    """The record of a guard that answered ``verdict`` between ``t0`` and ``t1``; ``DISABLED``
    switches personalization off for the request."""
    elapsed = int((t1 - t0) * 1e6 + 0.5)
    if t1 > deadline:  # its verdict came too late to be this request's
        return StepRecord(guard.step_id, _TIMEOUT, elapsed, "verdict discarded")
    if verdict is None:
        return StepRecord(guard.step_id, _OK, elapsed)
    if not isinstance(verdict, str) or not verdict:
        # A guard that answers False or 0 means "all is well" by mistake: switching the request
        # off on it would let any buggy guard disable personalization for everyone.
        return StepRecord(guard.step_id, _GARBAGE, elapsed, f"returned {type(verdict).__name__}")
    if guard in plan.shadow_guards:  # would have switched it off: say so, go on
        return StepRecord(guard.step_id, _SHADOW, elapsed, str(verdict))
    return StepRecord(guard.step_id, _DISABLED, elapsed, str(verdict))


def _reranked(
    step: PostStep,
    shadow: bool,
    result: Any,
    t0: float,
    t1: float,
    deadline: float,
    candidates: Sequence[Candidate],
) -> tuple[StepRecord, Sequence[Candidate]]:
    """The record of a post step that returned ``result`` between ``t0`` and ``t1``, and the
    list that stands after it."""
    elapsed = int((t1 - t0) * 1e6 + 0.5)
    if t1 > deadline:
        return StepRecord(step.step_id, _TIMEOUT, elapsed, "result discarded"), candidates
    if (
        type(result) not in (list, tuple)
        # every item exactly a Candidate, counted in C: twice as fast as a generator
        or list(map(type, result)).count(Candidate) != len(result)
    ):
        record = StepRecord(step.step_id, _GARBAGE, elapsed, f"returned {type(result).__name__}")
        return record, candidates
    if shadow:
        return _would_rerank(step.step_id, elapsed, candidates, result), candidates
    return StepRecord(step.step_id, _OK, elapsed), result


class Engine:
    """Runs validated policies on requests. Thread-safe; several engines may share a process.

    Args:
        policies: the validated policy set.
        sources: the source functions the policies name, by name.
        clock: the clocks; :class:`SystemClock` by default.
        events: where events go; structlog (as the application configured it) by default.
        seed: seeds the decision-event sampler, for reproducible runs.
        flag_feeds: flag sources to use instead of those ``settings.flags`` declares (tests,
            or a source of the application's own); ``flags.set()`` works either way.
        retire_after: seconds a generation replaced by a reload is kept before what it alone
            held is closed, so that requests still running on it finish first.
        exposure_sink: where exposure and click records go instead of the JSON Lines file
            ``settings.exposures.path`` names (which must still be declared, for its salt).

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
        flag_feeds: Sequence[FlagFeed] | None = None,
        retire_after: float = RETIRE_AFTER,
        exposure_sink: ExposureSink | None = None,
    ) -> None:
        self.policies = policies
        self._retire_after = retire_after
        self._clock = clock or SystemClock()
        self._now: Callable[[], float] = self._clock.monotonic
        self._events = events or StructlogSink()
        self._bindings = dict(sources or {})
        self._closed = False
        # Every change to plans, flags or the running generation happens under this lock;
        # requests never take it.
        self._lock = threading.RLock()
        # Held by a reload from parse to swap, and by close(): a reload never half-happens
        # around a close. Reentrant, so that close() from inside a reload's thread cannot hang.
        self._reloading = threading.RLock()
        # A fork waits for a reload or a flag change in progress: the child starts consistent.
        hold_across_forks(self, "_reloading", "_lock", rank=0)
        self._retiring: list[tuple[Generation, threading.Timer | None]] = []
        self._watch: FileWatch | None = None
        self._given_feeds = flag_feeds
        # Counted on the request path as plain integers; metrics read them when scraped.
        self._stats = DecisionStats(policies.settings.metrics.duration_buckets)
        self._reloads = {"ok": 0, "refused": 0}
        self._listeners: tuple[Callable[[Trace], None], ...] = ()
        self._failed_listeners: set[int] = set()
        self._generation = Generation(policies, self._bindings, self._clock, self._events)
        self._random = random.Random(seed).random
        #: rolling diversity and CTR aggregates of this engine's served lists
        self.monitor = DiversityMonitor(
            policies.settings.monitoring, self._clock.monotonic, self._clock.wall
        )
        self._settle(policies)
        #: the engine's kill switches and flags: ``flags.set("search", "off", reason=...)``
        self.flags = Flags(
            flag_specs(policies), self._events, self._clock.wall, self._replan, self._lock
        )
        self._plans: dict[str, _Plan] = self._plan(self._generation)
        self._exposure_sink = exposure_sink
        #: the exposure log, when ``settings.exposures`` declares one
        self.exposures: ExposureLog | None = None
        try:
            self.exposures = self._exposure_log(policies)
            self._generation.settle()
            self.flags.start(self._feeds(policies))
        except BaseException:
            self.flags.stop()
            if self.exposures is not None:
                self.exposures.close()
            self._generation.retire(None)
            raise
        self._events.emit(
            ENGINE_BUILT,
            policies=self.policy_names,
            versions={name: plan.version for name, plan in self._plans.items() if name},
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
        watch: bool = False,
        **options: Any,
    ) -> Engine:
        """Validate the file at ``path`` and build an engine from it.

        Args:
            watch: keep watching the file and reload it when it changes (see :meth:`watch`).
        """
        name = os.fspath(path)
        data = read_policy_file(name)
        events = options.get("events")
        engine = cls(
            load_policies(data, file=name, plugins=plugins, events=events), sources, **options
        )
        if watch:
            engine.watch(initial=data)
        return engine

    def _settle(self, policies: PolicySet) -> None:
        """Take the engine-wide settings of ``policies`` (event sampling, metrics, monitoring)."""
        self._sample_rate = policies.settings.events.decision_sample_rate
        self._counting = self._stats if policies.settings.metrics.enabled else None
        monitoring = policies.settings.monitoring
        self._monitor_rate = monitoring.sample_rate
        self._draws = self._sample_rate > 0 or self._monitor_rate > 0
        if monitoring != self.monitor.settings:
            self.monitor = DiversityMonitor(monitoring, self._clock.monotonic, self._clock.wall)

    def _exposure_log(self, policies: PolicySet) -> ExposureLog | None:
        """The exposure log ``settings.exposures`` declares, started.

        Raises:
            PolicyValidationError: its salt or its file cannot be had.
        """
        settings = policies.settings.exposures
        if settings is None:
            return None
        path = beside_policy(policies.file, settings.path)
        try:
            salt = settings.salt()
            sink = self._exposure_sink or JsonLinesSink(path)
        except (ValueError, OSError) as exc:
            raise PolicyValidationError(
                [
                    PolicyIssue(
                        policies.file,
                        0,
                        0,
                        "settings.exposures",
                        f"the exposure log could not be opened: {exc}",
                        "check settings.exposures.path and its salt",
                    )
                ]
            ) from exc
        return ExposureLog(
            sink,
            salt,
            settings.capacity,
            self._clock.wall,
            holdout_salts(policies),
            owns_sink=self._exposure_sink is None,
        )

    def _feeds(self, policies: PolicySet) -> list[FlagFeed]:
        if self._given_feeds is not None:
            return list(self._given_feeds)
        return make_feeds(policies.settings.flags, policies.file)

    def _plan(self, generation: Generation) -> dict[str, _Plan]:
        states = {state.key: state for state in self.flags.states()}
        plans = {
            name: _Plan(compiled, states, self._stats)
            for name, compiled in generation.compiled.items()
        }
        default = generation.policies.default_policy
        if default is not None:
            plans[""] = plans[default]  # a request that names no policy: one lookup, no branch
        return plans

    def _replan(self) -> None:
        """Apply the flags of the moment (the flag board calls this, under the lock)."""
        if not self._closed:
            self._plans = self._plan(self._generation)

    # --- live operation -------------------------------------------------------------------------

    def reload(self, text: str | bytes | None = None, *, file: str | None = None) -> ReloadResult:
        """Validate a new policy document and, if it is valid in full, switch to it. Never raises.

        The new policies are built beside the running ones; an invalid document, or one whose
        steps cannot be built, changes nothing (the event ``resilience.policy.reload_failed``
        lists the problems). Requests in flight finish on the plans they started with. What is
        unchanged carries over (see :mod:`resilience._generation`): breakers of unchanged
        sources, caches, the windows of unchanged guards, the flags.

        Args:
            text: the new YAML; by default the engine's policy file is read again.
            file: the name to report problems under (the engine's policy file by default).
        """
        with self._reloading:
            try:
                return self._reload(text, file or self.policies.file)
            except Exception as exc:  # a bug of ours must not cost the running policies
                issue = PolicyIssue(
                    file or self.policies.file,
                    0,
                    0,
                    "",
                    f"the reload failed unexpectedly: {type(exc).__name__}: {exc}",
                    "report it; the running policies are unchanged",
                )
                return self._refused(issue.file, [issue])

    def _reload(self, text: str | bytes | None, file: str) -> ReloadResult:
        if self._closed:
            return self._refused(
                file, [PolicyIssue(file, 0, 0, "", "the engine is closed", "build a new one")]
            )
        if text is None:
            try:
                text = read_policy_file(file)
            except PolicyValidationError as exc:
                return self._refused(file, exc.issues)
        running = self.policies
        try:
            host = running.plugins
            wanted = plugin_settings(text)
            if wanted is not None and wanted != running.settings.plugins:
                # Another allowlist: the file may name step types only a new host resolves.
                host = host.with_allow(wanted.allow)
            policies = load_policies(text, file=file, plugins=host, events=self._events)
        except PolicyValidationError as exc:
            return self._refused(file, exc.issues)
        except PluginError as exc:
            return self._refused(
                file, [PolicyIssue(file, 0, 0, "settings.plugins", str(exc), "fix the plugin")]
            )
        if policies.version == running.version:
            return ReloadResult(True, running.version, self.versions())
        previous = self._generation
        try:
            generation = Generation(policies, self._bindings, self._clock, self._events, previous)
        except PolicyValidationError as exc:  # SourceBindingError included
            return self._refused(file, exc.issues)
        feeds_changed = (
            self._given_feeds is None and policies.settings.flags != running.settings.flags
        )
        changed_sources = declared_changes(running.settings.flags, policies.settings.flags)
        try:
            feeds = (
                make_feeds(policies.settings.flags, policies.file, only=changed_sources)
                if feeds_changed
                else []
            )
        except PolicyValidationError as exc:
            generation.release_new(previous)
            return self._refused(file, exc.issues)
        new_log: ExposureLog | None = None
        if policies.settings.exposures != running.settings.exposures:
            try:
                new_log = self._exposure_log(policies)
            except PolicyValidationError as exc:
                generation.release_new(previous)
                return self._refused(file, exc.issues)
        with self._lock:
            if self._closed:
                if new_log is not None:
                    new_log.close()
                generation.release_new(previous)
                return self._refused(
                    file, [PolicyIssue(file, 0, 0, "", "the engine is closed", "build a new one")]
                )
            self.policies = policies
            self._generation = generation
            self._settle(policies)
            self.flags.respec(flag_specs(policies))
            self._plans = self._plan(generation)
        generation.settle()
        self._reload_exposures(new_log, policies)
        if feeds_changed:
            # Sources whose declaration did not change go on running; removed ones stop.
            self.flags.replace(feeds, keep=set(PRECEDENCE) - changed_sources)
        self._retire(previous, generation)
        if self._closed:  # close() gave up waiting for this reload: release what it started
            self.flags.stop()
            self._shut_retiring()
        changed = tuple(
            sorted(
                name
                for name in {*running.policies, *policies.policies}
                if (running.policies.get(name) or _NO_POLICY).version
                != (policies.policies.get(name) or _NO_POLICY).version
            )
        )
        kept = sorted(
            name
            for name, runtime in generation.sources.items()
            if previous.sources.get(name) is runtime
        )
        with self._lock:
            self._reloads["ok"] += 1
        self._emit(
            POLICY_RELOADED,
            file=file,
            version=policies.version,
            previous_version=running.version,
            versions=self.versions(),
            changed=list(changed),
            kept_sources=kept,
        )
        return ReloadResult(True, policies.version, self.versions(), changed)

    def _reload_exposures(self, new_log: ExposureLog | None, policies: PolicySet) -> None:
        """Follow a reload: a new log if ``settings.exposures`` changed (the old one writes
        what it has queued, then closes), else the holdout salts of the new policies."""
        old = self.exposures
        if new_log is not None or policies.settings.exposures is None:
            self.exposures = new_log
            if old is not None and old is not new_log:
                old.close()
            return
        if old is not None:
            old.holdouts = holdout_salts(policies)

    def _refused(self, file: str, issues: Sequence[PolicyIssue]) -> ReloadResult:
        with self._lock:
            self._reloads["refused"] += 1
        self._emit(
            RELOAD_FAILED,
            file=file,
            running_version=self.policies.version,
            problems=len(issues),
            errors=[str(issue) for issue in issues[:20]],
        )
        return ReloadResult(False, self.policies.version, self.versions(), (), tuple(issues))

    def _retire(self, old: Generation, successor: Generation) -> None:
        """Close what only ``old`` held, once requests still running on it have finished."""
        timer = threading.Timer(self._retire_after, self._retired, (old, successor))
        timer.daemon = True
        with self._lock:
            self._retiring.append((old, timer))
        timer.start()

    def _retired(self, old: Generation, successor: Generation) -> None:
        with self._lock:
            self._retiring = [(g, t) for g, t in self._retiring if g is not old]
        # What the successor took over stays; the successor may itself have been replaced
        # since, but it keeps what it took until its own retirement.
        old.retire(successor)
        self._stats.retire(
            layout for compiled in old.compiled.values() for layout in compiled.layouts.values()
        )

    def watch(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        initial: bytes | None = None,
        debounce: float = 0.05,
        poll_every: float | None = 5.0,
    ) -> None:
        """Reload the policy file whenever it changes, until :meth:`close`.

        Uses the operating system's file events (inotify on Linux) on the file's directory, so
        in-place writes, atomic renames and the symlink swap of a Kubernetes ConfigMap are all
        seen; every ``poll_every`` seconds the file is also compared by content, in case an
        event was missed. Each change goes through :meth:`reload`: an invalid one is refused
        (``resilience.policy.reload_failed``) and the watch goes on.

        Args:
            path: the file; the one the engine was built from by default.
            initial: the bytes the running policies were read from, so that a change made
                before the watch started is not missed (:meth:`from_file` passes them).
            debounce: seconds to wait after an event for the writes that follow it.
            poll_every: seconds between content checks; ``None`` for events only.

        Raises:
            PolicyError: the engine is closed, or already watching.
        """
        with self._lock:
            if self._closed:
                raise PolicyError("the engine is closed")
            if self._watch is not None:
                raise PolicyError("the engine is already watching its policy file")
            name = os.fspath(path) if path is not None else self.policies.file
            if path is None and not os.path.isfile(name):
                raise PolicyError(
                    f"the engine was not built from a file ({name!r}): pass the path to watch"
                )

            def changed(data: bytes) -> None:
                self.reload(data, file=name)

            def unreadable_file(exc: OSError) -> None:
                hint = "check the path, its mount and permissions; the watch goes on"
                self._refused(name, [unreadable(name, exc, hint)])

            self._watch = FileWatch(
                name,
                changed,
                on_error=unreadable_file,
                debounce=debounce,
                poll_every=poll_every,
                name="resilience-policy",
            ).start(initial)

    def versions(self) -> dict[str, str]:
        """Policy name -> the config version running now."""
        return {name: plan.version for name, plan in self._plans.items() if name}

    # --- the per-request path -------------------------------------------------------------------

    def decide(self, request: RequestContext) -> Decision:
        """Decide how to personalize ``request``. Never raises.

        Async tiers cannot run here; they are recorded as ``error`` and the chain goes on.
        """
        try:
            start = self._now()
            plan = self._plans.get(request.policy or "")
            if plan is None or self._closed:
                return self._no_plan(request, start, plan)
            # Set before the guards: every step of a policy in shadow runs knowing it.
            shadowing = IN_SHADOW.set(True) if plan.shadow else None
            try:
                deadline, records, tiers, reason, group = self._begin(plan, request, start)
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
                        records.append(
                            StepRecord(tier.step_id, _ERROR, 0, "async tier in decide()")
                        )
                        continue
                    outcome, detail, result, elapsed = _run_sync(tier, request, timeout, t0, now)
                    records.append(
                        StepRecord(tier.step_id, outcome, int(elapsed * 1e6 + 0.5), detail)
                    )
                    if outcome is _OK:
                        served, signals = tier, result
                        break
                return self._finish(
                    plan, request, start, deadline, records, reason, served, signals, group
                )
            finally:
                if shadowing is not None:
                    IN_SHADOW.reset(shadowing)
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
            plan = self._plans.get(request.policy or "")
            if plan is None or self._closed:
                return self._no_plan(request, start, plan)
            shadowing = IN_SHADOW.set(True) if plan.shadow else None
            try:
                offloads = plan.offloads
                deadline, records, tiers, reason, group = self._begin(
                    plan, request, start, guards=not offloads
                )
                if offloads and reason is None and plan.guards:
                    tiers, reason = await self._aguards(plan, request, deadline, records)
                now = self._now
                served: Tier | None = None
                signals: Signals | None = None
                task: asyncio.Task[Any] | None = None  # looked up once, at the first await
                for tier in tiers:
                    t0 = now()
                    timeout = _slot(tier, deadline - t0)
                    if timeout is None:
                        records.append(StepRecord(tier.step_id, _SKIPPED, 0))
                        continue
                    if tier.awaits:
                        if task is None:
                            task = asyncio.current_task()
                        when = asyncio.get_running_loop().time() + timeout
                        cutoff = asyncio.timeout_at(when)
                        marker = STEP_DEADLINE.set(when)  # sources tell a cut from a cancel by it
                        bulkhead = tier.isolated_by
                        try:
                            async with cutoff:
                                if bulkhead is None:
                                    result = await tier.arun(request, timeout)
                                else:
                                    result = await bulkhead.acall(tier.run, request, timeout)
                        except (Exception, asyncio.CancelledError) as exc:
                            STEP_DEADLINE.reset(marker)
                            if task is not None and task.cancelling():
                                self._raise_cancelled(plan, request, start, records)
                            if cutoff.expired():
                                outcome, detail = _TIMEOUT, "cancelled at deadline"
                            else:
                                outcome, detail = _failure(exc)
                        else:
                            STEP_DEADLINE.reset(marker)
                            if task is not None and task.cancelling():
                                self._raise_cancelled(plan, request, start, records)
                            outcome, detail = _classify(tier, result, now() - t0, timeout)
                    else:
                        outcome, detail, result, _ = _run_sync(tier, request, timeout, t0, now)
                    records.append(
                        StepRecord(tier.step_id, outcome, int((now() - t0) * 1e6 + 0.5), detail)
                    )
                    if outcome is _OK:
                        served, signals = tier, result
                        break
                reranked = (
                    await self._apost(plan, request, served, signals, deadline, records)
                    if offloads and plan.post
                    else None
                )
                return self._finish(
                    plan,
                    request,
                    start,
                    deadline,
                    records,
                    reason,
                    served,
                    signals,
                    group,
                    reranked,
                )
            finally:
                if shadowing is not None:
                    IN_SHADOW.reset(shadowing)
        except Exception as exc:
            return self._internal_error(request, exc)

    def _raise_cancelled(
        self, plan: _Plan, request: RequestContext, start: float, records: list[StepRecord]
    ) -> None:
        """Re-raise the caller's cancellation, called when a step swallowed or converted it
        (the task is still ``cancelling()`` after the step).

        ``asyncio.timeout`` uncancels what it cancelled itself, so anything left pending here is
        the caller's: it must win over any outcome. Observers still hear of the decision (reason
        ``cancelled``), so that nothing they hold for it, such as a probe, is lost.
        """
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
        self, plan: _Plan, request: RequestContext, start: float, guards: bool = True
    ) -> tuple[float, list[StepRecord], tuple[Tier, ...], Reason | None, str]:
        """Set the deadline, place the user in the holdout or not, and run the guards (unless
        ``guards`` is false: adecide awaits them); returns the tiers the chain may try and the
        user's holdout group."""
        budget = plan.budget
        time_left = request.time_left
        if time_left is not None and not time_left >= budget:  # NaN counts as nothing left
            budget = time_left if time_left > 0.0 else 0.0
        deadline = start + budget
        group = ""
        if plan.holdout is not None and request.user_id:
            # Before every guard and switch: the group is the user's whatever else happens to
            # the request (intention to treat), and the holdout gets the terminal tier alone.
            salt, held_out = plan.holdout
            if holdout_bucket(salt, request.user_id) < held_out:
                return deadline, [], plan.terminal, Reason.HOLDOUT, _HOLDOUT
            group = _TREATMENT
        records: list[StepRecord] = list(plan.preset) if plan.preset else []
        if not plan.guards or not guards:
            return deadline, records, plan.tiers, plan.reason, group
        now = self._now
        for guard in plan.guards:
            t0 = now()
            if t0 >= deadline:
                records.append(StepRecord(guard.step_id, _SKIPPED, 0))
                continue
            bulkhead = guard.isolated_by
            try:
                if bulkhead is None:
                    verdict = guard.check(request)
                else:
                    wait = min(bulkhead.wait, deadline - t0)
                    verdict = bulkhead.call(guard.check, request, timeout=wait)
            except Exception as exc:
                records.append(_failed(guard, exc, t0, now()))
                continue
            record = _judge(plan, guard, verdict, t0, now(), deadline)
            records.append(record)
            if record.outcome is _DISABLED:
                return deadline, records, plan.terminal, Reason.GUARD, group
        return deadline, records, plan.tiers, None, group

    async def _aguards(
        self, plan: _Plan, request: RequestContext, deadline: float, records: list[StepRecord]
    ) -> tuple[tuple[Tier, ...], Reason | None]:
        """The guards of a plan that runs some on a bulkhead, from adecide: those are awaited
        under the request's deadline; the others are plain calls, as in :meth:`_begin`."""
        now = self._now
        for guard in plan.guards:
            t0 = now()
            if t0 >= deadline:
                records.append(StepRecord(guard.step_id, _SKIPPED, 0))
                continue
            bulkhead = guard.isolated_by
            try:
                if bulkhead is None:
                    verdict = guard.check(request)
                else:
                    async with asyncio.timeout(min(bulkhead.wait, deadline - t0)):
                        verdict = await bulkhead.acall(guard.check, request)
            except Exception as exc:
                records.append(_failed(guard, exc, t0, now()))
                continue
            record = _judge(plan, guard, verdict, t0, now(), deadline)
            records.append(record)
            if record.outcome is _DISABLED:
                return plan.terminal, Reason.GUARD
        return plan.tiers, None

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
        group: str,
        reranked: Sequence[Candidate] | None = None,
    ) -> Decision:
        """Run the post steps (unless adecide has: ``reranked``), then build the decision and
        its trace."""
        if served is None or served.terminal:
            signals = None
        if reason is None:
            if served is plan.primary:
                reason = Reason.PRIMARY
            elif any(r.outcome is _SKIPPED for r in records):
                reason = Reason.BUDGET
            else:
                reason = Reason.FALLBACK
        candidates = request.candidates
        if reranked is not None:
            candidates = reranked
        elif plan.post:
            candidates = self._post(plan, request, signals, candidates, deadline, records)
        now = self._now()
        draw = self._random() if self._draws else 1.0  # one draw samples events and lists
        served_id = served.step_id if served is not None else ""
        sampled = draw < self._monitor_rate
        shadow = plan.shadow
        if shadow:  # the trace says what the policy would have done; the answer applies none of it
            signals, candidates = None, request.candidates
        exposures = self.exposures
        used_us = int((now - start) * 1e6 + 0.5)
        request_id = request.request_id
        if not request_id and exposures is not None:
            # An exposure must be joinable to its clicks: a request without an id gets one.
            request_id = os.urandom(8).hex()
        trace = Trace(
            plan.name,
            plan.version,
            request_id,
            served_id,
            reason,
            tuple(records),
            int((deadline - start) * 1e6 + 0.5),
            used_us,
            sampled,
            shadow,
            group,
        )
        for observe in plan.observers:
            try:
                observe(trace)
            except Exception as exc:  # an observer's bug must not cost the answer
                self._observer_failed(plan, exc)
        if self._counting is not None:
            self._counting.count(plan.layout, served_id, reason, records, used_us)
        if self._listeners:
            self._tell_listeners(trace)
        if sampled:
            self.monitor.measure(
                plan.name, "" if shadow else served_id, candidates, request.candidates, group
            )
        if draw < self._sample_rate:
            self._emit_decision(trace)
        if exposures is not None:
            exposures.exposure(trace, request.user_id, candidates)
        return Decision(signals, candidates, trace)

    def _observer_failed(self, plan: _Plan, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            self._events.emit(
                ENGINE_INTERNAL_ERROR,
                policy=plan.name,
                error=f"observer failed: {_bug(exc)}",
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
        for step, shadow in plan.post:
            t0 = now()
            if t0 >= deadline:
                records.append(StepRecord(step.step_id, _SKIPPED, 0))
                continue
            bulkhead = step.isolated_by
            try:
                if bulkhead is None:
                    result = step.apply(request, signals, candidates)
                else:
                    wait = min(bulkhead.wait, deadline - t0)
                    result = bulkhead.call(step.apply, request, signals, candidates, timeout=wait)
            except Exception as exc:
                records.append(_failed(step, exc, t0, now()))
                continue
            record, candidates = _reranked(step, shadow, result, t0, now(), deadline, candidates)
            records.append(record)
        return candidates

    async def _apost(
        self,
        plan: _Plan,
        request: RequestContext,
        served: Tier | None,
        signals: Signals | None,
        deadline: float,
        records: list[StepRecord],
    ) -> Sequence[Candidate]:
        """The post steps of a plan that runs some on a bulkhead, from adecide: those are
        awaited under the request's deadline; the others are plain calls, as in :meth:`_post`."""
        if served is None or served.terminal:
            signals = None
        candidates = request.candidates
        now = self._now
        for step, shadow in plan.post:
            t0 = now()
            if t0 >= deadline:
                records.append(StepRecord(step.step_id, _SKIPPED, 0))
                continue
            bulkhead = step.isolated_by
            try:
                if bulkhead is None:
                    result = step.apply(request, signals, candidates)
                else:
                    async with asyncio.timeout(min(bulkhead.wait, deadline - t0)):
                        result = await bulkhead.acall(step.apply, request, signals, candidates)
            except Exception as exc:
                records.append(_failed(step, exc, t0, now()))
                continue
            record, candidates = _reranked(step, shadow, result, t0, now(), deadline, candidates)
            records.append(record)
        return candidates

    # --- the rare paths -------------------------------------------------------------------------

    def _no_plan(self, request: RequestContext, start: float, plan: _Plan | None) -> Decision:
        reason = Reason.CLOSED if self._closed else Reason.UNKNOWN_POLICY
        name = request.policy or self.policies.default_policy or ""
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
        self._count_rare(trace)
        return Decision(None, request.candidates, trace)

    def _internal_error(self, request: object, exc: Exception) -> Decision:
        # The request itself may be what is broken (a property that raises): read it defensively.
        name = _read(request, "policy", None) or self.policies.default_policy or ""
        if not isinstance(name, str):
            name = type(name).__name__
        with contextlib.suppress(Exception):  # a broken sink must not turn a bug into a crash
            self._events.emit(ENGINE_INTERNAL_ERROR, policy=name, error=_bug(exc))
        plan = self._plans.get(name)
        candidates = _read(request, "candidates", ())
        request_id = _read(request, "request_id", "")
        trace = Trace(
            name,
            plan.version if plan is not None else "",
            request_id if isinstance(request_id, str) else "",
            "",
            Reason.INTERNAL_ERROR,
            (),
            0,
            0,
        )
        self._count_rare(trace)
        return Decision(None, candidates if isinstance(candidates, list | tuple) else (), trace)

    def _count_rare(self, trace: Trace) -> None:
        """Count a decision that never reached a plan (and tell listeners of it)."""
        with contextlib.suppress(Exception):
            if self._counting is not None:
                # The policy name here is the caller's: a metric label must not take it, or
                # every made-up name would be a new series (and memory that never shrinks).
                known = trace.policy in self._plans
                unplanned = trace if known else trace._replace(policy=UNKNOWN_POLICY)
                self._counting.count_unplanned(unplanned)
            if self._listeners:
                self._tell_listeners(trace)

    def _tell_listeners(self, trace: Trace) -> None:
        for listen in self._listeners:
            try:
                listen(trace)
            except Exception as exc:  # a listener's bug must not cost the answer
                if id(listen) in self._failed_listeners:
                    continue  # reported once: a broken listener fails on every decision
                self._failed_listeners.add(id(listen))
                with contextlib.suppress(Exception):
                    self._events.emit(
                        ENGINE_INTERNAL_ERROR,
                        policy=trace.policy,
                        error=f"listener failed (reported once): {type(exc).__name__}: {exc}",
                    )

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

    # --- observability -------------------------------------------------------------------------

    def stats(self) -> DecisionTotals:
        """Every decision counted since the engine started (or forked): by policy, tier served
        and reason; each step's outcomes; the duration histogram. While
        ``settings.metrics.enabled`` is false nothing is added (the counts so far stay).
        :mod:`resilience.metrics` exports them."""
        return self._stats.totals()

    def readings(self) -> list[Reading]:
        """The engine's state of the moment, as metric readings: the running config versions
        and budgets, every flag and flag source, the breakers and bulkheads of the sources,
        what each step reports (:meth:`Step.readings`), the diversity and CTR aggregates, the
        reloads and the exposure log. Read when metrics are scraped; never on the request path.
        """
        out: list[Reading] = []
        for name, plan in self._plans.items():
            if name:
                version = {"policy": name, "version": plan.version}
                out.append(Reading("resilience_config_info", 1.0, version))
                out.append(
                    Reading("resilience_policy_budget_seconds", plan.budget, {"policy": name})
                )
        out += _flag_readings(self.flags, self._clock.wall())
        generation = self._generation
        for source, runtime in generation.sources.items():
            if runtime.breaker is not None:
                out += breaker_readings(runtime.breaker)
            if runtime.bulkhead is not None:
                out += _bulkhead_readings(source, runtime.bulkhead.stats)
        seen: set[int] = set()
        for compiled in generation.compiled.values():
            for step in (*compiled.guards, *compiled.tiers, *compiled.post):
                if step.isolated_by is not None:
                    out += _step_bulkhead_readings(
                        compiled.policy.name, step.step_id, step.isolated_by.stats
                    )
                if id(step) in seen or type(step).readings is Step.readings:
                    continue
                seen.add(id(step))
                try:
                    out += step.readings()
                except Exception as exc:  # a step's bug costs its readings, not the scrape
                    self._emit(
                        ENGINE_INTERNAL_ERROR,
                        policy=compiled.policy.name,
                        error=f"readings of {step.step_id} failed: {type(exc).__name__}: {exc}",
                    )
        out += _diversity_readings(self.monitor)
        with self._lock:
            reloads = dict(self._reloads)
        for result, count in reloads.items():
            out.append(Reading("resilience_reloads_total", float(count), {"result": result}))
        exposures = self.exposures
        if exposures is not None:
            out.append(Reading("resilience_exposure_records_written_total", exposures.written))
            out.append(Reading("resilience_exposure_records_dropped_total", exposures.dropped))
        return out

    def add_listener(self, listener: Callable[[Trace], None]) -> Callable[[], None]:
        """Call ``listener`` with the trace of every decision, once it is finished, on the
        request's thread or task (so the caller's context, e.g. its current span, is there).

        Keep it cheap: it runs on the request path. Exceptions are reported as
        ``resilience.engine.internal_error`` and otherwise ignored. :mod:`resilience.otel` is
        one such listener.

        Returns:
            A function that removes the listener.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self._lock:
                self._listeners = tuple(
                    existing for existing in self._listeners if existing is not listener
                )

        return remove

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def policy_names(self) -> list[str]:
        """The names of the running policies."""
        return [name for name in self._plans if name]

    @property
    def fleet(self) -> FleetSync | None:
        """The background exchange of fleet breakers, if any breaker declares ``fleet:``."""
        return self._generation.fleet

    def record_click(
        self, trace: Trace, *, user_id: str | None = None, item_id: str | None = None
    ) -> None:
        """Report a click on the list a decision served, for CTR beside diversity, and to the
        exposure log if there is one.

        Only clicks on sampled decisions (``trace.sampled``) count for the monitor, so that CTR
        and the diversity figures describe the same lists; nothing is kept per request. The
        exposure log records every click (with the user's hash when ``user_id`` is given).
        """
        if trace.sampled:
            self.monitor.record_click(trace.policy, trace.served, trace.group)
        exposures = self.exposures
        if exposures is not None:
            exposures.click(trace, user_id, item_id)

    def breaker(self, source: str) -> CircuitBreaker:
        """The circuit breaker of ``source``, for operators (``force_open()``, ``snapshot()``).

        Raises:
            PolicyError: the source has no breaker declared, or no such source is bound.
        """
        sources = self._generation.sources
        runtime = sources.get(source)
        if runtime is None or runtime.breaker is None:
            with_breakers = sorted(n for n, r in sources.items() if r.breaker is not None)
            raise PolicyError(
                f"source {source!r} has no breaker (sources with one: {with_breakers or 'none'})"
            )
        return runtime.breaker

    def steps(self, policy: str | None = None) -> tuple[Step, ...]:
        """The step objects of ``policy`` (the default policy if ``None``) in the running build:
        guards, tiers, then post steps, in declaration order, whatever the flags say. For
        operators, tests and the simulator (which drives a ``stream_lag`` guard's polling on its
        virtual clock); a reload builds new objects, so look them up again after one.

        Raises:
            PolicyError: no such policy.
        """
        generation = self._generation
        compiled = generation.compiled.get(policy or generation.policies.default_policy or "")
        if compiled is None:
            raise PolicyError(f"no policy named {policy or generation.policies.default_policy!r}")
        return (*compiled.guards, *compiled.tiers, *compiled.post)

    def source_stats(self) -> dict[str, dict[str, object]]:
        """Per source: its breaker's snapshot and its bulkhead's counters, where declared."""
        stats: dict[str, dict[str, object]] = {}
        for name, runtime in self._generation.sources.items():
            entry: dict[str, object] = {"isolation": runtime.options.isolation}
            if runtime.breaker is not None:
                entry["breaker"] = runtime.breaker.snapshot()._asdict()
            if runtime.bulkhead is not None:
                entry["bulkhead"] = runtime.bulkhead.stats._asdict()
            stats[name] = entry
        return stats

    def config_version(self, policy: str | None = None) -> str:
        """The config version of ``policy`` (the default policy if ``None``)."""
        plan = self._plans.get(policy or "")
        if plan is None:
            raise PolicyError(f"no policy named {policy or self.policies.default_policy!r}")
        return plan.version

    def close(self) -> None:
        """Release what the engine holds: its steps and their shared state, its watcher and
        flag sources, and generations a reload replaced. Idempotent.

        Decisions after ``close()`` answer un-personalized with reason ``closed``. Sources bound
        in code are the caller's and are not closed; sources the engine made from the policy
        (Redis) are, and the fleet exchange stops.
        """
        retiring = self._shut()
        if retiring is None:
            return
        for old in retiring:
            old.retire(self._generation)
        self._generation.retire(None)
        if self.exposures is not None:
            self.exposures.close()
        self._events.emit(ENGINE_CLOSED, policies=self.policy_names)

    async def aclose(self) -> None:
        """The asyncio form of :meth:`close`; also closes the asyncio connections of sources the
        engine made itself (Redis)."""
        # Off the event loop: it waits for a reload in progress and joins background threads.
        retiring = await asyncio.to_thread(self._shut)
        if retiring is None:
            return
        for old in retiring:
            await old.aretire(self._generation)
        await self._generation.aretire(None)
        if self.exposures is not None:
            await asyncio.to_thread(self.exposures.close)
        self._events.emit(ENGINE_CLOSED, policies=self.policy_names)

    def _shut(self) -> list[Generation] | None:
        """Stop everything that runs in the background; ``None`` if already closed."""
        # A reload in progress finishes first (its new flag sources and retirement included),
        # unless it is stuck: then it finds the engine closed and releases what it made.
        waited = self._reloading.acquire(timeout=_CLOSE_WAITS_FOR_RELOAD)
        try:
            with self._lock:
                if self._closed:
                    return None
                self._closed = True
                watch, self._watch = self._watch, None
                retiring, self._retiring = self._retiring, []
        finally:
            if waited:
                self._reloading.release()
        if watch is not None:
            watch.stop()
        self.flags.stop()
        for _, timer in retiring:
            if timer is not None:
                timer.cancel()
        return [old for old, _ in retiring]

    def _shut_retiring(self) -> None:
        with self._lock:
            retiring, self._retiring = self._retiring, []
        for old, timer in retiring:
            if timer is not None:
                timer.cancel()
            old.retire(self._generation)

    def _after_fork_in_child(self) -> None:
        # A child's counters count its own decisions: each process is its own metrics target.
        self._stats.forget()
        # Retirement timers are threads: gone in the child. Their generations close at close().
        self._retiring = [(old, None) for old, _ in self._retiring]
        # Normally the fork waited for any change in progress; if it could not (something was
        # stuck), make the child consistent from what it has: flags merged, plans made anew.
        self.flags._remerge()
        self._plans = self._plan(self._generation)
        self._generation.settle()

    def _emit(self, event: str, **fields: Any) -> None:
        with contextlib.suppress(Exception):
            self._events.emit(event, **fields)

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


def _would_rerank(
    step: str, elapsed: int, before: Sequence[Candidate], after: Sequence[Candidate]
) -> StepRecord:
    """The record of a post step in shadow: what its list would have changed."""
    moved = sum(1 for a, b in zip(before, after, strict=False) if a.item_id != b.item_id)
    moved += abs(len(before) - len(after))
    if not moved:
        return StepRecord(step, _OK, elapsed, "shadow: no change")
    return StepRecord(step, _SHADOW, elapsed, f"would change {moved} of {len(before)} positions")


_NO_POLICY = Policy("", "", 0.0, (), (), ())


def _flag_readings(flags: Flags, now: float) -> list[Reading]:
    out: list[Reading] = []
    for state in flags.states():
        key = state.key
        out += [
            Reading(
                "resilience_flag_state",
                1.0 if state.value is mode else 0.0,
                {"flag": key, "state": mode.value},
            )
            for mode in Mode
        ]
        overridden = 0.0 if state.source == "policy" else 1.0
        out.append(Reading("resilience_flag_overridden", overridden, {"flag": key}))
        out.append(Reading("resilience_flag_stale", 1.0 if state.stale else 0.0, {"flag": key}))
    for health in flags.sources():
        labels = {"source": health.source}
        last_ok = health.last_ok
        out.append(Reading("resilience_flag_source_up", 1.0 if health.healthy else 0.0, labels))
        out.append(
            Reading(
                "resilience_flag_source_staleness_seconds",
                now - last_ok if last_ok is not None else math.nan,
                labels,
            )
        )
    return out


def _bulkhead_readings(source: str, stats: BulkheadStats) -> list[Reading]:
    labels = {"source": source}
    return [
        Reading("resilience_bulkhead_in_flight", float(stats.in_flight), labels),
        Reading("resilience_bulkhead_max_concurrent", float(stats.max_concurrent), labels),
        Reading("resilience_bulkhead_rejected_total", float(stats.rejected), labels),
        Reading("resilience_bulkhead_abandoned_total", float(stats.abandoned), labels),
    ]


def _step_bulkhead_readings(policy: str, step: str, stats: BulkheadStats) -> list[Reading]:
    labels = {"policy": policy, "step": step}
    return [
        Reading("resilience_step_bulkhead_in_flight", float(stats.in_flight), labels),
        Reading("resilience_step_bulkhead_rejected_total", float(stats.rejected), labels),
        Reading("resilience_step_bulkhead_abandoned_total", float(stats.abandoned), labels),
    ]


def _diversity_readings(monitor: DiversityMonitor) -> list[Reading]:
    out: list[Reading] = []
    for snap in monitor.snapshot():
        labels = {
            "policy": snap.policy,
            "tier": snap.served or "none",
            "group": snap.group or "none",
        }
        out += [
            Reading("resilience_window_impressions", float(snap.impressions), labels),
            Reading("resilience_window_clicks", float(snap.clicks), labels),
            Reading("resilience_ctr_ratio", snap.ctr, labels),
            Reading("resilience_diversity_category_coverage_ratio", snap.coverage, labels),
            Reading("resilience_diversity_category_entropy_bits", snap.entropy_bits, labels),
        ]
        for quantile, age in (("0.5", snap.age_p50_s), ("0.9", snap.age_p90_s)):
            out.append(
                Reading(
                    "resilience_diversity_item_age_seconds",
                    math.nan if age is None else age,
                    {**labels, "quantile": quantile},
                )
            )
    return out
