"""The run: a world, the real engine on a virtual clock, a scenario's timeline, and records.

One search at a time, in virtual time: requests arrive as a Poisson process at the world's
rate; before each, the scenario's operations that are due run (flags, reloads, new users), the
stream processor applies the clicks its watermark has reached, and every ``stream_lag`` guard
reads its watermark if its ``poll_every`` has come round. The request then goes through
``Engine.decide``; the stores it reads advance the virtual clock by their latency. Clicks are
drawn from the list served.

Reported latency of a decision: the virtual time it took (the stores' injected latency, cut at
the timeouts the engine gives them) plus the real time the ``decide`` call took on this machine
(the engine's own work, post steps included, and the simulated stores' bookkeeping).

With ``redis=URL`` the session store is a real Redis reached through a fault proxy
(:class:`~._faults.RedisSessions`) and the clock is a :class:`~._faults.SkipClock`: real elapsed
time plus the virtual time skipped (the gaps between searches, the simulated stores' latency).
A decision's latency is then simply the clock's advance during ``decide``: real time, the Redis
round trips included, plus the simulated stores' injected latency.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from resilience._engine import Engine
from resilience._errors import PolicyError, ResilienceError
from resilience._flags import FlagError
from resilience._holdout import bucket as holdout_bucket
from resilience._model import Candidate, RequestContext
from resilience._policy import PolicySet, load_policies
from resilience._steps import source_fields
from resilience._trace import Reason
from resilience.testing import FakeClock

from ._faults import (
    RedisLostError,
    RedisSessions,
    SimClock,
    SimStore,
    SkipClock,
    StoreFaults,
    StreamFaults,
)
from ._scenario import (
    STORES,
    BadReload,
    Flapping,
    Hang,
    KillSwitch,
    Latency,
    NewUsers,
    Outage,
    Scenario,
    StreamLag,
    load_scenario,
)
from ._summary import Records, summarize
from ._world import World

__all__ = ["WATERMARK_SOURCE", "SimulationError", "simulate"]

#: The source name under which the simulator binds the stream processor's watermark.
WATERMARK_SOURCE = "watermark"

#: Wall-clock time at virtual time 0 (any fixed value: runs are reproducible).
EPOCH = 1_700_000_000.0

_BUNDLED = "<bundled>"


class SimulationError(ResilienceError):
    """The simulation cannot run as asked (a policy the world cannot serve, an unknown flag);
    the message is one line: what, and how to fix it."""


@runtime_checkable
class _PolledWatch(Protocol):
    """What a ``stream_lag`` guard's watch offers for polling on a virtual clock."""

    def take_over(self) -> None: ...

    def poll(self) -> None: ...


class _TimedSink:
    """Keeps every event with the virtual time it happened at."""

    def __init__(self, clock: SimClock, start: float) -> None:
        self._clock = clock
        self._start = start
        self.events: list[tuple[float, str, dict[str, Any]]] = []

    def emit(self, event: str, /, **fields: Any) -> None:
        self.events.append((self._clock.monotonic() - self._start, event, fields))


@dataclass(order=True)
class _Task:
    at: float
    order: int
    run: Callable[[], None] = field(compare=False)


def _bundled_policy_text() -> str:
    return resources.files(__package__).joinpath("policies.yaml").read_text(encoding="utf-8")


def _load_policy(path: str | os.PathLike[str] | None) -> tuple[PolicySet, str, str]:
    """The policy set, its text (for a bad reload made from it) and how to name it."""
    if path is None:
        text = _bundled_policy_text()
        return load_policies(text, file="<bundled policies.yaml>"), text, _BUNDLED
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SimulationError(
            f"{name}: cannot read the policy file ({reason}); check the path"
        ) from None
    return load_policies(text, file=name), text, name


