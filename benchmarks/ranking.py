"""Ranking safety on the synthetic population: exploration on versus off, and post-step cost.

``python -m benchmarks ranking [--quick] [--json PATH]``:

- ``exploration``: users whose clicks favour one category browse the reference chain with
  ``boost_cap``, with and without ``exploration`` (share 0.15 of the top 10). Both arms see the
  same users, queries and click draws (seeded); each keeps its own sessions, so personalization
  learns from what that arm showed. Reported: category coverage of the top 10 served, and CTR
  (clicks per list shown), for each arm.
- ``post_step_cost``: the cost of ``boost_cap`` plus ``exploration`` per decision for 50 and
  500 candidates, as a ratio to the same decision without post steps (interleaved).
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path
from typing import Any

from resilience import Engine, NullSink, RequestContext, category_coverage, load_policies
from resilience.population import Population

from .interleaved import compare

__all__ = ["run"]

ROOT = Path(__file__).resolve().parent.parent

_POLICY = """
version: 1
default_policy: p
settings: {{events: {{decision_sample_rate: 0}}, monitoring: {{sample_rate: 0}}}}
policies:
  p:
    chain: [session, stale_cache, profile_only, segment, unpersonalized]
    post: {post}
"""
_WITH = "[{type: boost_cap, cap: 0.5}, {type: exploration, share: 0.15, k: 10}]"
_WITHOUT = "[{type: boost_cap, cap: 0.5}]"


def _arm(post: str, seed: int, searches: int) -> dict[str, float]:
    world = Population(seed, favourite_share=0.7)
    engine = Engine(load_policies(_POLICY.format(post=post)), world.sources(), events=NullSink())
    rng = random.Random(seed + 1)  # the same draws for both arms
    coverage, clicks = [], 0
    clock = world.now
    for n in range(searches):
        user = world.users[rng.randrange(len(world.users))]
        session = f"{user.user_id}-s{n // 40}"
        candidates = world.query(rng)
        request = RequestContext(
            user_id=user.user_id,
            session_id=session,
            segment=user.segment,
            request_id=f"r{n}",
            candidates=candidates,
        )
        shown = list(engine.decide(request).candidates)
        coverage.append(category_coverage(shown[:10], candidates))
        for position in world.clicks(rng, user, shown):
            clicks += 1
            clock += 1.0
            world.click(session, shown[position], clock)
    engine.close()
    return {"coverage": round(statistics.mean(coverage), 4), "ctr": round(clicks / searches, 4)}


def _cost(size: int, quick: bool) -> dict[str, Any]:
    world = Population(3)
    rng = random.Random(4)
    candidates = tuple(c for _ in range(size // 50 + 1) for c in world.query(rng))[:size]
    user = world.users[0]
    request = RequestContext(
        user_id=user.user_id, segment=user.segment, request_id="r", candidates=candidates
    )
    with_post = Engine(
        load_policies(_POLICY.format(post=_WITH)), world.sources(), events=NullSink()
    )
    without = Engine(load_policies(_POLICY.format(post="[]")), world.sources(), events=NullSink())

    def loop(engine: Engine) -> Any:
        def many(calls: int) -> None:
            for _ in range(calls):
                engine.decide(request)

        return many

    result = compare(
        loop(with_post), loop(without), calls=200 if quick else 1000, repeats=7 if quick else 11
    )
    with_post.close()
    without.close()
    return {
        **result.as_dict(),
        "post_steps_us": round((result.subject_ns - result.baseline_ns) / 1000, 1),
    }


def run(*, quick: bool, searches: int | None = None) -> dict[str, Any]:
    """Run both experiments."""
    count = searches if searches is not None else (2_000 if quick else 8_000)
    on = _arm(_WITH, 11, count)
    off = _arm(_WITHOUT, 11, count)
    return {
        "searches": count,
        "exploration_on": on,
        "exploration_off": off,
        "post_step_cost": {str(size): _cost(size, quick) for size in (50, 500)},
    }


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
