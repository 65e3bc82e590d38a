"""The performance suite's targets (issue 10), judged on one run's figures."""

from __future__ import annotations

from typing import Any

__all__ = ["FLAT_TOLERANCE", "HAPPY_PATH_LIMIT", "check_targets"]

#: The happy path's ratio to hand-written code may not exceed this, sync or async.
HAPPY_PATH_LIMIT = 1.5

#: How far above 1.0 the median ratio of 100 policies to 1 may be for "unchanged within noise".
FLAT_TOLERANCE = 0.05


def check_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, judged on one run's figures."""
    happy = results["happy_path"]
    targets: dict[str, dict[str, Any]] = {}
    for mode in ("sync", "async"):
        ratio = happy[mode]["ratio"]
        targets[f"happy_path.{mode}.ratio <= {HAPPY_PATH_LIMIT}"] = {
            "met": ratio <= HAPPY_PATH_LIMIT,
            "detail": f"{ratio:.2f}",
        }
    for mode in ("sync", "async"):
        ratio = results["degraded"][mode]["breaker_open"]["ratio"]
        targets[f"degraded.{mode}.breaker_open.ratio < 1"] = {
            "met": ratio < 1.0,
            "detail": f"{ratio:.2f}",
        }
    hundred = results["scale"]["policies"]["100"]
    low, high, ratio = hundred["ratio_q1"], hundred["ratio_q3"], hundred["ratio"]
    # One-sided: more policies loaded cannot make a decision faster, so a median below 1 is this
    # run's noise; only a slowdown past the tolerance is a regression.
    targets["scale.policies.100 flat"] = {
        "met": ratio <= 1.0 + FLAT_TOLERANCE,
        "detail": f"ratio {ratio:.3f} (quartiles {low:.3f}-{high:.3f}), at most "
        f"{1.0 + FLAT_TOLERANCE:.2f}"
        + ("; below 1: noise" if ratio < 1.0 - FLAT_TOLERANCE else ""),
    }
    linearity = results["scale"]["tiers"]["linearity"]
    targets["scale.tiers at most linear"] = {
        "met": linearity >= 0.9,
        "detail": f"linearity {linearity:.2f} (10 tiers predicted from 2 and 5, over measured)",
    }
    return targets
