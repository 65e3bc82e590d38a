"""The chaos soak: decisions from threads and asyncio tasks while everything around them changes.

``python -m benchmarks soak [--quick] [--seconds N] [--seed S] [--json PATH]`` (docs/chaos-soak.md).

A private ``redis-server`` on a free loopback port (never the shared one) holds the sessions; the
engine reads them through ``sources.session_store.redis``, sync for ``decide`` and asyncio for
``adecide``. ``threads`` threads call ``engine.decide`` and ``tasks`` asyncio tasks (one loop, its
own thread) call ``engine.adecide``, paced so that each side offers ``threads / pace`` decisions a
second, for ``seconds``. Meanwhile a chaos thread, driven by ``random.Random(seed)``, plays rounds
of moves: each round holds, in a seeded order and with seeded gaps, every kind once (a run holds
one whole round at least):

- reloads to valid variants of the policy (a new budget, a new guard threshold, a new Redis pool,
  which replaces the source and retires the old one) and of invalid texts, which must be refused
  with the running version kept;
- episodes that begin and end a few moves later: the kill switch and a step switched off (through
  a flag feed), the whole policy and a guard in shadow (through ``engine.flags``), the flag feed
  unreachable (its values held, stale), the stream processor's lag above and back below the
  ``stream_lag`` guard's threshold, the Redis server killed and started again on its port (its
  data seeded again), and the Redis server frozen (SIGSTOP) and resumed. Stopping and freezing
  Redis is what opens and closes the session store's breaker, and what makes the ``error_rate``
  guard trip on the users no other tier can serve.

When the time is up the open episodes end, and the soak waits (bounded) for the engine to serve
from its first tier again with the session breaker closed: recovery is checked, not assumed.
Then a clean outage (Redis killed until the session breaker opens, then started again) must
open the breaker and be recovered from the same way: whatever the chaos did, the breaker still
works.

Every result is checked: anything but a :class:`~resilience.Decision`, or an exception, is a
``failed`` decision; every decision's trace must be internally consistent
(:func:`trace_problems`) and agree with its request (:func:`decision_problems`). The overrun past
the budget (``used_us - budget_us``, floored at 0) is reported per mode. Resources (RSS, objects
the garbage collector tracks, threads, file descriptors, the private server's client
connections) are sampled before the engine exists, after warm-up, at 25/50/75/100% of the run
and after ``close`` (:data:`BOUNDS` says what must hold).
"""

from __future__ import annotations

import array
import asyncio
import gc
import json
import os
import random
import string
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from resilience import (
    Affinities,
    Candidate,
    Decision,
    Engine,
    HoldoutOptions,
    MemorySource,
    Outcome,
    Policy,
    Reason,
    RequestContext,
    StepRecord,
    Trace,
    in_holdout,
    load_policies,
)
from resilience.events import ENGINE_INTERNAL_ERROR
from resilience.testing import HandFlags, RedisServer, wait_for

__all__ = [
    "BOUNDS",
    "INVALID",
    "VARIANTS",
    "Shape",
    "bound_verdicts",
    "decision_problems",
    "policy_text",
    "run",
    "shapes_of",
    "trace_problems",
]

POLICY = "search"
SESSIONS = 40  # warm users u<n> with session s<n> in Redis and a profile
COLD = 10  # users x<n> whose session n<n> Redis never has, with no profile and no segment
CATEGORIES = ("shoes", "books", "toys", "bags")

#: The reference chain (policies.yaml), its session store in Redis, plus a holdout and the
#: stream_lag guard, with times short enough for transitions to happen within seconds.
_TEMPLATE = string.Template(
    """\
version: 1
settings:
  events:
    decision_sample_rate: 0.001
sources:
  session_store:
    redis:
      url: "$url"
      key: "s:{key}"
      max_connections: $max_connections
    breaker:
      window: count
      size: 50
      minimum_calls: 10
      failure_rate: 0.5
      slow_call_rate: 0.5
      slow_call_duration: 8ms
      open_for: 300ms
      half_open_probes: 3
      probe_deadline: 1s
  profile_store:
    breaker:
      minimum_calls: 20
      failure_rate: 0.5
      open_for: 5s
default_policy: search
policies:
  search:
    description: the reference chain under chaos
    budget: $budget
    holdout: {salt: soak-holdout, percent: 5}
    guards:
      - type: stream_lag
        source: watermark
        max_lag: 30s
        resume_below: 10s
        hold_for: 200ms
        grace: 10s
        poll_every: 20ms
        read_timeout: 100ms
      - type: error_rate
        threshold: $threshold
        minimum_requests: 100
        window: time
        duration: 10s
        buckets: 10
        open_for: 300ms
        half_open_probes: 10
        probe_deadline: 1s
    chain:
      - type: session
        timeout: 10ms
        source: session_store
        profile_source: profile_store
        blend_k: 3
        max_session_weight: 0.8
      - type: stale_cache
        max_age: 5m
      - type: profile_only
        source: profile_store
      - type: segment
        source: segment_store
      - type: unpersonalized
    post:
      - type: boost_cap
        cap: 0.5
      - type: exploration
        share: $share
        k: 10
"""
)

_BASE = {"max_connections": "16", "budget": "30ms", "threshold": "0.05", "share": "0.15"}

#: Valid variants the chaos reloads, as changes to the base.
VARIANTS: dict[str, dict[str, str]] = {
    "reference": {},
    "budget_25ms": {"budget": "25ms"},
    "looser_guard": {"threshold": "0.1", "share": "0.2"},
    # Another pool size is another source: a new breaker and pool; the old ones retire.
    "smaller_pool": {"max_connections": "8"},
}

#: Texts a reload must refuse (the running policy stays), as edits of the base text. The first
#: four fail validation; the last two pass it and fail only when the engine builds them.
INVALID: dict[str, Callable[[str], str]] = {
    "unknown_tier_type": lambda t: t.replace("type: stale_cache", "type: stale_cach"),
    "bare_duration": lambda t: t.replace("timeout: 10ms", "timeout: 10"),
    "duplicate_key": lambda t: t.replace("    budget: ", "    budget: 20ms\n    budget: ", 1),
    "not_yaml": lambda t: t + "  - : [\n",
    "unbound_source": lambda t: t.replace("source: segment_store", "source: segments_v2"),
    "url_with_query": lambda t: t.replace('/0"', '/0?max_connections=1"', 1),
}

#: What must hold for a run to pass; each is checked by :func:`bound_verdicts`.
BOUNDS: dict[str, str] = {
    "failed": "no decision raised or returned anything but a Decision",
    "trace_problems": "every trace internally consistent and matching its request",
    "chaos_problems": "every valid reload applied with its version, every invalid one refused",
    "internal_errors": "no resilience.engine.internal_error event",
    "recovered": "after the chaos, and after a clean outage that must open the breaker, the "
    "first tier serves with the breaker closed within 10 s",
    "threads": "no thread alive after close that was not before the engine was built",
    "fds": "file descriptors after close <= before the engine was built + 2",
    "redis_clients": "connections to the private server after close == 0",
    "rss_growth": "RSS at 100% of the run <= RSS at 50% + 16 MiB",
    "objects_growth": "gc-tracked objects at 100% of the run <= at 50% + 20%",
}
_RECOVERY_TIMEOUT = 10.0
_RSS_GROWTH_MIB = 16.0
_OBJECTS_GROWTH = 0.20
_FD_SLACK = 2