def _check_sources(policies: PolicySet) -> None:
    provided = (*STORES, WATERMARK_SOURCE)
    unknown = sorted(set(policies.source_names()) - set(provided))
    if unknown:
        raise SimulationError(
            f"{policies.file}: the policy names source(s) {', '.join(unknown)}, which the "
            f"simulated world does not have; it binds {', '.join(provided)}: rename them"
        )
    for name, options in policies.sources.items():
        if options.redis is not None:
            raise SimulationError(
                f"{policies.file}: sources.{name} declares a redis block; the simulator binds "
                "its own stores: remove the block (use --redis URL to run the session store "
                "against a real Redis)"
            )
    if policies.default_policy is None:
        raise SimulationError(
            f"{policies.file}: no default_policy; the simulator's requests name no policy: "
            "add default_policy"
        )


def _offline(policies: PolicySet) -> PolicySet:
    """No exposure log: the simulator measures lift itself and writes no files."""
    if policies.settings.exposures is None:
        return policies
    settings = policies.settings.model_copy(update={"exposures": None})
    return dataclasses.replace(policies, settings=settings)


def _scaled(scenario: Scenario, scale: float) -> Scenario:
    if scale == 1.0:
        return scenario
    world = scenario.world.model_copy(
        update={
            "rate": scenario.world.rate * scale,
            "users": max(10, round(scenario.world.users * scale)),
        }
    )
    events = [
        e.model_copy(update={"count": max(1, round(e.count * scale))})
        if isinstance(e, NewUsers)
        else e
        for e in scenario.events
    ]
    return scenario.model_copy(update={"world": world, "events": events})


def _store_faults(scenario: Scenario, name: str) -> StoreFaults:
    """The faults the scenario schedules on store ``name``, over its healthy latency."""
    return StoreFaults(
        [
            e
            for e in scenario.events
            if isinstance(e, Latency | Outage | Hang | Flapping) and name in e.stores
        ],
        scenario.world.latency.get(name, 0.001),  # type: ignore[call-overload]
    )


def _broken(text: str) -> str:
    """A plausible bad edit of a policy: the first step type misspelt."""
    if "type: " in text:
        return text.replace("type: ", "type: x", 1)
    return text + "\nnot_a_setting: true\n"


def _holdout_user(policies: PolicySet, policy: str) -> str | None:
    """A user id the policy's holdout holds out (to ask the engine what a held-out user gets)."""
    holdout = policies.policies[policy].holdout
    if holdout is None or holdout.buckets_held_out == 0:
        return None
    for n in range(100_000):
        user = f"counterfactual-{n}"
        if holdout_bucket(holdout.salt, user) < holdout.buckets_held_out:
            return user
    return None  # pragma: no cover - a holdout of 0.01% would need ~10,000 tries


