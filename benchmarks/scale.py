"""Scale: what a decision costs as the policy file and the chain grow.

- ``policies``: engines loaded with 1, 10 and 100 policies: the happy path's policy
  (``happy_path.policy_text()``: the reference file without post steps, plus a 10% holdout)
  and N-1 complete copies of it named ``search_2``, ``search_3``, ... (each with its guard,
  holdout and chain; the sources and the stale cache are shared). Every decision runs the
  default policy, ``search``, on the happy path (the ``session`` tier serves). The engines with
  10 and 100 policies are each timed against the engine with 1, interleaved (``compare``), sync.
  Expected: flat, a ratio of about 1.0: a request looks its plan up by name.
- ``tiers``: chains of 2, 5 and 10 tiers (no guards, no holdout, no sources section, a 30 ms
  budget): N-1 ``profile_only`` tiers (ids ``miss_1`` ...) reading a store that has nothing (each
  is a ``miss``), then the terminal ``unpersonalized``, which serves; every decision tries every
  tier. The 5- and 10-tier chains are each timed against the 2-tier chain, interleaved, sync.
  From the ratios, scaled to nanoseconds by the 2-tier chain's median: ``per_tier_ns``, the
  least-squares slope of cost over chain length, ``fixed_ns`` its intercept, and
  ``linearity``, the 10-tier chain's ratio predicted by a straight line through 2 and 5 tiers
  over the measured one (1.0: linear; well below 1: each tier costs more the longer the chain).

The tiers tried (step records in the trace) and the tier served are checked before and after
timing, and reported.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

from resilience import (
    Affinities,
    Decision,
    Engine,
    NullSink,
    Outcome,
    Reason,
    SourceFunction,
    load_policies,
)

from .happy_path import REQUEST, policy_text, sync_loop, sync_sources
from .interleaved import Comparison, compare

__all__ = ["CHAIN_LENGTHS", "POLICY_COUNTS", "chain_sources", "chain_text", "policies_text", "run"]

#: How many policies the engines of ``policies`` hold; the first is the baseline.
POLICY_COUNTS = (1, 10, 100)
#: Chain lengths of ``tiers``; the first is the baseline.
CHAIN_LENGTHS = (2, 5, 10)


def policies_text(count: int) -> str:
    """The happy path's policy file with ``count`` policies: ``search`` and copies of it."""
    text = policy_text()
    match = re.search(r"(?m)^  search:\n(?:(?:    .*)?\n)+", text)
    if match is None:
        raise RuntimeError("the happy path's policy file has no 'search' policy")
    block = match.group(0)
    copies = "".join(
        block.replace("  search:\n", f"  search_{n}:\n", 1) for n in range(2, count + 1)
    )
    return text[: match.end()] + copies + text[match.end() :]


def chain_text(length: int) -> str:
    """A policy file whose one policy, ``chain``, has ``length`` tiers, all tried."""
    misses = "".join(
        f"      - {{type: profile_only, id: miss_{n}, source: empty_store}}\n"
        for n in range(1, length)
    )
    return (
        "version: 1\n"
        "settings:\n"
        "  plugins:\n"
        "    allow: []\n"
        "default_policy: chain\n"
        "policies:\n"
        "  chain:\n"
        "    budget: 30ms\n"
        "    chain:\n"
        f"{misses}"
        "      - unpersonalized\n"
    )


def _empty(key: str) -> Affinities | None:
    """A store that has nothing: every read is a miss."""
    return None


def chain_sources() -> dict[str, SourceFunction]:
    """The sources of ``chain_text``."""
    return {"empty_store": _empty}


def _check_happy(decision: Decision) -> None:
    trace = decision.trace
    assert trace.policy == "search", trace
    assert trace.served == "session", trace
    assert trace.reason is Reason.PRIMARY, trace


def _check_chain(decision: Decision, length: int) -> int:
    """Every tier was tried, the misses missed and the terminal tier served; returns the count."""
    trace = decision.trace
    assert trace.served == "unpersonalized", trace
    assert trace.reason is Reason.FALLBACK, trace
    assert len(trace.steps) == length, trace
    assert [r.outcome for r in trace.steps] == [Outcome.MISS] * (length - 1) + [Outcome.OK], trace
    return len(trace.steps)