def policy_text(url: str, variant: str = "reference") -> str:
    """The soak's policy for the Redis at ``url``, in one of :data:`VARIANTS`."""
    return _TEMPLATE.substitute({**_BASE, **VARIANTS[variant], "url": url})


# --- what a consistent trace is ---------------------------------------------------------------


class Shape(NamedTuple):
    """What a trace of one policy version may contain: its steps by kind, its budget, holdout."""

    policy: str
    guards: tuple[str, ...]
    tiers: tuple[str, ...]
    post: tuple[str, ...]
    budget_us: int
    holdout: HoldoutOptions | None

    @classmethod
    def of(cls, policy: Policy) -> Shape:
        return cls(
            policy.name,
            tuple(s.step_id for s in policy.guards),
            tuple(s.step_id for s in policy.chain),
            tuple(s.step_id for s in policy.post),
            round(policy.budget * 1e6),
            policy.holdout,
        )


def shapes_of(texts: Sequence[str]) -> dict[str, Shape]:
    """Config version -> :class:`Shape`, for every policy of every text (each must be valid)."""
    shapes: dict[str, Shape] = {}
    for text in texts:
        for policy in load_policies(text).policies.values():
            shapes[policy.version] = Shape.of(policy)
    return shapes


#: Reasons a running engine gives; closed, unknown_policy, internal_error and cancelled are
#: problems here (the soak closes the engine only after the last decision).
LIVE_REASONS = frozenset(
    {
        Reason.PRIMARY,
        Reason.FALLBACK,
        Reason.GUARD,
        Reason.SWITCHED_OFF,
        Reason.HOLDOUT,
        Reason.BUDGET,
    }
)
#: How a guard or a post step may end: it may fail in every way a call can (raise, overrun its
#: deadline, answer garbage, find its bulkhead full), but it never misses, and only a guard
#: disables.
_GUARD_OUTCOMES = frozenset(
    {
        Outcome.OK,
        Outcome.SHADOW,
        Outcome.DISABLED,
        Outcome.ERROR,
        Outcome.TIMEOUT,
        Outcome.GARBAGE,
        Outcome.REJECTED,
        Outcome.BREAKER_OPEN,
        Outcome.SKIPPED_BUDGET,
    }
)
_POST_OUTCOMES = _GUARD_OUTCOMES - {Outcome.DISABLED}
_UNSERVED_TIER_OUTCOMES = frozenset(
    {
        Outcome.MISS,
        Outcome.ERROR,
        Outcome.TIMEOUT,
        Outcome.GARBAGE,
        Outcome.SKIPPED_BUDGET,
        Outcome.BREAKER_OPEN,
        Outcome.REJECTED,
    }
)


def trace_problems(trace: Trace, shapes: Mapping[str, Shape]) -> list[str]:
    """What is inconsistent in ``trace``, judged against the policy version it names.

    ``shapes`` maps every config version that may be running to its :class:`Shape`. Empty when
    the trace is consistent. Every rule follows from how the engine builds a trace
    (docs/architecture.md, "The life of one request").
    """
    shape = shapes.get(trace.config_version)
    if shape is None:
        return [f"config version {trace.config_version!r} belongs to no policy that was loaded"]
    problems: list[str] = []
    if trace.policy != shape.policy:
        problems.append(f"policy {trace.policy!r} under the version of {shape.policy!r}")
    if trace.reason not in LIVE_REASONS:
        problems.append(f"reason {trace.reason.value} from a running engine")
    if not 0 < trace.budget_us <= shape.budget_us:
        problems.append(f"budget {trace.budget_us} us outside (0, {shape.budget_us}]")
    if trace.used_us < 0:
        problems.append(f"used {trace.used_us} us")
    guards, tiers, post, preset = _split(trace.steps, shape, problems)
    terminal = shape.tiers[-1]
    reason = trace.reason

    for record in guards:
        if record.outcome not in _GUARD_OUTCOMES:
            problems.append(f"guard {record.step} ended {record.outcome.value}")
    disabled = [r for r in guards if r.outcome is Outcome.DISABLED]
    if reason is Reason.GUARD:
        if not guards or guards[-1].outcome is not Outcome.DISABLED:
            problems.append("reason guard, but the last guard record is not disabled")
    elif disabled:
        problems.append(f"guard {disabled[0].step} disabled, but the reason is {reason.value}")
    if len(disabled) > 1:
        problems.append("more than one guard disabled personalization")

    served = [r for r in tiers if r.outcome is Outcome.OK]
    if len(served) != 1:
        problems.append(f"{len(served)} tier records ended ok")
    elif served[0] is not tiers[-1]:
        problems.append(f"tier {tiers[-1].step} tried after {served[0].step} served")
    elif trace.served != served[0].step:
        problems.append(f"served {trace.served!r}, but {served[0].step} is the tier that was ok")
    problems += [
        f"tier {r.step} ended {r.outcome.value} without serving"
        for r in tiers
        if r.outcome is not Outcome.OK and r.outcome not in _UNSERVED_TIER_OUTCOMES
    ]
    tier_ids = [r.step for r in tiers]
    if reason in (Reason.GUARD, Reason.HOLDOUT, Reason.SWITCHED_OFF) and tier_ids != [terminal]:
        problems.append(f"reason {reason.value}, but tiers {tier_ids} ran, not {terminal} alone")
    if reason is Reason.HOLDOUT and (guards or preset):
        problems.append("a held-out user's trace has guard or switch records")
    if reason is Reason.SWITCHED_OFF and (guards or preset or post):
        problems.append("the policy is switched off, but steps besides the terminal tier ran")
    if reason is Reason.PRIMARY and tier_ids != [shape.tiers[0]]:
        problems.append(f"reason primary, but tiers {tier_ids} ran")
    skipped = any(r.outcome is Outcome.SKIPPED_BUDGET for r in (*guards, *tiers))
    if reason in (Reason.FALLBACK, Reason.BUDGET):
        if trace.served == shape.tiers[0]:
            problems.append(f"reason {reason.value}, but the first tier served")
        if skipped != (reason is Reason.BUDGET):
            problems.append(f"reason {reason.value} with skipped_budget records: {skipped}")

    problems += [
        f"post step {r.step} ended {r.outcome.value}"
        for r in post
        if r.outcome not in _POST_OUTCOMES
    ]
    for record in trace.steps:
        if record.elapsed_us < 0:
            problems.append(f"{record.step} took {record.elapsed_us} us")
        elif record.elapsed_us and record.outcome in (
            Outcome.SKIPPED_BUDGET,
            Outcome.SWITCHED_OFF,
        ):
            problems.append(f"{record.step} was not run but took {record.elapsed_us} us")
    # Each record and the total are rounded to whole microseconds on their own.
    total = sum(r.elapsed_us for r in trace.steps)
    if total > trace.used_us + len(trace.steps):
        problems.append(f"steps took {total} us, the decision {trace.used_us} us")

    if (trace.group == "holdout") != (reason is Reason.HOLDOUT):
        problems.append(f"group {trace.group!r} with reason {reason.value}")
    if shape.holdout is None and trace.group:
        problems.append(f"group {trace.group!r}, but the policy has no holdout")
    if trace.group not in ("", "holdout", "treatment"):
        problems.append(f"group {trace.group!r}")
    return problems


