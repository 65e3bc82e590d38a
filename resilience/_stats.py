"""Decision counters: what the request path counts, as plain integers that metrics read later.

A decision costs a few microseconds, and prometheus-client's cheapest update (a pre-bound
``inc()``) about one; a decision updates a dozen series. So the request path never touches a
metrics library: it adds to plain integers, and a collector turns them into metrics when it is
scraped (:mod:`resilience.metrics`). Each plan's counts sit in a flat list at positions fixed
when the plan is built (:class:`Layout`): counting a decision is a few list increments, not a
dictionary update per step.

The counts are sharded per thread: a thread writes only its own shard, so no update is
ever lost and no lock is taken on the request path; a scrape sums the shards. The shard of a
thread that has ended is folded into the running totals at the next scrape, so threads that come
and go (a pool that recycles its workers) do not grow memory.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._durations import Duration
from ._outcomes import Outcome
from ._trace import Reason, StepRecord, Trace

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DecisionStats",
    "DecisionTotals",
    "Layout",
    "MetricsSettings",
    "bound_label",
]

K = TypeVar("K")

#: Upper bounds (seconds) of the decision duration histogram: dense around the 30 ms budget,
#: where a cut-off decision lands, sparse below it, and a few beyond it for overruns.
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.032,
    0.035,
    0.05,
    0.1,
    0.5,
)


class MetricsSettings(BaseModel):
    """``settings.metrics``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = Field(
        default=True,
        description="Count decisions, step outcomes and durations for metrics (plain counters, "
        "read when scraped). Off: nothing is counted on the request path.",
    )
    duration_buckets: tuple[Duration, ...] = Field(
        default=DEFAULT_DURATION_BUCKETS,
        strict=False,  # YAML gives a list; each bound is still checked as a duration
        min_length=1,
        max_length=50,
        description="Upper bounds of the decision duration histogram, increasing. Read when "
        "the engine is built; a reload keeps the running ones.",
    )

    @field_validator("duration_buckets")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        # Counted in whole microseconds: two bounds within one are one bucket.
        micros = [round(bound * 1e6) for bound in value]
        if micros[0] < 1 or any(b <= a for a, b in itertools.pairwise(micros)):
            raise ValueError(
                "the bounds must increase strictly, at least 1us apart, from 1us up, "
                "e.g. [5ms, 10ms, 30ms, 50ms]"
            )
        return value


DecisionKey = tuple[str, str, str, bool]
"""(policy, tier served or ``""``, reason, shadow)"""

StepKey = tuple[str, str, str]
"""(policy, step id, outcome)"""


class DecisionTotals(NamedTuple):
    """Every count since the engine started (or since it forked), summed over threads.

    Attributes:
        decisions: (policy, tier served, reason, shadow) -> decisions.
        steps: (policy, step, outcome) -> steps that ended so.
        durations: policy -> the histogram's counts per bucket (the last one: above every
            bound), then the sum of durations in microseconds.
        bounds_us: the histogram's upper bounds, in microseconds.
    """

    decisions: dict[DecisionKey, int]
    steps: dict[StepKey, int]
    durations: dict[str, list[int]]
    bounds_us: tuple[int, ...]


_REASONS: dict[Reason, int] = {reason: index for index, reason in enumerate(Reason)}
_OUTCOMES: dict[Outcome, int] = {outcome: index for index, outcome in enumerate(Outcome)}


