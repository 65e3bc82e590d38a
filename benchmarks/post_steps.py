"""Post steps: what re-ranking costs a decision, for 50 and 500 candidates.

The subject is the happy path's engine with the reference file's post steps (``boost_cap``
with cap 0.5, then ``exploration`` with share 0.15 of the top 10); the baseline is the same
engine without them, in the same run, interleaved (``compare``). The session tier serves in
both, so the post steps see personalized signals and re-rank every time. The candidates are a
query of a synthetic catalog of 1,000 items (distinct ids, categories and publication times,
which exploration reads), the same tuple for both sides.

Per size: the ratio, both absolute figures, ``post_steps_us`` (the difference: what the two
steps cost per decision) and ``per_candidate_ns`` (that difference over the candidate count).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from resilience import Engine, NullSink, RequestContext, load_policies
from resilience.population import Population

from .happy_path import REQUEST, policy_text, sync_loop, sync_sources
from .interleaved import compare

__all__ = ["SIZES", "request_with", "run"]

#: Candidate counts measured.
SIZES = (50, 500)


def request_with(size: int) -> RequestContext:
    """The happy path's request with ``size`` candidates from the synthetic catalog."""
    world = Population(3, items=2 * max(SIZES))  # distinct items: no duplicate ids on a page
    candidates = world.query(random.Random(4), size)
    assert len({c.item_id for c in candidates}) == size
    return dataclasses.replace(REQUEST, candidates=candidates)


def _cost(size: int, calls: int, repeats: int) -> dict[str, Any]:
    request = request_with(size)
    with (
        Engine(load_policies(policy_text(post=True)), sync_sources(), events=NullSink()) as post,
        Engine(load_policies(policy_text()), sync_sources(), events=NullSink()) as bare,
    ):
        check = post.decide(request)
        assert check.trace.served == "session", check.trace
        ran = [r.step for r in check.trace.steps]
        assert ran[-2:] == ["boost_cap", "exploration"], check.trace
        assert len(check.candidates) == size, len(check.candidates)

        def loop(engine: Engine) -> Any:
            return sync_loop(lambda _: engine.decide(request))

        result = compare(loop(post), loop(bare), calls=calls, repeats=repeats)
        after = post.decide(request).trace
        assert all(r.outcome.value == "ok" for r in after.steps), after  # none cut or failed
    extra_ns = result.subject_ns - result.baseline_ns
    return {
        **result.as_dict(),
        "candidates": size,
        "post_steps_us": round(extra_ns / 1000, 2),
        "per_candidate_ns": round(extra_ns / size, 1),
    }


def run(
    *, quick: bool, calls: int | None = None, repeats: int | None = None
) -> dict[str, dict[str, Any]]:
    """Post steps against none, per candidate count: ``{"50": {...}, "500": {...}}``."""
    sizes_calls = {50: 2_000, 500: 400} if quick else {50: 8_000, 500: 1_500}
    repeats = repeats or (7 if quick else 11)
    return {str(size): _cost(size, calls or sizes_calls[size], repeats) for size in SIZES}