def _split(
    steps: Sequence[StepRecord], shape: Shape, problems: list[str]
) -> tuple[list[StepRecord], list[StepRecord], list[StepRecord], list[StepRecord]]:
    """Guard, tier, post and switched-off records; order, duplicates and strangers go to
    ``problems``. Switched-off records head the trace, the rest follow the declaration."""
    where = {
        step: (kind, index)
        for kind, ids in enumerate((shape.guards, shape.tiers, shape.post))
        for index, step in enumerate(ids)
    }
    kinds: tuple[list[StepRecord], list[StepRecord], list[StepRecord], list[StepRecord]] = (
        [],
        [],
        [],
        [],
    )
    seen: set[str] = set()
    last = (-1, -1)
    heading = True
    for record in steps:
        place = where.get(record.step)
        if place is None:
            problems.append(f"step {record.step!r} is not in the policy")
            continue
        if record.step in seen:
            problems.append(f"step {record.step!r} recorded twice")
            continue
        seen.add(record.step)
        if record.outcome is Outcome.SWITCHED_OFF:
            if not heading:
                problems.append(f"{record.step} switched off after steps that ran")
            if record.step == shape.tiers[-1]:
                problems.append("the terminal tier switched off")
            if record.detail != "policy" and not record.detail.startswith("flag:"):
                problems.append(f"{record.step} switched off from {record.detail!r}")
            kinds[3].append(record)
            continue
        heading = False
        if place < last:
            problems.append(f"{record.step} recorded out of declaration order")
        last = max(last, place)
        kinds[place[0]].append(record)
    return kinds


def decision_problems(
    decision: Decision, request: RequestContext, shapes: Mapping[str, Shape]
) -> list[str]:
    """:func:`trace_problems`, and whether the decision agrees with its trace and its request."""
    trace = decision.trace
    problems = trace_problems(trace, shapes)
    if trace.request_id != request.request_id:
        problems.append(f"request id {trace.request_id!r} for {request.request_id!r}")
    shape = shapes.get(trace.config_version)
    if shape is None:
        return problems
    budget = shape.budget_us
    if request.time_left is not None:
        budget = min(budget, round(request.time_left * 1e6))
    if abs(trace.budget_us - budget) > 1:  # the engine rounds (start + budget) - start
        problems.append(f"budget {trace.budget_us} us, expected {budget} us")
    group = ""
    if shape.holdout is not None and request.user_id:
        group = "holdout" if in_holdout(shape.holdout, request.user_id) else "treatment"
    if trace.group != group:
        problems.append(f"group {trace.group!r}, the user's is {group!r}")
    personalized = trace.served not in ("", shape.tiers[-1]) and not trace.shadow
    if (decision.signals is not None) != personalized:
        problems.append(f"signals {decision.signals is not None} when {trace.served} served")
    if trace.shadow and tuple(decision.candidates) != tuple(request.candidates):
        problems.append("a shadow decision changed the candidates")
    return problems


# --- the world ----------------------------------------------------------------------------------


def _session_value(n: int, now: float) -> bytes:
    clicks = [
        {"item": f"i{n}-{k}", "category": CATEGORIES[(n + k) % 4], "ts": now - 60 + k}
        for k in range(1 + n % 5)
    ]
    return json.dumps({"clicks": clicks, "event_time": now}).encode()


def _seed_sessions(server: RedisServer) -> None:
    now = time.time()
    for n in range(SESSIONS):
        server.set(f"s:s{n}", _session_value(n, now))


def _requests() -> list[RequestContext]:
    now = time.time()
    candidates = tuple(
        Candidate(f"c{n}", 1.0 - n / 40, CATEGORIES[n % 4], now - 3600.0 * n) for n in range(20)
    )
    warm = [
        RequestContext(
            user_id=f"u{n}",
            session_id=f"s{n}",
            request_id=f"r-u{n}",
            candidates=candidates,
            segment=("young", "old")[n % 2],
            # Some callers pass what their own deadline leaves: the budget is the smaller.
            time_left=(0.015, 0.004)[n % 2] if n % 7 == 3 else None,
        )
        for n in range(SESSIONS)
    ]
    cold = [
        RequestContext(
            user_id=f"x{n}", session_id=f"n{n}", request_id=f"r-x{n}", candidates=candidates
        )
        for n in range(COLD)
    ]
    return warm + cold


def _sources(watermark: Callable[[str], float]) -> dict[str, Any]:
    profiles = MemorySource(
        {f"u{n}": Affinities({CATEGORIES[n % 4]: 2.0, "books": 1.0}) for n in range(SESSIONS)}
    )
    segments = MemorySource({"young": Affinities({"toys": 1.0}), "old": Affinities({"books": 1.0})})
    return {"profile_store": profiles, "segment_store": segments, "watermark": watermark}


class _Watermark:
    """The stream processor's watermark, ``lag`` seconds behind the wall clock."""

    HIGH = 45.0  # above the guard's max_lag (30 s)
    LOW = 1.0  # below its resume_below (10 s)

    def __init__(self) -> None:
        self.lag = self.LOW

    def __call__(self, key: str) -> float:
        return time.time() - self.lag