class Layout:
    """Where each count of one plan sits in a flat row of integers, so that counting a
    decision is a few list increments instead of a dictionary update per step.

    A row holds, in order: one block of reasons per tier the plan may serve (and one for no
    tier), one block of outcomes per step, the duration buckets with +Inf, and the sum of
    durations in microseconds. Made once per built policy and mode; plans share it.

    Args:
        policy: the policy's name.
        steps: every step id of the policy, guards then tiers then post steps.
        tiers: the ids of its tiers, in order.
        shadow: the plan runs in shadow mode.
        buckets: the number of histogram bounds.
    """

    __slots__ = (
        "__weakref__",
        "histogram",
        "policy",
        "served",
        "shadow",
        "steps",
        "tiers",
        "width",
    )

    def __init__(
        self, policy: str, steps: Sequence[str], tiers: Sequence[str], shadow: bool, buckets: int
    ) -> None:
        self.policy = policy
        self.shadow = shadow
        self.tiers = ("", *tiers)
        reasons, outcomes = len(_REASONS), len(_OUTCOMES)
        #: tier served ("" for none) -> the first index of its block of reasons
        self.served = {tier: index * reasons for index, tier in enumerate(self.tiers)}
        base = len(self.tiers) * reasons
        #: step id -> the first index of its block of outcomes
        self.steps = {step: base + index * outcomes for index, step in enumerate(steps)}
        self.histogram = base + len(self.steps) * outcomes
        self.width = self.histogram + buckets + 2  # the bounds, +Inf, the sum

    def unpack(self, row: Sequence[int], into: _Shard) -> None:
        """Add ``row``'s counts to ``into``, keyed by name."""
        policy, shadow = self.policy, self.shadow
        reasons = list(_REASONS)
        outcomes = list(_OUTCOMES)
        decisions, steps = into.decisions, into.steps
        for tier, first in self.served.items():
            for offset, reason in enumerate(reasons):
                count = row[first + offset]
                if count:
                    key = (policy, tier, str(reason), shadow)
                    decisions[key] = decisions.get(key, 0) + count
        for step, first in self.steps.items():
            for offset, outcome in enumerate(outcomes):
                count = row[first + offset]
                if count:
                    skey = (policy, step, str(outcome))
                    steps[skey] = steps.get(skey, 0) + count
        _add_row(into.durations, policy, row[self.histogram :])


class _Shard:
    __slots__ = ("decisions", "durations", "owner", "rows", "steps")

    def __init__(self, owner: threading.Thread | None) -> None:
        #: counts of planned decisions, one row per layout (see Layout)
        self.rows: dict[Layout, list[int]] = {}
        #: counts of everything else (decisions that reached no plan), and the sums of a scrape
        self.decisions: dict[DecisionKey, int] = {}
        self.steps: dict[StepKey, int] = {}
        self.durations: dict[str, list[int]] = {}
        self.owner = owner


