"""Interleaved timing: A and B alternate, each repeat gives one ratio, the median is reported."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Comparison", "compare"]


@dataclass(frozen=True)
class Comparison:
    """Per-call medians of two workloads and the median of their per-repeat ratios."""

    subject_ns: float
    baseline_ns: float
    ratio: float
    repeats: int
    calls: int
    #: the first and third quartiles of the per-repeat ratios: how much this run's noise moved it
    ratio_q1: float = 0.0
    ratio_q3: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "ratio": round(self.ratio, 3),
            "ratio_q1": round(self.ratio_q1, 3),
            "ratio_q3": round(self.ratio_q3, 3),
            "subject_ns": round(self.subject_ns, 1),
            "baseline_ns": round(self.baseline_ns, 1),
            "repeats": self.repeats,
            "calls_per_repeat": self.calls,
        }


def compare(
    subject: Callable[[int], None],
    baseline: Callable[[int], None],
    *,
    calls: int,
    repeats: int,
) -> Comparison:
    """Time ``subject(calls)`` and ``baseline(calls)`` alternately, ``repeats`` times each.

    Each callable runs its workload ``calls`` times. The order within a repeat alternates, so
    that neither side always runs on a warmer cache. The garbage collector is paused while
    timing, as ``timeit`` does.
    """
    subject(max(calls // 10, 1))  # warm-up: imports, caches, branch predictors
    baseline(max(calls // 10, 1))
    subject_times: list[float] = []
    baseline_times: list[float] = []
    ratios: list[float] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for repeat in range(repeats):
            order = [(subject, subject_times), (baseline, baseline_times)]
            if repeat % 2:
                order.reverse()
            timings: dict[int, float] = {}
            for fn, sink in order:
                start = time.perf_counter_ns()
                fn(calls)
                elapsed = (time.perf_counter_ns() - start) / calls
                sink.append(elapsed)
                timings[id(sink)] = elapsed
            ratios.append(timings[id(subject_times)] / timings[id(baseline_times)])
    finally:
        if enabled:
            gc.enable()
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios * 3)
    return Comparison(
        subject_ns=statistics.median(subject_times),
        baseline_ns=statistics.median(baseline_times),
        ratio=statistics.median(ratios),
        repeats=repeats,
        calls=calls,
        ratio_q1=q1,
        ratio_q3=q3,
    )