class _Events:
    """Counts events by name (breaker events by breaker too), thread-safely; keeps nothing per
    decision, so a long soak does not grow it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        #: breaker:reason -> how often it opened so
        self.open_reasons: Counter[str] = Counter()
        self.internal_errors: deque[str] = deque(maxlen=20)

    def emit(self, event: str, /, **fields: Any) -> None:
        key = event
        if event.startswith("resilience.breaker."):
            key = f"{event}[{fields.get('breaker')}]"
        with self._lock:
            self.counts[key] += 1
            if event == "resilience.breaker.opened":
                self.open_reasons[f"{fields.get('breaker')}:{fields.get('reason')}"] += 1
            if event == ENGINE_INTERNAL_ERROR:
                self.internal_errors.append(str(fields.get("error")))

    def count(self, key: str) -> int:
        with self._lock:
            return self.counts[key]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


# --- decisions ----------------------------------------------------------------------------------


class _Tally:
    """One worker's account of its decisions. Overruns are kept only when above zero, in a
    compact array: the tally must not be what grows during a soak."""

    def __init__(self) -> None:
        self.decisions = 0
        self.failed = 0
        self.failures: list[str] = []
        self.problems = 0
        self.examples: list[str] = []
        self.on_time = 0
        self.overruns = array.array("q")
        self.max_used_us = 0
        #: the largest overrun and its trace
        self.worst: tuple[int, str] = (0, "")
        self.served: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()

    def fail(self, what: str) -> None:
        self.decisions += 1
        self.failed += 1
        if len(self.failures) < 10:
            self.failures.append(what)

    def take(self, result: object, request: RequestContext, shapes: Mapping[str, Shape]) -> None:
        if not isinstance(result, Decision):
            self.fail(f"returned {type(result).__name__}")
            return
        self.decisions += 1
        trace = result.trace
        try:
            problems = decision_problems(result, request, shapes)
        except Exception as exc:  # a checker that breaks must not pass for a clean trace
            problems = [f"the checker raised {type(exc).__name__}: {exc}"]
        if problems:
            self.problems += 1
            if len(self.examples) < 10:
                self.examples.append(f"{'; '.join(problems)}: {trace}")
        over = trace.used_us - trace.budget_us
        if over > 0:
            self.overruns.append(over)
            if over > self.worst[0]:
                self.worst = (over, str(trace))
        else:
            self.on_time += 1
        self.max_used_us = max(self.max_used_us, trace.used_us)
        self.served[trace.served] += 1
        self.reasons[trace.reason.value] += 1
        self.versions[trace.config_version] += 1


def _merged(tallies: Sequence[_Tally]) -> dict[str, Any]:
    decisions = sum(t.decisions for t in tallies)
    served: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    overruns = array.array("q")
    for tally in tallies:
        served.update(tally.served)
        reasons.update(tally.reasons)
        versions.update(tally.versions)
        overruns.extend(tally.overruns)
    on_time = sum(t.on_time for t in tallies)
    return {
        "decisions": decisions,
        "failed": sum(t.failed for t in tallies),
        "failures": [f for t in tallies for f in t.failures][:10],
        "trace_problems": sum(t.problems for t in tallies),
        "problem_examples": [e for t in tallies for e in t.examples][:10],
        "served_by": {k: round(v / max(decisions, 1), 4) for k, v in served.most_common()},
        "reasons": dict(reasons.most_common()),
        "versions": dict(versions),
        "max_used_ms": round(max((t.max_used_us for t in tallies), default=0) / 1e3, 3),
        "overrun_ms": _spread(on_time, sorted(overruns)),
        "worst_trace": max((t.worst for t in tallies), default=(0, ""))[1],
    }


def _spread(zeros: int, overruns: Sequence[int]) -> dict[str, Any]:
    """Percentiles of max(0, used - budget) over every decision, ``zeros`` of them on time."""
    n = zeros + len(overruns)

    def at(q: float) -> float:
        if n == 0:
            return 0.0
        rank = min(n - 1, int(q * n))
        return 0.0 if rank < zeros else overruns[rank - zeros] / 1e3

    return {
        "over_budget": len(overruns),
        "p50": at(0.5),
        "p99": at(0.99),
        "p99.9": at(0.999),
        "max": overruns[-1] / 1e3 if overruns else 0.0,
    }


def _sync_worker(
    engine: Engine,
    requests: Sequence[RequestContext],
    rng: random.Random,
    stop: threading.Event,
    tally: _Tally,
    shapes: Mapping[str, Shape],
    pace: float,
) -> None:
    order = list(requests)
    rng.shuffle(order)
    n = 0
    while not stop.is_set():
        request = order[n % len(order)]
        n += 1
        try:
            result: object = engine.decide(request)
        except Exception as exc:  # the engine promises never to raise: count it, go on
            tally.fail(f"raised {type(exc).__name__}: {exc}")
        else:
            tally.take(result, request, shapes)
        time.sleep(pace)


async def _async_worker(
    engine: Engine,
    requests: Sequence[RequestContext],
    rng: random.Random,
    stop: threading.Event,
    tally: _Tally,
    shapes: Mapping[str, Shape],
    pace: float,
) -> None:
    order = list(requests)
    rng.shuffle(order)
    n = 0
    while not stop.is_set():
        request = order[n % len(order)]
        n += 1
        try:
            result: object = await engine.adecide(request)
        except Exception as exc:
            tally.fail(f"raised {type(exc).__name__}: {exc}")
        else:
            tally.take(result, request, shapes)
        # A decision served from memory never yields; the pause also lets the other tasks in.
        await asyncio.sleep(pace)


class _Lateness:
    """How late 1 ms sleeps wake, in microseconds: the floor under the overruns. A decision
    cannot be cut before its thread or loop runs again, so a stall of the machine, the GIL or
    the loop shows here as well as in the overruns."""

    SLEEP = 0.001

    def __init__(self) -> None:
        self.samples = array.array("q")

    def add(self, slept: float) -> None:
        self.samples.append(max(0, round((slept - self.SLEEP) * 1e6)))

    def spread(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"samples": 0, "p50": 0.0, "p99.9": 0.0, "max": 0.0}
        return {
            "samples": len(ordered),
            "p50": ordered[len(ordered) // 2] / 1e3,
            "p99.9": ordered[min(len(ordered) - 1, int(0.999 * len(ordered)))] / 1e3,
            "max": ordered[-1] / 1e3,
        }


def _thread_lateness(stop: threading.Event, lateness: _Lateness) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        time.sleep(_Lateness.SLEEP)
        lateness.add(time.perf_counter() - began)


async def _loop_lag(stop: threading.Event, lateness: _Lateness) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(_Lateness.SLEEP)
        lateness.add(time.perf_counter() - began)


class _AsyncSide:
    """The asyncio loop, in a thread of its own: warm-up, then ``tasks`` deciding tasks until
    ``stop``, then, once ``close_now`` is set, the engine's ``aclose`` (which closes this loop's
    Redis connections, as a service's shutdown would)."""

    def __init__(
        self,
        engine: Engine,
        requests: Sequence[RequestContext],
        rng: random.Random,
        tasks: int,
        shapes: Mapping[str, Shape],
        pace: float,
        stop: threading.Event,
    ) -> None:
        self._engine = engine
        self._requests = requests
        self._seeds = [rng.getrandbits(32) for _ in range(tasks)]
        self._shapes = shapes
        self._pace = pace
        self._stop = stop
        self.tallies = [_Tally() for _ in range(tasks)]
        #: how late the loop woke from 1 ms sleeps (us): its own stalls, beside the overruns
        self.lag = _Lateness()
        self.ready = threading.Event()
        self.close_now = threading.Event()
        self.closed = False
        self.error: str | None = None
        self.thread = threading.Thread(target=self._main, name="soak-asyncio")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    async def _run(self) -> None:
        try:
            for request in self._requests:  # the pool of this loop, and a filled stale cache
                await self._engine.adecide(request)
            self.ready.set()
            await asyncio.gather(
                _loop_lag(self._stop, self.lag),
                *(
                    _async_worker(
                        self._engine,
                        self._requests,
                        random.Random(seed),
                        self._stop,
                        tally,
                        self._shapes,
                        self._pace,
                    )
                    for seed, tally in zip(self._seeds, self.tallies, strict=True)
                ),
            )
            await asyncio.to_thread(self.close_now.wait, 60.0)
        finally:
            await self._engine.aclose()
            self.closed = True