def simulate(
    scenario: str | os.PathLike[str] | Scenario = "default",
    *,
    policies: str | os.PathLike[str] | None = None,
    seed: int = 1,
    scale: float = 1.0,
    replicates: int = 2000,
    progress: Callable[[float, int], None] | None = None,
    redis: str | None = None,
    redis_password_env: str | None = None,
    redis_password_file: str | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` through the real engine and return the result (plain, JSON-able data:
    see ``docs/simulation.md`` for every key).

    Args:
        scenario: a built-in scenario's name, a YAML file's path, or a :class:`Scenario`.
        policies: the policy file; ``None``: the simulation's own (``policies.yaml`` in this
            package: the reference policy with a stream_lag guard and a holdout).
        seed: everything random derives from it; the same seed gives the same run.
        scale: multiplies the world's users, search rate and new-user counts (same timeline).
        replicates: bootstrap replicates of the lift's interval.
        progress: called now and then with (share of virtual time done, decisions so far).
        redis: run the session store against the Redis at this URL, through a fault proxy,
            on a clock of real time plus skipped time (``docs/simulation.md``). Such a run is
            not the same for a seed: what the engine does depends on real timings. Only keys
            under a prefix of the run's own are written, and they are deleted at the end.
        redis_password_env: the environment variable holding that Redis's password, which
            then stays out of the URL (and off the command line).
        redis_password_file: or the file holding it (one trailing newline dropped).

    Raises:
        ScenarioError: the scenario is invalid.
        PolicyValidationError: the policy file is invalid.
        SimulationError: the run cannot be set up as asked.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise SimulationError(f"scale must be a positive number, not {scale!r}")
    loaded = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    plan = _scaled(loaded, scale)
    policy_set, policy_text, policy_name = _load_policy(policies)
    _check_sources(policy_set)
    wire: RedisSessions | None = None
    if redis is not None:
        try:
            wire = RedisSessions.connect(
                redis,
                _store_faults(plan, RedisSessions.NAME),
                random.Random(f"{seed}:{RedisSessions.NAME}"),
                f"{os.getpid()}-{uuid.uuid4().hex[:12]}",
                password_env=redis_password_env,
                password_file=redis_password_file,
            )
        except ValueError as exc:
            raise SimulationError(str(exc)) from None
    started = time.perf_counter()
    run = _Run(plan, policy_set, policy_text, seed, progress, wire)
    try:
        records = run.run()
        real = run.clock.real() if isinstance(run.clock, SkipClock) else 0.0
    except RedisLostError as exc:  # Redis itself failed mid-run (not an injected fault)
        raise SimulationError(f"{exc}; the run stopped: check the server") from None
    finally:
        if wire is not None:
            wire.close()
    wall = time.perf_counter() - started
    result = summarize(
        records,
        plan,
        seed=seed,
        policies=policy_name,
        scale=scale,
        replicates=replicates,
        wall_s=wall,
    )
    result["redis"] = None
    if wire is not None and isinstance(run.clock, SkipClock):
        result["mode"] = "real+skipped"
        result["redis"] = {
            **wire.report(),
            "real_s": round(real, 3),
            "skipped_s": round(run.clock.skipped, 3),
            "behind_max_s": round(run.behind, 4),
            "session_steps": dict(sorted(run.session_outcomes.items())),
        }
    return result


class _Run:
    def __init__(
        self,
        scenario: Scenario,
        policies: PolicySet,
        policy_text: str,
        seed: int,
        progress: Callable[[float, int], None] | None,
        wire: RedisSessions | None = None,
    ) -> None:
        self.scenario = scenario
        self.policies = policies
        self.policy_text = policy_text
        self.seed = seed
        self.progress = progress
        assert policies.default_policy is not None
        self.policy = policies.default_policy
        self.wire = wire
        self.clock: SimClock = (
            FakeClock(wall=EPOCH, monotonic=1_000.0)
            if wire is None
            else SkipClock(wall=EPOCH, monotonic=1_000.0)
        )
        #: the most a search started after its arrival (real time overtaking the timeline)
        self.behind = 0.0
        #: outcomes of the steps that read the session store (``--redis`` runs)
        self.session_outcomes: Counter[str] = Counter()
        self.session_steps = frozenset(
            spec.step_id
            for spec in policies.policies[self.policy].steps()
            if any(name == RedisSessions.NAME for _, name in source_fields(spec.params))
        )
        self.start = self.clock.monotonic()
        self.sink = _TimedSink(self.clock, self.start)
        world = scenario.world
        stream = StreamFaults(
            [e for e in scenario.events if isinstance(e, StreamLag)], world.stream_delay
        )
        self.world = World(world, seed, EPOCH, stream)
        self.stores: dict[str, Any] = {
            name: SimStore(
                name,
                lookup,
                _store_faults(scenario, name),
                self.clock,
                self.start,
                random.Random(f"{seed}:{name}"),
            )
            for name, lookup in (
                ("session_store", self.world.population.sessions),
                ("profile_store", self.world.population.profiles),
                ("segment_store", self.world.population.segments),
            )
        }
        if wire is not None:
            self.stores[RedisSessions.NAME] = wire.store
        self.records = Records(self.policy, policies)
        self.watches: list[tuple[_PolledWatch, float]] = []
        self.tasks: list[_Task] = []
        self._order = 0

    # --- time ---------------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.monotonic() - self.start

    def _advance_to(self, t: float) -> None:
        gap = t - self.now()
        if gap > 0:
            self.clock.advance(gap)

    def _watermark(self, key: str, timeout: float | None = None) -> float:
        return self.world.watermark(self.now())

    def _schedule(self, at: float, run: Callable[[], None]) -> None:
        self._order += 1
        heapq.heappush(self.tasks, _Task(at, self._order, run))

    # --- set-up -------------------------------------------------------------------------------

    def _engine(self) -> Engine:
        sources: dict[str, Any] = dict(self.stores)
        sources[WATERMARK_SOURCE] = self._watermark
        try:
            return Engine(
                _offline(self.policies),
                {k: v for k, v in sources.items() if k in self.policies.source_names()},
                clock=self.clock,
                events=self.sink,
                seed=self.seed,
                flag_feeds=[],
            )
        except PolicyError:
            raise
        except Exception as exc:  # a plugin's constructor failing, say
            raise SimulationError(f"the engine could not be built: {exc}") from exc

    def _take_over_watches(self, engine: Engine) -> None:
        """Poll every stream_lag guard on the virtual clock instead of its thread."""
        known = {id(w) for w, _ in self.watches}
        for step in engine.steps(self.policy):
            watch = getattr(step, "watch", None)
            if isinstance(watch, _PolledWatch) and id(watch) not in known:
                watch.take_over()
                watch.poll()
                every = float(getattr(step.params, "poll_every", 1.0))
                self.watches.append((watch, every))
                self._schedule(self.now() + every, self._poller(watch, every))

    def _poller(self, watch: _PolledWatch, every: float) -> Callable[[], None]:
        def poll() -> None:
            watch.poll()
            self._schedule(self.now() + every, self._poller(watch, every))

        return poll

    def _operations(self, engine: Engine) -> None:
        for event in self.scenario.events:
            label = event.label or event.type.replace("_", " ")
            if isinstance(event, KillSwitch):
                key = event.key or self.policy
                try:
                    engine.flags.check(key, "off")
                except FlagError as exc:
                    raise SimulationError(
                        f"kill_switch event at {event.at:g}s: {exc}; use a flag key of the "
                        "policy (its name, or <policy>.<step id>)"
                    ) from None
                self._schedule(event.at, self._flag(engine, key, "off", label))
                self._schedule(event.end, self._flag(engine, key, None, label))
            elif isinstance(event, BadReload):
                self._schedule(event.at, self._reload(engine, event, label))
            elif isinstance(event, NewUsers):
                self._schedule(event.at, self._arrive(event))
            self.records.mark(event.at, label)

    def _arrive(self, event: NewUsers) -> Callable[[], None]:
        def run() -> None:
            self.world.new_users(event.count, event.at, event.end, event.share)

        return run

    def _flag(self, engine: Engine, key: str, value: str | None, label: str) -> Callable[[], None]:
        def run() -> None:
            reason = f"simulated operator: {label}"
            if value is None:
                engine.flags.clear(key, reason=reason, by="simulator")
            else:
                engine.flags.set(key, value, reason=reason, by="simulator")

        return run

    def _reload(self, engine: Engine, event: BadReload, label: str) -> Callable[[], None]:
        def run() -> None:
            text = event.text if event.text is not None else _broken(self.policy_text)
            result = engine.reload(text)
            first = str(result.issues[0]) if result.issues else ""
            what = (
                f"reload refused ({len(result.issues)} problem"
                f"{'s' if len(result.issues) != 1 else ''}: {first}); the running policy kept "
                "serving"
                if not result.ok
                else f"reload applied (version {result.version})"
            )
            self.records.transition(self.now(), what, "reload")
            if result.ok:
                self._take_over_watches(engine)

        return run

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> Records:
        engine = self._engine()
        try:
            self._take_over_watches(engine)
            self._operations(engine)
            if isinstance(self.clock, SkipClock):
                self.clock.start()  # real time counts from the first search on
            self._loop(engine)
        finally:
            engine.close()
        self.records.events = self.sink.events
        return self.records

    def _loop(self, engine: Engine) -> None:
        seed = self.seed
        traffic = random.Random(f"{seed}:traffic")
        clicks = random.Random(f"{seed}:clicks")
        world = self.world
        records = self.records
        clock = self.clock
        perf = time.perf_counter
        decide = engine.decide
        policy = self.policy
        bucket = self.scenario.bucket
        next_bucket = bucket
        duration = self.scenario.duration
        progress = self.progress
        held_out = _holdout_user(self.policies, policy)
        wire = self.wire
        sessions = world.population.sessions
        tasks = self.tasks
        n = 0
        for arrival, user, session in world.searches(traffic, duration):
            while tasks and tasks[0].at <= arrival:
                task = heapq.heappop(tasks)
                self._advance_to(task.at)
                task.run()
            while next_bucket <= arrival:
                self._advance_to(next_bucket)
                records.sample(next_bucket, engine.readings())
                next_bucket += bucket
            self._advance_to(arrival)
            t = self.now()
            updated = world.apply_clicks(t)
            if wire is not None:
                wire.write((s, sessions(s)) for s in updated)
                t = self.now()  # the write took real time
                self.behind = max(self.behind, t - arrival)
                wire.prepare(t)
            candidates = world.query(traffic)
            n += 1
            request = RequestContext(
                user_id=user.user_id,
                session_id=session,
                segment=user.segment,
                request_id=f"r{n}",
                candidates=candidates,
            )
            v0 = clock.monotonic()
            r0 = perf()
            try:
                decision = decide(request)
            except Exception:  # the engine promises never to raise: count it if it does
                records.failure(t)
                continue
            real = perf() - r0
            virtual = clock.monotonic() - v0
            # On a SkipClock the clock's advance already holds the real time.
            latency = virtual if wire is not None else virtual + real
            trace = decision.trace
            shown = decision.candidates
            if wire is not None:
                for step in trace.steps:
                    if step.step in self.session_steps:
                        self.session_outcomes[step.outcome.value] += 1
            failed = trace.reason is Reason.INTERNAL_ERROR or (len(shown) != len(candidates))
            group = trace.group
            expected = world.expected_clicks(user, shown)
            if group == "treatment":
                base = self._counterfactual(decide, held_out, request, user, candidates)
            else:
                base = expected
            clicked = world.click(clicks, user, session, shown, t)
            records.decision(
                t,
                latency * 1e3,
                trace.served,
                trace.reason.value,
                group,
                user.user_id,
                clicked,
                expected,
                base,
                shown,
                candidates,
                world.ages_days(shown, t),
                failed,
            )
            if progress is not None and n % 250 == 0:
                progress(min(t / duration, 1.0), n)
        while next_bucket <= duration + 1e-9:
            self._advance_to(next_bucket)
            records.sample(next_bucket, engine.readings())
            next_bucket += bucket
        if progress is not None:
            progress(1.0, n)

    def _counterfactual(
        self,
        decide: Callable[[RequestContext], Any],
        held_out: str | None,
        request: RequestContext,
        user: Any,
        candidates: tuple[Candidate, ...],
    ) -> float:
        """Expected clicks of what this request would have been served had its user been held
        out: the engine's own holdout answer (it reads no store, so the clock stands still)."""
        if held_out is None:
            return self.world.expected_clicks(user, candidates)
        answer = decide(
            RequestContext(
                user_id=held_out,
                request_id=request.request_id,
                segment=request.segment,
                candidates=candidates,
            )
        )
        return self.world.expected_clicks(user, answer.candidates)