class DecisionStats:
    """Counts decisions for one engine. :meth:`count` and :meth:`count_unplanned` are the only
    methods on the request path.

    Args:
        buckets: upper bounds of the duration histogram, in seconds, increasing.
    """

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS) -> None:
        self.bounds_us = tuple(round(b * 1e6) for b in buckets)
        self._width = len(self.bounds_us) + 2  # the buckets, +Inf, the sum
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the shard list and the folded totals, never a count
        self._shards: list[_Shard] = []
        self._folded = _Shard(None)
        #: layouts of builds a reload replaced: their rows are folded into counts by name
        self._retired: weakref.WeakSet[Layout] = weakref.WeakSet()

    def layout(
        self, policy: str, steps: Sequence[str], tiers: Sequence[str], shadow: bool
    ) -> Layout:
        """The layout of a plan's counts (see :class:`Layout`)."""
        return Layout(policy, steps, tiers, shadow, len(self.bounds_us))

    def count(
        self,
        layout: Layout,
        served: str,
        reason: Reason,
        records: Sequence[StepRecord],
        used: int,
    ) -> None:
        """Count one decision of a plan laid out by ``layout``: the tier that served (``""``:
        none) and why, each step's outcome, and the microseconds it took (the fields of its
        trace, passed as the engine holds them)."""
        try:
            rows = self._local.shard.rows
        except AttributeError:
            rows = self._new_shard().rows
        row = rows.get(layout)
        if row is None:
            row = self._first_row(rows, layout)
        try:
            row[layout.served[served] + _REASONS[reason]] += 1
            steps = layout.steps
            for step, outcome, _, _ in records:
                row[steps[step] + _OUTCOMES[outcome]] += 1
        except KeyError:  # a step the layout does not know: a bug of ours, never a lost answer;
            # the decision is counted by name (what the row took before the miss stays too)
            self.count_unplanned(
                Trace(layout.policy, "", "", served, reason, tuple(records), 0, used)
            )
            return
        row[layout.histogram + bisect_left(self.bounds_us, used)] += 1
        row[-1] += used

    def _first_row(self, rows: dict[Layout, list[int]], layout: Layout) -> list[int]:
        """A new row for ``layout`` in this thread's shard, whose ``rows`` are passed.

        Rare (once per thread and build), so it is where a thread folds the rows of retired
        builds into its counts by name: a service that reloads for months must not keep a row
        per reload per thread. Under the lock, so that a scrape sees each count once, in a row
        or by name; no other thread writes this shard."""
        shard: _Shard = self._local.shard
        with self._lock:
            retired = self._retired
            for old in [known for known in rows if known in retired]:
                old.unpack(rows.pop(old), shard)
            row = rows[layout] = [0] * layout.width
        return row

    def retire(self, layouts: Iterable[Layout]) -> None:
        """``layouts`` will count no more decisions (their build was replaced); each thread
        folds its rows of them into counts by name when it next starts a row."""
        with self._lock:
            for layout in layouts:
                self._retired.add(layout)

    def count_unplanned(self, trace: Trace) -> None:
        """Count a decision that reached no plan (an unknown policy, a closed engine, an
        internal error): rare, so counted by name."""
        try:
            shard: _Shard = self._local.shard
        except AttributeError:
            shard = self._new_shard()
        policy, _, _, served, reason, records, _, used, _, shadow, _ = trace
        key = (policy, served, str(reason), shadow)
        decisions = shard.decisions
        decisions[key] = decisions.get(key, 0) + 1
        row = shard.durations.get(policy)
        if row is None:
            row = shard.durations[policy] = [0] * self._width
        row[bisect_left(self.bounds_us, used)] += 1
        row[-1] += used
        steps = shard.steps
        for record in records:
            step = (policy, record[0], str(record[1]))
            steps[step] = steps.get(step, 0) + 1

    def _new_shard(self) -> _Shard:
        shard = _Shard(threading.current_thread())
        with self._lock:
            self._shards.append(shard)
        self._local.shard = shard
        return shard

    def totals(self) -> DecisionTotals:
        """Sum every thread's counts (the scrape calls this). Safe against concurrent counting:
        a dictionary or a row is copied in one step, so a count lands in this sum or the next."""
        with self._lock:
            live: list[_Shard] = []
            for shard in self._shards:
                owner = shard.owner
                if owner is not None and not owner.is_alive():
                    _add(self._folded, shard)  # it will never count again
                else:
                    live.append(shard)
            self._shards = live
            total = _Shard(None)
            _add(total, self._folded)
            for shard in live:
                _add(total, shard)
        return DecisionTotals(total.decisions, total.steps, total.durations, self.bounds_us)

    def forget(self) -> None:
        """Start from zero, in a forked child: its counts are its own, not its parent's.

        Only the forking thread lives on in the child, and the lock may have been held by
        another (a scrape) at the fork: it is made anew, never waited for."""
        self._lock = threading.Lock()
        self._shards = []
        self._folded = _Shard(None)
        self._local = threading.local()
        self._retired = weakref.WeakSet()


def bound_label(micros: int) -> str:
    """The ``le`` label of a bound held in microseconds: seconds, exactly, no trailing zeros."""
    whole, fraction = divmod(micros, 1_000_000)
    return f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")


def _add(into: _Shard, shard: _Shard) -> None:
    """Add ``shard``'s counts, by name, to ``into``."""
    for layout, row in shard.rows.copy().items():
        layout.unpack(row.copy(), into)  # a list copy is one step too
    _sum_into(into.decisions, shard.decisions.copy())
    _sum_into(into.steps, shard.steps.copy())
    for policy, row in shard.durations.copy().items():
        _add_row(into.durations, policy, row.copy())


def _add_row(durations: dict[str, list[int]], policy: str, row: Sequence[int]) -> None:
    mine = durations.get(policy)
    if mine is None:
        durations[policy] = list(row)
    else:
        durations[policy] = [a + b for a, b in zip(mine, row, strict=True)]


def _sum_into(into: dict[K, int], counts: Mapping[K, int]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0) + value