# --- chaos --------------------------------------------------------------------------------------

#: Episodes begin and end a few moves later; the instants are one move.
EPISODES = (
    "kill_switch",
    "step_off",
    "policy_shadow",
    "guard_shadow",
    "flag_feed_down",
    "lag",
    "redis_down",
    "redis_frozen",
)
INSTANTS = ("reload_ok", "reload_ok", "reload_refused", "reload_refused")
_REDIS_EPISODES = ("redis_down", "redis_frozen")

#: What the chaos counts: each must have happened at least once in a run.
ACTIONS = (
    "reload_ok",
    "reload_refused",
    "kill_switch_on",
    "kill_switch_off",
    "step_off",
    "step_on",
    "policy_shadow_on",
    "policy_shadow_off",
    "guard_shadow_on",
    "guard_shadow_off",
    "flag_feed_down",
    "flag_feed_up",
    "lag_high",
    "lag_low",
    "redis_stop",
    "redis_start",
    "redis_pause",
    "redis_resume",
)


def _round(rng: random.Random) -> list[tuple[str, bool]]:
    """One round of moves ``(kind, begins)``: every episode and instant once, in a seeded order,
    each episode ending after one to four of the next tokens. Only one Redis episode is open at
    a time (a frozen server cannot also be down); none is left open at the end."""
    tokens = [*EPISODES, *INSTANTS]
    rng.shuffle(tokens)
    moves: list[tuple[str, bool]] = []
    open_: dict[str, int] = {}
    for token in tokens:
        if token in _REDIS_EPISODES:
            for other in _REDIS_EPISODES:
                if open_.pop(other, None) is not None:
                    moves.append((other, False))
        moves.append((token, True))
        for kind in list(open_):
            open_[kind] -= 1
            if open_[kind] == 0:
                del open_[kind]
                moves.append((kind, False))
        if token in EPISODES:
            # Outages last longer: personalization must be on for part of one (no kill switch,
            # no lag) for the breaker to see it.
            open_[token] = rng.randint(2, 4) if token in _REDIS_EPISODES else rng.randint(1, 3)
    moves += [(kind, False) for kind in open_]
    return moves


class _Chaos:
    """Plays rounds (:func:`_round`) against the engine, the flags, the watermark and Redis."""

    def __init__(
        self,
        engine: Engine,
        server: RedisServer,
        feed: HandFlags,
        watermark: _Watermark,
        texts: Mapping[str, str],
        invalid: Mapping[str, str],
        rng: random.Random,
        gaps: tuple[float, float],
    ) -> None:
        self.engine = engine
        self.server = server
        self.feed = feed
        self.watermark = watermark
        self.texts = texts
        self.invalid = invalid
        self.rng = rng
        self.gaps = gaps
        self.expected = {name: shapes_of([text]) for name, text in texts.items()}
        self.variant = "reference"
        #: the version the last reload should have made live
        self.expected_version = next(iter(self.expected[self.variant]))
        self.live_versions = {engine.config_version(POLICY)}
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []
        self.open: set[str] = set()
        self.error: str | None = None

    def play(self, until: float, stop: threading.Event) -> None:
        """Rounds of moves until ``until`` (monotonic), and one whole round at least, so that a
        short run has seen every kind; then end every open episode."""
        try:
            first = True
            while not stop.is_set() and (first or time.monotonic() < until):
                for kind, begins in _round(self.rng):
                    if stop.wait(self.rng.uniform(*self.gaps)):
                        return
                    if not first and time.monotonic() >= until:
                        return
                    self.move(kind, begins)
                first = False
        except Exception as exc:  # reported, never silent: a broken chaos is a failed soak
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.restore()

    def restore(self) -> None:
        for kind in sorted(self.open):
            try:
                self.move(kind, begins=False)
            except Exception as exc:
                self.error = self.error or f"restoring {kind}: {type(exc).__name__}: {exc}"

    def move(self, kind: str, begins: bool) -> None:
        if kind == "reload_ok":
            self._reload_ok()
        elif kind == "reload_refused":
            self._reload_refused()
        else:
            (self.open.add if begins else self.open.discard)(kind)
            getattr(self, f"_{kind}")(begins)

    def _reload_ok(self) -> None:
        self.variant = self.rng.choice(sorted(set(self.texts) - {self.variant}))
        result = self.engine.reload(self.texts[self.variant])
        (version,) = self.expected[self.variant]
        self.expected_version = version
        if not result.ok or result.versions.get(POLICY) != version:
            self.problems.append(
                f"reload to {self.variant}: ok {result.ok}, version "
                f"{result.versions.get(POLICY)} (expected {version}), {list(result.issues)[:2]}"
            )
        self.live_versions.add(self.engine.config_version(POLICY))
        self.counts["reload_ok"] += 1

    def _reload_refused(self) -> None:
        name = self.rng.choice(sorted(self.invalid))
        before = self.engine.versions()
        result = self.engine.reload(self.invalid[name])
        if result.ok or not result.issues or result.versions != before:
            self.problems.append(
                f"invalid text {name}: ok {result.ok}, {len(result.issues)} issues, running "
                f"{result.versions} (was {before})"
            )
        if self.engine.versions() != before:
            self.problems.append(f"invalid text {name} changed the running versions")
        self.counts["reload_refused"] += 1

    def _kill_switch(self, begins: bool) -> None:
        if begins:
            self.feed.set(POLICY, "off")
        else:
            self.feed.clear(POLICY)
        self.counts["kill_switch_on" if begins else "kill_switch_off"] += 1

    def _step_off(self, begins: bool) -> None:
        if begins:
            self.feed.set(f"{POLICY}.session", "off")
        else:
            self.feed.clear(f"{POLICY}.session")
        self.counts["step_off" if begins else "step_on"] += 1

    def _policy_shadow(self, begins: bool) -> None:
        flags = self.engine.flags
        if begins:
            flags.set(POLICY, "shadow", reason="chaos soak", by="soak")
        else:
            flags.clear(POLICY, reason="chaos soak", by="soak")
        self.counts["policy_shadow_on" if begins else "policy_shadow_off"] += 1

    def _guard_shadow(self, begins: bool) -> None:
        flags = self.engine.flags
        if begins:
            flags.set(f"{POLICY}.stream_lag", "shadow", reason="chaos soak", by="soak")
        else:
            flags.clear(f"{POLICY}.stream_lag", reason="chaos soak", by="soak")
        self.counts["guard_shadow_on" if begins else "guard_shadow_off"] += 1

    def _flag_feed_down(self, begins: bool) -> None:
        if begins:
            self.feed.unreachable("chaos soak")
        else:
            # Readable again: any delivery carries the whole snapshot it holds.
            self.feed.clear(f"{POLICY}.exploration")
        self.counts["flag_feed_down" if begins else "flag_feed_up"] += 1

    def _lag(self, begins: bool) -> None:
        self.watermark.lag = _Watermark.HIGH if begins else _Watermark.LOW
        if begins:
            # The episode counts from when the guard has read the lag (it polls every 20 ms on
            # a thread of its own): a lag too brief to be seen would test nothing.
            wait_for(self._lag_seen, timeout=1.0)
        self.counts["lag_high" if begins else "lag_low"] += 1

    def _lag_seen(self) -> bool:
        return any(
            r.name == "resilience_stream_lag_tripped" and r.value == 1.0
            for r in self.engine.readings()
        )

    def _redis_down(self, begins: bool) -> None:
        if begins:
            self.server.kill()
            self.counts["redis_stop"] += 1
        else:
            self.server.start()
            _seed_sessions(self.server)  # no persistence: a restarted server is empty
            self.counts["redis_start"] += 1

    def _redis_frozen(self, begins: bool) -> None:
        if begins:
            self.server.pause()
            self.counts["redis_pause"] += 1
        else:
            self.server.resume()
            self.counts["redis_resume"] += 1