def _baseline_ns(comparisons: Sequence[Comparison]) -> float:
    """The baseline's per-call figure over several comparisons against it."""
    return round(statistics.fmean(c.baseline_ns for c in comparisons), 1)


def _policies(calls: int, repeats: int) -> dict[str, dict[str, Any]]:
    engines = [
        Engine(load_policies(policies_text(count)), sync_sources(), events=NullSink(), seed=1)
        for count in POLICY_COUNTS
    ]
    try:
        loaded = [len(engine.versions()) for engine in engines]
        assert loaded == list(POLICY_COUNTS), loaded
        for engine in engines:
            _check_happy(engine.decide(REQUEST))
        base, *others = engines
        comparisons = [
            compare(sync_loop(engine.decide), sync_loop(base.decide), calls=calls, repeats=repeats)
            for engine in others
        ]
        for engine in engines:
            _check_happy(engine.decide(REQUEST))
    finally:
        for engine in engines:
            engine.close()
    results: dict[str, dict[str, Any]] = {
        str(POLICY_COUNTS[0]): {"ns": _baseline_ns(comparisons), "loaded": loaded[0]}
    }
    for count, comparison, held in zip(POLICY_COUNTS[1:], comparisons, loaded[1:], strict=True):
        results[str(count)] = {**comparison.as_dict(), "loaded": held}
    return results


def _least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """The slope and intercept of the least-squares line through the points."""
    slope, intercept = statistics.linear_regression(xs, ys)
    return slope, intercept


def _tiers(calls: int, repeats: int) -> dict[str, Any]:
    engines = [
        Engine(load_policies(chain_text(length)), chain_sources(), events=NullSink(), seed=1)
        for length in CHAIN_LENGTHS
    ]
    try:
        tried = [
            _check_chain(engine.decide(REQUEST), length)
            for engine, length in zip(engines, CHAIN_LENGTHS, strict=True)
        ]
        base, *others = engines
        comparisons = [
            compare(sync_loop(engine.decide), sync_loop(base.decide), calls=calls, repeats=repeats)
            for engine in others
        ]
        for engine, length in zip(engines, CHAIN_LENGTHS, strict=True):
            _check_chain(engine.decide(REQUEST), length)
    finally:
        for engine in engines:
            engine.close()
    base_ns = _baseline_ns(comparisons)
    ratios = [1.0] + [c.ratio for c in comparisons]
    slope, intercept = _least_squares(CHAIN_LENGTHS, [r * base_ns for r in ratios])
    (x0, x1, x2), (r0, r1, r2) = CHAIN_LENGTHS, ratios
    predicted = r0 + (r1 - r0) * (x2 - x0) / (x1 - x0)
    results: dict[str, Any] = {str(CHAIN_LENGTHS[0]): {"ns": base_ns, "tried": tried[0]}}
    for length, comparison, count in zip(CHAIN_LENGTHS[1:], comparisons, tried[1:], strict=True):
        results[str(length)] = {**comparison.as_dict(), "tried": count}
    results["per_tier_ns"] = round(slope, 1)
    results["fixed_ns"] = round(intercept, 1)
    results["linearity"] = round(predicted / r2, 3)
    return results


def run(
    *, quick: bool, calls: int | None = None, repeats: int | None = None
) -> dict[str, dict[str, Any]]:
    """Decision cost by policies loaded and by chain length: ``{"policies": .., "tiers": ..}``.

    ``policies``: ``"1"``: ``ns`` (per decision, the baseline) and ``loaded`` (policies the
    engine holds); ``"10"``, ``"100"``: ``ratio`` over 1 loaded, ``subject_ns``,
    ``baseline_ns``, ``repeats``, ``calls_per_repeat``, ``loaded``.

    ``tiers``: ``"2"``: ``ns`` and ``tried`` (step records per decision); ``"5"``, ``"10"``:
    ``ratio`` over 2 tiers, ``subject_ns``, ``baseline_ns``, ``repeats``, ``calls_per_repeat``,
    ``tried``; and ``per_tier_ns``, ``fixed_ns``, ``linearity``.

    ``calls`` and ``repeats`` exist for the smoke tests; the figures use the defaults.
    """
    default_calls, default_repeats = (5_000, 9) if quick else (20_000, 15)
    calls = calls or default_calls
    repeats = repeats or default_repeats
    return {"policies": _policies(calls, repeats), "tiers": _tiers(calls, repeats)}
