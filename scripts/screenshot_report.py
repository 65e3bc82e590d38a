"""Render the HTML report of a simulation result and take a PNG screenshot of it.

    python scripts/screenshot_report.py RESULT.json OUT.png   # a result from --json PATH
    python scripts/screenshot_report.py --demo OUT.png        # a synthetic result
    python scripts/screenshot_report.py --demo RESULT.json OUT.png  # ... also written to JSON

The screenshot is taken by headless Chromium from Debian's packages (``/usr/bin/chromium``); when
it is missing the script says how to install it and exits with status 2. ``--keep DIR`` keeps
the rendered report (``DIR/index.html``). The synthetic result (``--demo``) follows the
result contract of ``docs/simulation.md`` and lets the report be looked at without running the
simulator: ten minutes of a default-like scenario with every kind of event, gaps and all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from resilience.simulation._report import render_report  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium"
WINDOW = "1280,2400"

TIERS = ("session", "stale_cache", "profile_only", "segment", "unpersonalized")
PHASES = (
    ("warm-up", 0, 60),
    ("latency-spike", 60, 120),
    ("session-hang", 120, 180),
    ("flapping", 180, 240),
    ("outage", 240, 340),
    ("stream-lag", 340, 460),
    ("operations", 460, 520),
    ("new-users", 520, 600),
)
EVENTS = (
    (70.0, "session store slow"),
    (130.0, "session store hangs"),
    (190.0, "session store flaps"),
    (250.0, "profile store down"),
    (265.0, "all stores down"),
    (345.0, "stream processor stalls"),
    (470.0, "kill switch off"),
    (490.0, "kill switch on"),
    (500.0, "bad policy reloaded"),
    (530.0, "new users arrive"),
)


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def demo_result(seed: int = 1) -> dict[str, Any]:
    """A synthetic result shaped like ``simulate("default")``'s, from a seeded random walk."""
    rng = random.Random(seed)
    bucket, duration, budget = 5.0, 600.0, 30.0
    count = int(duration / bucket)
    t = [i * bucket for i in range(count)]
    served: dict[str, list[float | None]] = {k: [] for k in TIERS}
    p50: list[float | None] = []
    p99: list[float | None] = []
    top: list[float | None] = []
    error: list[float | None] = []
    lag: list[float | None] = []
    coverage: list[float | None] = []
    all_latency: list[float] = []
    phase_latency: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    tally = dict.fromkeys(TIERS, 0.0)
    phase_tally: dict[str, dict[str, float]] = {n: dict.fromkeys(TIERS, 0.0) for n, _, _ in PHASES}
    error_level = 0.0
    for start in t:
        middle = start + bucket / 2
        phase = next(n for n, a, b in PHASES if a <= middle < b)
        if 300 <= start < 310:  # the world paused: a gap in every series but the guards'
            for k in TIERS:
                served[k].append(None)
            p50.append(None)
            p99.append(None)
            top.append(None)
            coverage.append(None)
            error.append(_round(error_level))
            lag.append(0.3)
            continue
        weights = {"session": 0.55, "stale_cache": 0.0, "profile_only": 0.25, "segment": 0.1}
        weights["unpersonalized"] = 0.1
        slow = 70 <= start < 120
        hang = 130 <= start < 180
        flap = 190 <= start < 240 and (start // 10) % 2 == 0
        down = 265 <= start < 300
        stalled = 375 <= start < 445
        killed = 470 <= start < 490
        if slow or hang or flap:
            weights.update(session=0.05, stale_cache=0.35, profile_only=0.35)
        if 250 <= start < 300:
            weights.update(profile_only=0.0, segment=0.35)
        if down or killed:
            weights = dict.fromkeys(TIERS, 0.0) | {"unpersonalized": 1.0}
        if stalled:
            weights.update(session=0.0, stale_cache=0.0, unpersonalized=0.65)
        if start >= 530:
            weights.update(segment=0.25, profile_only=0.12)
        noisy = {k: max(0.0, w * rng.uniform(0.8, 1.2)) for k, w in weights.items()}
        total = sum(noisy.values()) or 1.0
        for k in TIERS:
            share = noisy[k] / total
            served[k].append(_round(share))
            tally[k] += share
            phase_tally[phase][k] += share
        base = 0.03 if down or killed else (1.2 if stalled else 3.3)
        draws = sorted(rng.lognormvariate(math.log(base), 0.45) for _ in range(100))
        if slow:
            draws = sorted(d + rng.uniform(4, 9) for d in draws)
        if hang and rng.random() < 0.5:
            draws[-1] = 27.5 + rng.uniform(0, 2)  # cut at the step's timeout
            draws[-2] = 27.0
        if start in (225.0, 280.0):
            draws[-1] = 190.1 if start == 225.0 else 100.1
        all_latency += draws
        phase_latency[phase] += draws
        p50.append(_round(_percentile(draws, 0.5), 3))
        p99.append(_round(_percentile(draws, 0.99), 3))
        top.append(_round(draws[-1], 3))
        if 190 <= start < 240 or 250 <= start < 300:
            error_level = min(1.0, error_level + rng.uniform(0.02, 0.12))
        else:
            error_level = max(0.0, error_level * 0.4 - 0.002)
        error.append(_round(error_level))
        lag.append(_round(min(50.0, 0.3 + (start - 345) * 0.5), 3) if 345 <= start < 445 else 0.3)
        coverage.append(_round(0.76 + rng.uniform(-0.025, 0.025) - (0.08 if down else 0.0)))
    # a stretch where the guards were not read: nulls in their series only
    for i in range(100, 103):
        error[i] = None
        lag[i] = None
    decisions = 12_166
    all_latency.sort()
    measured = count - 2
    phases = []
    transitions = _demo_transitions()
    for name, start, end in PHASES:
        lat = sorted(phase_latency[name])
        share_sum = sum(phase_tally[name].values()) or 1.0
        phases.append(
            {
                "name": name,
                "start_s": float(start),
                "end_s": float(end),
                "decisions": round(decisions * (end - start) / duration),
                "failed": 0,
                "latency_ms": _latencies(lat),
                "served_by": {k: _round(v / share_sum) for k, v in phase_tally[name].items()},
                "ctr": {
                    "treatment": _round(0.52 + rng.uniform(-0.04, 0.04)),
                    "holdout": _round(0.29 + rng.uniform(-0.03, 0.03)),
                },
                "coverage": _round(0.76 + rng.uniform(-0.02, 0.02)),
                "transitions": [x for x in transitions if start <= x["t"] < end],
            }
        )
    return {
        "scenario": "default",
        "description": "every guardrail trips and recovers; a bad reload; a burst of new users",
        "seed": seed,
        "scale": 1.0,
        "policies": "<bundled>",
        "policy": "search",
        "config_version": "37289fa8287e",
        "mode": "virtual",
        "budget_ms": budget,
        "duration_s": duration,
        "wall_s": 5.2,
        "world": {"users": 3000, "rate": 20.0, "candidates": 50},
        "decisions": decisions,
        "failed": 0,
        "latency_ms": _latencies(all_latency),
        "served_by": {k: _round(v / measured) for k, v in tally.items()},
        "reasons": {
            "primary": 0.3336,
            "fallback": 0.3937,
            "guard": 0.1477,
            "holdout": 0.0907,
            "switched_off": 0.0343,
        },
        "guardrails": {
            "error_rate": {"kind": "guard", "type": "error_rate", "tripped": 1, "recovered": 1},
            "stream_lag": {"kind": "guard", "type": "stream_lag", "tripped": 1, "recovered": 1},
            "profile_store": {"kind": "breaker", "type": "breaker", "tripped": 1, "recovered": 1},
            "session_store": {"kind": "breaker", "type": "breaker", "tripped": 3, "recovered": 3},
            "search": {"kind": "flag", "type": "kill switch", "tripped": 1, "recovered": 1},
        },
        "transitions": transitions,
        "diversity": {"coverage": 0.758, "age_p50_days": 40.0, "age_p90_days": 127.3},
        "ctr": {"treatment": 0.518, "holdout": 0.2899},
        "lift": {
            "estimate": 0.787,
            "ci_low": 0.591,
            "ci_high": 1.017,
            "true": 0.827,
            "ci_contains_true": True,
            "conclusive": True,
            "reason": "",
            "users": {"treatment": 2710, "holdout": 290},
            "exposures": {"treatment": 11063, "holdout": 1103},
        },
        "phases": phases,
        "timeline": {
            "bucket_s": bucket,
            "t": t,
            "served_by": served,
            "latency_ms": {"p50": p50, "p99": p99, "max": top},
            "error_rate": error,
            "lag_s": lag,
            "coverage": coverage,
            "events": [{"t": at, "label": label} for at, label in EVENTS],
        },
        "thresholds": {"error_rate": 0.05, "lag_s": 30.0, "budget_ms": budget},
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _latencies(ordered: list[float]) -> dict[str, float | None]:
    return {
        "p50": _round(_percentile(ordered, 0.5), 3),
        "p99": _round(_percentile(ordered, 0.99), 3),
        "p999": _round(_percentile(ordered, 0.999), 3),
        "max": _round(ordered[-1] if ordered else None, 3),
    }


def _demo_transitions() -> list[dict[str, Any]]:
    rows: list[tuple[float, str, str]] = [
        (73.4, "breaker session_store opened (slow_call_rate)", "breaker"),
        (78.5, "breaker session_store half-opened", "breaker"),
        (78.5, "breaker session_store opened (probe_failed)", "breaker"),
        (83.6, "breaker session_store half-opened", "breaker"),
        (83.7, "breaker session_store closed (probes_succeeded)", "breaker"),
        (132.8, "breaker session_store opened (failure_rate)", "breaker"),
        (137.9, "breaker session_store half-opened", "breaker"),
        (158.3, "breaker session_store closed (probes_succeeded)", "breaker"),
        (201.2, "guard error_rate tripped (error rate 0.09 above 0.05)", "guard"),
        (214.0, "breaker session_store opened (failure_rate)", "breaker"),
        (242.6, "breaker session_store closed (probes_succeeded)", "breaker"),
        (251.1, "breaker profile_store opened (failure_rate)", "breaker"),
        (305.4, "breaker profile_store closed (probes_succeeded)", "breaker"),
        (312.0, "guard error_rate recovered (error rate 0.01)", "guard"),
        (375.1, "guard stream_lag tripped (stream lag 30s above 30s)", "guard"),
        (444.1, "guard stream_lag recovered (lag 0.3s)", "guard"),
        (470.0, "flag search on -> off (simulated operator: kill switch off)", "flag"),
        (490.0, "flag search off -> on (simulated operator: kill switch on)", "flag"),
        (
            500.0,
            "reload refused (1 problem: unknown guard type 'xerror_rate'); "
            "the running policy kept serving",
            "reload",
        ),
    ]
    return [{"t": t, "what": what, "kind": kind} for t, what, kind in rows]


def screenshot(html_file: Path, out: Path, window: str, chromium: str) -> None:
    """Point headless Chromium at the report and save what it shows."""
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        command = [
            chromium,
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={window}",
            f"--screenshot={out.resolve()}",
            html_file.resolve().as_uri(),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium refuses to run as root otherwise
        done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode != 0 or not out.exists():
        sys.stderr.write(done.stderr)
        raise SystemExit(f"error: chromium failed (exit {done.returncode})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "result",
        nargs="?",
        type=Path,
        help="a simulation result (resilience simulate --json PATH); with --demo, where to "
        "write the synthetic one",
    )
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--demo", action="store_true", help="use a synthetic result")
    parser.add_argument("--seed", type=int, default=1, help="the synthetic result's seed")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the report in DIR")
    parser.add_argument("--window-size", default=WINDOW, help=f"default {WINDOW}")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"default {CHROMIUM}")
    args = parser.parse_args(argv)

    if args.demo:
        result = demo_result(args.seed)
        if args.result is not None:
            args.result.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    elif args.result is None:
        parser.error("give a RESULT.json, or --demo")
    else:
        try:
            result = json.loads(args.result.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"error: {args.result}: {exc}", file=sys.stderr)
            return 1

    if shutil.which(args.chromium) is None:  # for a path: whether it is an executable file
        print(
            f"error: {args.chromium} not found; install Debian's Chromium with:\n    {INSTALL}",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="report-") as scratch:
        directory = args.keep if args.keep is not None else Path(scratch)
        page = render_report(result, directory)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(page, args.out, args.window_size, args.chromium)
    print(f"screenshot written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