# --- resources ----------------------------------------------------------------------------------


def _redis_clients(port: int) -> int | None:
    """Clients connected to the server, not counting this probe's own connection; ``None``
    when the server cannot answer (down or frozen)."""
    import redis  # noqa: PLC0415 - the redis extra, as the engine imports it
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415

    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return int(client.info("clients")["connected_clients"]) - 1
    except redis.RedisError:
        return None
    finally:
        client.close()


def _sample(port: int, started: float) -> dict[str, Any]:
    """Resources of the moment. Mid-run the server is down or frozen about half the time: the
    sample waits (bounded) for a moment it answers, so that connections are counted too."""
    clients: list[int] = []

    def answered() -> bool:
        count = _redis_clients(port)
        if count is not None:
            clients.append(count)
        return bool(clients)

    wait_for(answered, timeout=3.0, step=0.05)
    # The probe's socket is closed by now: it is not among the descriptors.
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return {
        "at_s": round(time.monotonic() - started, 2),
        "rss_mib": round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
        "objects": len(gc.get_objects()),
        "threads": threading.active_count(),
        "os_threads": len(os.listdir("/proc/self/task")),
        # Which ones, so that "after" can name threads the engine left (counts alone mislead in
        # a test session, where threads of earlier tests may end during the soak).
        "thread_ids": sorted(t.ident or 0 for t in threading.enumerate()),
        "os_thread_ids": sorted(int(task) for task in os.listdir("/proc/self/task")),
        "fds": fds,
        "redis_clients": clients[0] if clients else None,
    }


def _thread_ids() -> dict[str, list[int]]:
    return {
        "thread_ids": [t.ident or 0 for t in threading.enumerate()],
        "os_thread_ids": [int(task) for task in os.listdir("/proc/self/task")],
    }


def _new_threads(baseline: Mapping[str, Any], now: Mapping[str, Any]) -> int:
    """Threads (Python's or the OS's) alive in ``now`` that were not at ``baseline``."""
    return len(set(now["thread_ids"]) - set(baseline["thread_ids"])) + len(
        set(now["os_thread_ids"]) - set(baseline["os_thread_ids"])
    )


def _settled(baseline: dict[str, Any], port: int) -> bool:
    """Whether what the engine started is gone (threads exit, servers see sockets close a
    moment after close() returns)."""
    return (
        not _new_threads(baseline, _thread_ids())
        and len(os.listdir("/proc/self/fd")) <= baseline["fds"] + _FD_SLACK
        and _redis_clients(port) == 0
    )


