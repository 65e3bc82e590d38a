"""Decision counters: what the request path counts, as plain integers that metrics read later.

A decision costs a few microseconds, and prometheus-client's cheapest update (a pre-bound
``inc()``) about one; a decision updates a dozen series. So the request path never touches a
metrics library: it adds to plain dictionaries, and a collector turns them into metrics when it
is scraped (:mod:`resilience.metrics`).

The dictionaries are sharded per thread: a thread writes only its own shard, so no update is
ever lost and no lock is taken on the request path; a scrape sums the shards. The shard of a
thread that has ended is folded into the running totals at the next scrape, so threads that come
and go (a pool that recycles its workers) do not grow memory.
"""

from __future__ import annotations

import itertools
import threading
from bisect import bisect_left
from collections.abc import Mapping
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._durations import Duration
from ._trace import Trace

__all__ = ["DEFAULT_DURATION_BUCKETS", "DecisionStats", "DecisionTotals", "MetricsSettings"]

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
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("the bounds must increase strictly, e.g. [5ms, 10ms, 30ms, 50ms]")
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


class _Shard:
    __slots__ = ("decisions", "durations", "owner", "steps")

    def __init__(self, owner: threading.Thread | None) -> None:
        self.decisions: dict[DecisionKey, int] = {}
        self.steps: dict[StepKey, int] = {}
        self.durations: dict[str, list[int]] = {}
        self.owner = owner


class DecisionStats:
    """Counts decisions for one engine. :meth:`count` is the only method on the request path.

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

    def count(self, trace: Trace) -> None:
        """Count one finished decision: its tier and reason, its duration, each step's outcome."""
        try:
            shard: _Shard = self._local.shard
        except AttributeError:
            shard = self._new_shard()
        # One unpacking instead of six attribute reads: this runs on every decision.
        policy, _, _, served, reason, records, _, used, _, shadow, _ = trace
        key = (policy, served, reason, shadow)
        decisions = shard.decisions
        decisions[key] = decisions.get(key, 0) + 1
        row = shard.durations.get(policy)
        if row is None:
            row = shard.durations[policy] = [0] * self._width
        row[bisect_left(self.bounds_us, used)] += 1
        row[-1] += used
        steps = shard.steps
        for record in records:
            step = (policy, record[0], record[1])
            steps[step] = steps.get(step, 0) + 1

    def _new_shard(self) -> _Shard:
        shard = _Shard(threading.current_thread())
        with self._lock:
            self._shards.append(shard)
        self._local.shard = shard
        return shard

    def totals(self) -> DecisionTotals:
        """Sum every thread's counts (the scrape calls this). Safe against concurrent counting:
        a dictionary is copied in one step, so a count lands in this sum or the next."""
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
        """Start from zero (in a forked child: its counts are its own, not its parent's)."""
        with self._lock:
            self._shards = []
            self._folded = _Shard(None)
            self._local = threading.local()


def _add(into: _Shard, shard: _Shard) -> None:
    _sum_into(into.decisions, shard.decisions.copy())
    _sum_into(into.steps, shard.steps.copy())
    for policy, counted in shard.durations.copy().items():
        row = counted.copy()  # a list copy is one step too
        mine = into.durations.get(policy)
        if mine is None:
            into.durations[policy] = row
        else:
            into.durations[policy] = [a + b for a, b in zip(mine, row, strict=True)]


def _sum_into(into: dict[K, int], counts: Mapping[K, int]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0) + value
