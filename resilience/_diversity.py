"""Diversity and CTR monitoring of served lists, beside each other.

The brief: monitor diversity (category coverage, item age distribution) alongside CTR, so that
a policy that wins clicks by narrowing what users see shows it. For a sampled share of decisions
(``settings.monitoring.sample_rate``) the engine measures the top ``top_k`` of the served list:

- **coverage**: distinct categories shown, over the distinct categories among all candidates
  (at most ``top_k``): 1 means the list shows as many kinds as it could;
- **entropy**: Shannon entropy, in bits, of the categories shown;
- **item age**: seconds since publication of each item shown (percentiles on read).

A sampled decision counts as an impression of its (policy, tier served); clicks are reported
back with ``Engine.record_click(trace)``, which counts those on sampled decisions, so that CTR
(clicks per list shown) and diversity describe the same lists and no per-request state is kept.
A click lands in the bucket of the time it is reported, which may be the next one. Aggregates are
rolling: ``window`` split into buckets on the monotonic clock, per policy and tier served, read
with :meth:`DiversityMonitor.snapshot`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from ._durations import Duration
from ._fork import hold_across_forks
from ._model import Candidate

__all__ = [
    "DiversityMonitor",
    "DiversitySnapshot",
    "MonitoringSettings",
    "category_coverage",
    "category_entropy",
]

_Key = tuple[str, str, str]  # (policy, tier served, holdout group)


class MonitoringSettings(BaseModel):
    """``settings.monitoring``: diversity and CTR of served lists."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    sample_rate: float = Field(
        default=0.05, ge=0, le=1, description="Share of decisions whose list is measured."
    )
    top_k: int = Field(default=10, ge=1, le=1000, description="How much of each list is measured.")
    window: Duration = Field(default=3600.0, gt=0, description="Span of the rolling aggregates.")
    buckets: int = Field(default=12, ge=1, le=1000, description="Buckets of the window.")


def category_coverage(shown: Sequence[Candidate], candidates: Sequence[Candidate]) -> float:
    """Distinct categories shown over those the list could have shown (0 to 1)."""
    available = {c.category for c in candidates if c.category is not None}
    if not available:
        return 1.0
    possible = min(len(available), len(shown))
    if possible == 0:
        return 1.0
    return len({c.category for c in shown if c.category is not None}) / possible


def category_entropy(shown: Sequence[Candidate]) -> float:
    """Shannon entropy, in bits, of the categories shown (items without one are left out)."""
    counts: dict[str, int] = {}
    for candidate in shown:
        if candidate.category is not None:
            counts[candidate.category] = counts.get(candidate.category, 0) + 1
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum(n / total * math.log2(n / total) for n in counts.values())


@dataclass
class _Bucket:
    epoch: int = -1
    impressions: dict[_Key, int] = field(default_factory=dict)
    clicks: dict[_Key, int] = field(default_factory=dict)
    lists: dict[_Key, int] = field(default_factory=dict)
    coverage: dict[_Key, float] = field(default_factory=dict)
    entropy: dict[_Key, float] = field(default_factory=dict)
    ages: dict[_Key, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class DiversitySnapshot:
    """The rolling aggregates of one (policy, tier served, holdout group)."""

    policy: str
    served: str
    impressions: int
    clicks: int
    ctr: float
    lists_measured: int
    coverage: float
    entropy_bits: float
    age_p50_s: float | None
    age_p90_s: float | None
    #: ``holdout``, ``treatment``, or ``""`` for a policy without a holdout (or anonymous traffic)
    group: str = ""


class DiversityMonitor:
    """Rolling diversity and CTR aggregates for one engine. Thread-safe.

    Args:
        settings: rates, sizes and the window.
        monotonic: the engine's monotonic clock (buckets).
        wall: the engine's wall clock (item ages).
    """

    #: ages kept per bucket and key, for percentiles: the first ones of each bucket, bounded
    MAX_AGES = 2000

    def __init__(
        self,
        settings: MonitoringSettings,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.settings = settings
        self._now = monotonic
        self._wall = wall
        self._width = settings.window / settings.buckets
        self._buckets = [_Bucket() for _ in range(settings.buckets)]
        self._lock = threading.Lock()
        hold_across_forks(self, "_lock", rank=2)

    def _bucket(self) -> _Bucket:
        epoch = int(self._now() / self._width)
        bucket = self._buckets[epoch % len(self._buckets)]
        if bucket.epoch != epoch:
            bucket.__init__()  # type: ignore[misc]  # reuse the slot for a new turn of the ring
            bucket.epoch = epoch
        return bucket

    def measure(
        self,
        policy: str,
        served: str,
        shown: Sequence[Candidate],
        candidates: Sequence[Candidate],
        group: str = "",
    ) -> None:
        """Add one sampled decision: an impression, and the diversity of the top ``top_k`` of
        its served list."""
        top = shown[: self.settings.top_k]
        coverage = category_coverage(top, candidates)
        entropy = category_entropy(top)
        now = self._wall()
        ages = [
            max(now - c.published_at, 0.0)
            for c in top
            if isinstance(c.published_at, int | float) and math.isfinite(c.published_at)
        ]
        key = (policy, served, group)
        with self._lock:
            bucket = self._bucket()
            bucket.impressions[key] = bucket.impressions.get(key, 0) + 1
            bucket.lists[key] = bucket.lists.get(key, 0) + 1
            bucket.coverage[key] = bucket.coverage.get(key, 0.0) + coverage
            bucket.entropy[key] = bucket.entropy.get(key, 0.0) + entropy
            kept = bucket.ages.setdefault(key, [])
            if len(kept) < self.MAX_AGES:
                kept.extend(ages[: self.MAX_AGES - len(kept)])

    def record_click(self, policy: str, served: str, group: str = "") -> None:
        """Count a click on a list of ``policy`` served by ``served`` (in holdout ``group``)."""
        key = (policy, served, group)
        with self._lock:
            clicks = self._bucket().clicks
            clicks[key] = clicks.get(key, 0) + 1

    def snapshot(self) -> list[DiversitySnapshot]:
        """The aggregates over the window, one per (policy, tier served, group), sorted."""
        oldest = int(self._now() / self._width) - len(self._buckets) + 1
        totals: dict[_Key, list[float]] = {}
        ages: dict[_Key, list[float]] = {}
        with self._lock:
            for bucket in self._buckets:
                if bucket.epoch < oldest:
                    continue
                for source, index in (
                    (bucket.impressions, 0),
                    (bucket.clicks, 1),
                    (bucket.lists, 2),
                    (bucket.coverage, 3),
                    (bucket.entropy, 4),
                ):
                    for key, value in source.items():
                        totals.setdefault(key, [0.0] * 5)[index] += value
                for key, values in bucket.ages.items():
                    ages.setdefault(key, []).extend(values)
        out = []
        for (policy, served, group), (impressions, clicks, lists, coverage, entropy) in sorted(
            totals.items()
        ):
            sample = sorted(ages.get((policy, served, group), []))
            out.append(
                DiversitySnapshot(
                    policy,
                    served,
                    int(impressions),
                    int(clicks),
                    clicks / impressions if impressions else 0.0,
                    int(lists),
                    coverage / lists if lists else 0.0,
                    entropy / lists if lists else 0.0,
                    _percentile(sample, 0.5),
                    _percentile(sample, 0.9),
                    group,
                )
            )
        return out


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