def bound_verdicts(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each of :data:`BOUNDS`: ``{"met": bool, "detail": str}``."""
    modes = [results["sync"], results["async"]]
    resources = results["resources"]
    base, after = resources["baseline"], resources["after"]
    half, full = resources["run"][1], resources["run"][-1]
    failed = sum(m["failed"] for m in modes)
    problems = sum(m["trace_problems"] for m in modes)
    chaos = len(results["chaos"]["problems"]) + (results["chaos"]["error"] is not None)
    errors = results["events"].get(ENGINE_INTERNAL_ERROR, 0)
    recovered = results["recovered_s"]
    drill = results["drill"]
    rss_growth = full["rss_mib"] - half["rss_mib"]
    objects_growth = (full["objects"] - half["objects"]) / max(half["objects"], 1)
    checks = {
        "failed": (failed == 0, f"{failed} failed"),
        "trace_problems": (problems == 0, f"{problems} decisions with problems"),
        "chaos_problems": (chaos == 0, f"{chaos} problems"),
        "internal_errors": (errors == 0, f"{errors} events"),
        "recovered": (
            None not in (recovered, drill["opened_s"], drill["recovered_s"]),
            f"in {recovered} s; a clean outage then opened the breaker in {drill['opened_s']} s "
            f"and the engine recovered from it in {drill['recovered_s']} s",
        ),
        "threads": (
            _new_threads(base, after) == 0,
            f"{base['threads']} -> {after['threads']} (OS: {base['os_threads']} -> "
            f"{after['os_threads']}); {_new_threads(base, after)} alive after close that were "
            "not before the engine was built",
        ),
        "fds": (after["fds"] <= base["fds"] + _FD_SLACK, f"{base['fds']} -> {after['fds']}"),
        "redis_clients": (after["redis_clients"] == 0, f"{after['redis_clients']} after close"),
        "rss_growth": (
            rss_growth <= _RSS_GROWTH_MIB,
            f"{half['rss_mib']} -> {full['rss_mib']} MiB ({rss_growth:+.1f})",
        ),
        "objects_growth": (
            objects_growth <= _OBJECTS_GROWTH,
            f"{half['objects']} -> {full['objects']} ({objects_growth:+.1%})",
        ),
    }
    return {name: {"met": met, "detail": detail} for name, (met, detail) in checks.items()}


# --- the run ------------------------------------------------------------------------------------


def run(
    *,
    seconds: float,
    seed: int,
    threads: int = 4,
    tasks: int = 16,
    pace: float = 0.004,
    gaps: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Run the soak for ``seconds`` of chaos; returns every figure, the bounds and ``passed``.

    Args:
        seconds: how long the chaos lasts (recovery and shutdown come after).
        seed: seeds the chaos schedule, the workers' request orders and the engine.
        threads: threads calling ``decide``.
        tasks: asyncio tasks calling ``adecide``, on one loop.
        pace: seconds each thread waits between its decisions; each task waits
            ``pace * tasks / threads``, so that both sides offer ``threads / pace`` a second.
        gaps: the range of seconds between chaos moves; by default scaled so that a run holds
            at least two rounds of every move.

    Raises:
        FileNotFoundError: ``redis-server`` is not installed.
    """
    rng = random.Random(seed)
    if gaps is None:
        per_round = 2 * len(EPISODES) + len(INSTANTS)
        mean = min(0.4, seconds / (2.5 * per_round))
        gaps = (mean / 2, mean * 1.5)
    server = RedisServer()
    server.start()
    try:
        return _run(server, seconds, rng, seed, threads, tasks, pace, gaps)
    finally:
        if server.process is not None:
            server.stop()


def _run(
    server: RedisServer,
    seconds: float,
    rng: random.Random,
    seed: int,
    threads: int,
    tasks: int,
    pace: float,
    gaps: tuple[float, float],
) -> dict[str, Any]:
    _seed_sessions(server)
    texts = {name: policy_text(server.url, name) for name in VARIANTS}
    invalid = {name: edit(texts["reference"]) for name, edit in INVALID.items()}
    shapes = shapes_of(list(texts.values()))
    requests = _requests()
    started = time.monotonic()
    # Imported before the baseline: what the client library keeps once imported is not the
    # engine's.
    _redis_clients(server.port)
    baseline = _sample(server.port, started)

    events = _Events()
    watermark = _Watermark()
    feed = HandFlags("redis")
    engine = Engine(
        load_policies(texts["reference"]),
        _sources(watermark),
        events=events,
        seed=seed,
        flag_feeds=[feed],
        # Replaced generations retire within the run, so their pools' closing is soaked too.
        retire_after=0.5,
    )
    stop = threading.Event()
    # Each task pauses longer, so that both sides offer the same load: threads / pace a second.
    async_side = _AsyncSide(engine, requests, rng, tasks, shapes, pace * tasks / threads, stop)
    sync_tallies = [_Tally() for _ in range(threads)]
    workers = [
        threading.Thread(
            target=_sync_worker,
            args=(engine, requests, random.Random(rng.getrandbits(32)), stop, tally, shapes, pace),
            name=f"soak-sync-{n}",
        )
        for n, tally in enumerate(sync_tallies)
    ]
    chaos = _Chaos(
        engine, server, feed, watermark, texts, invalid, random.Random(rng.getrandbits(32)), gaps
    )
    thread_lateness = _Lateness()
    probe_thread = threading.Thread(
        target=_thread_lateness, args=(stop, thread_lateness), name="soak-lateness"
    )
    chaos_thread: threading.Thread | None = None
    samples: list[dict[str, Any]] = []
    recovered: float | None = None
    drill: dict[str, float | None] = {"opened_s": None, "recovered_s": None}
    cpu = 0.0
    during_chaos: dict[str, int] = {}
    try:
        for request in requests:  # the sync pool, and a filled stale cache
            engine.decide(request)
        async_side.thread.start()
        async_side.ready.wait(30.0)
        gc.collect()
        warm = _sample(server.port, started)
        for worker in workers:
            worker.start()
        probe_thread.start()
        began = time.monotonic()
        cpu_began = time.process_time()
        until = began + seconds
        chaos_thread = threading.Thread(target=chaos.play, args=(until, stop), name="soak-chaos")
        chaos_thread.start()
        for quarter in (0.25, 0.5, 0.75, 1.0):
            stop.wait(max(0.0, began + seconds * quarter - time.monotonic()))
            samples.append({"share": quarter, **_sample(server.port, started)})
        cpu = (time.process_time() - cpu_began) / (time.monotonic() - began)
        chaos_thread.join(30.0)
        during_chaos = events.snapshot()
        probe = _probe(requests, shapes[chaos.expected_version])
        recovered = _recover(engine, probe)
        if recovered is not None:
            drill = _drill(engine, server, events, probe)
    finally:
        stop.set()
        for worker in (*workers, probe_thread):
            if worker.ident is not None:
                worker.join(30.0)
        if chaos_thread is not None:
            chaos_thread.join(30.0)
        async_side.close_now.set()
        if async_side.thread.ident is not None:
            async_side.thread.join(60.0)
        if not async_side.closed:
            engine.close()
        if server.process is None:  # the chaos ended inside an outage it could not end
            server.start()
    settled = wait_for(lambda: _settled(baseline, server.port), timeout=5.0)
    gc.collect()
    after = _sample(server.port, started)

    results: dict[str, Any] = {
        "seconds": seconds,
        "seed": seed,
        "threads": threads,
        "tasks": tasks,
        "pace_ms": pace * 1e3,
        "budget_ms": shapes_of([texts["reference"]]).popitem()[1].budget_us / 1e3,
        "port": server.port,
        "sync": _merged(sync_tallies),
        "async": _merged(async_side.tallies),
        "async_error": async_side.error,
        "lateness_ms": {"thread": thread_lateness.spread(), "loop": async_side.lag.spread()},
        "chaos": {
            "actions": {kind: chaos.counts[kind] for kind in ACTIONS},
            "problems": chaos.problems,
            "error": chaos.error,
            "versions_live": sorted(chaos.live_versions),
        },
        "events": dict(sorted(events.snapshot().items())),
        "breaker_open_reasons": dict(sorted(events.open_reasons.items())),
        "internal_errors": list(events.internal_errors),
        "cpu_share": round(cpu, 3),
        "events_during_chaos": {
            k: v for k, v in sorted(during_chaos.items()) if k.startswith("resilience.breaker.")
        },
        "recovered_s": recovered,
        "drill": drill,
        "settled": settled,
        "resources": {"baseline": baseline, "warm": warm, "run": samples, "after": after},
        "bounds": BOUNDS,
    }
    seen = set(results["sync"]["versions"]) | set(results["async"]["versions"])
    never_live = sorted(seen - chaos.live_versions)
    if never_live:
        chaos.problems.append(f"decisions ran versions no reload made live: {never_live}")
    if async_side.error is not None:
        chaos.problems.append(f"the asyncio side failed: {async_side.error}")
    results["verdicts"] = verdicts = bound_verdicts(results)
    results["passed"] = all(v["met"] for v in verdicts.values())
    return results


def _probe(requests: Sequence[RequestContext], shape: Shape) -> RequestContext:
    """A warm user in the treatment group, with the policy's full budget: one the first tier
    serves when all is well."""
    return next(
        r
        for r in requests
        if r.time_left is None
        and r.user_id is not None
        and r.user_id.startswith("u")
        and (shape.holdout is None or not in_holdout(shape.holdout, r.user_id))
    )


def _recover(engine: Engine, probe: RequestContext) -> float | None:
    """Seconds until the engine serves ``probe`` from its first tier, three times running,
    with the session breaker closed; ``None`` if not within the bound. The workers go on
    deciding meanwhile: recovery happens under load."""
    began = time.monotonic()
    streak = 0

    def primary() -> bool:
        nonlocal streak
        healthy = (
            engine.breaker("session_store").snapshot().state == "closed"
            and engine.decide(probe).trace.reason is Reason.PRIMARY
        )
        streak = streak + 1 if healthy else 0
        return streak >= 3

    if wait_for(primary, timeout=_RECOVERY_TIMEOUT, step=0.02):
        return round(time.monotonic() - began, 2)
    return None


def _drill(
    engine: Engine, server: RedisServer, events: _Events, probe: RequestContext
) -> dict[str, float | None]:
    """A clean outage after the chaos: Redis killed until the session breaker opens, then
    started again until the engine has recovered. Whatever the chaos did, the breaker must still
    open on an outage and close after it."""
    key = "resilience.breaker.opened[session_store]"
    before = events.count(key)
    began = time.monotonic()
    server.kill()
    try:
        opened = wait_for(lambda: events.count(key) > before, timeout=_RECOVERY_TIMEOUT)
        opened_s = round(time.monotonic() - began, 2) if opened else None
    finally:
        server.start()
        _seed_sessions(server)
    return {"opened_s": opened_s, "recovered_s": _recover(engine, probe)}


# --- the report ---------------------------------------------------------------------------------


def report(results: Mapping[str, Any]) -> str:
    """The run as text, for a terminal."""
    lines = [
        f"chaos soak: {results['seconds']:g} s of chaos, seed {results['seed']}, "
        f"{results['threads']} threads (decide) + {results['tasks']} asyncio tasks (adecide), "
        f"each side offering {results['threads'] / results['pace_ms'] * 1e3:,.0f} decisions/s; "
        "budget "
        f"{results['budget_ms']:g} ms; private redis-server on 127.0.0.1:{results['port']}",
        "chaos actions: "
        + ", ".join(f"{kind} {count}" for kind, count in results["chaos"]["actions"].items()),
    ]
    events = results["events"]
    observed = {
        "session breaker opened": events.get("resilience.breaker.opened[session_store]", 0),
        "half-opened": events.get("resilience.breaker.half_opened[session_store]", 0),
        "closed": events.get("resilience.breaker.closed[session_store]", 0),
        "error_rate guard opened": events.get("resilience.breaker.opened[search.error_rate]", 0),
        "error_rate closed": events.get("resilience.breaker.closed[search.error_rate]", 0),
        "stream lag tripped": events.get("resilience.stream_lag.tripped", 0),
        "recovered": events.get("resilience.stream_lag.recovered", 0),
        "flag changes": events.get("resilience.flag.changed", 0),
        "reloads": events.get("resilience.policy.reloaded", 0),
        "refused": events.get("resilience.policy.reload_failed", 0),
    }
    lines.append("observed: " + ", ".join(f"{k} {v}" for k, v in observed.items()))
    chaos_events = results["events_during_chaos"]
    lines.append(
        "breaker transitions during the chaos alone: "
        + (
            ", ".join(
                f"{k.removeprefix('resilience.breaker.')} {v}" for k, v in chaos_events.items()
            )
            or "none"
        )
    )
    lines.append(
        "breakers opened (breaker:reason): "
        + ", ".join(f"{k} {v}" for k, v in results["breaker_open_reasons"].items())
    )
    recovered, drill = results["recovered_s"], results["drill"]
    lines.append(
        "after the chaos: recovered in "
        + (f"{recovered:g} s" if recovered is not None else "NOT within 10 s")
        + "; a clean outage then opened the breaker in "
        + (f"{drill['opened_s']:g} s" if drill["opened_s"] is not None else "NO time")
        + " and the engine recovered from it in "
        + (f"{drill['recovered_s']:g} s" if drill["recovered_s"] is not None else "NO time")
    )
    lines.append(f"process CPU during the chaos: {results['cpu_share']:.0%} of one core")
    lines.append("")
    header = ("mode", "decisions", "failed", "problems", "over", "p50", "p99", "p99.9", "max")
    lines.append("overrun past the budget, ms (over: decisions past it)")
    lines.append("  ".join(f"{h:>9}" for h in header))
    for mode in ("sync", "async"):
        figures = results[mode]
        spread = figures["overrun_ms"]
        cells = (
            mode,
            figures["decisions"],
            figures["failed"],
            figures["trace_problems"],
            spread["over_budget"],
            f"{spread['p50']:.3f}",
            f"{spread['p99']:.3f}",
            f"{spread['p99.9']:.3f}",
            f"{spread['max']:.3f}",
        )
        lines.append("  ".join(f"{c!s:>9}" for c in cells))
    for mode in ("sync", "async"):
        figures = results[mode]
        served = ", ".join(f"{k or 'none'} {v:.1%}" for k, v in figures["served_by"].items())
        reasons = ", ".join(f"{k} {v}" for k, v in figures["reasons"].items())
        lines.append(f"{mode} served: {served}")
        lines.append(f"{mode} reasons: {reasons}")
        for example in figures["failures"] + figures["problem_examples"]:
            lines.append(f"  {example}")
        if figures["worst_trace"]:
            worst = figures["worst_trace"].replace("\n", "\n    ")
            lines.append(f"{mode} worst overrun: {worst}")
    for where, spread in results["lateness_ms"].items():
        lines.append(
            f"{where} wake-up lateness of a 1 ms sleep beside the decisions (ms): p50 "
            f"{spread['p50']:.3f}, p99.9 {spread['p99.9']:.3f}, max {spread['max']:.3f}"
        )
    lines.append("")
    resources = results["resources"]
    columns = [
        ("baseline", resources["baseline"]),
        ("warm", resources["warm"]),
        *((f"{s['share']:.0%}", s) for s in resources["run"]),
        ("after", resources["after"]),
    ]
    lines.append(f"{'resources':>14}" + "".join(f"{name:>10}" for name, _ in columns))
    for key in ("at_s", "rss_mib", "objects", "threads", "os_threads", "fds", "redis_clients"):
        row = "".join(f"{'-' if s[key] is None else s[key]!s:>10}" for _, s in columns)
        lines.append(f"{key:>14}{row}")
    lines.append("(redis_clients: the engine's connections, as the server counts them, at the")
    lines.append(
        " first moment from the sample's on that the server answered; '-': not within 3 s)"
    )
    lines.append("")
    lines.append("bounds:")
    for bound, verdict in results["verdicts"].items():
        state = "met" if verdict["met"] else "MISSED"
        lines.append(f"  {bound}: {state} ({verdict['detail']}; {BOUNDS[bound]})")
    for problem in results["chaos"]["problems"][:10]:
        lines.append(f"  chaos problem: {problem}")
    if results["chaos"]["error"]:
        lines.append(f"  chaos error: {results['chaos']['error']}")
    for error in results["internal_errors"]:
        lines.append(f"  internal error: {error}")
    lines.append(f"soak: {'PASSED' if results['passed'] else 'FAILED'}")
    return "\n".join(lines)
