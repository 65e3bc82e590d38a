"""Usage: ``python -m benchmarks [SUITE] [--quick] [--json PATH]``.

SUITE: ``speed`` (the default), ``faults``, ``fleet``, ``flags``, ``ranking`` or
``observability``.

Without a suite name: the engine's speed against hand-written code (ratios). ``faults``: the
fault drill against a real redis-server (docs/fault-tolerance.md). ``observability``: a decision
with metrics and events as shipped, and with every decision logged, against both off (ratios).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from . import (
    concurrency,
    faults,
    flag_propagation,
    fleet,
    happy_path,
    observability,
    open_breaker,
    overrun,
    ranking,
)


def _overrun_line(mode: str, figures: dict[str, Any]) -> str:
    spread = figures["overrun_ms"]
    outcomes = ", ".join(f"{name} {count}" for name, count in figures["outcomes"].items())
    line = (
        f"overrun.{mode} (measurement, not a ratio): ms past the 10 ms budget over "
        f"{figures['calls']} decisions: p50 {spread['p50']:.2f}, p99 {spread['p99']:.2f}, "
        f"p99.9 {spread['p99.9']:.2f}, max {spread['max']:.2f}; "
        f"exceptions {figures['exceptions']}; session outcomes: {outcomes}"
    )
    if "asyncio_floor_ms" in figures:
        floor = figures["asyncio_floor_ms"]
        line += (
            f"; {figures['concurrent']} concurrent; bare asyncio.timeout floor: "
            f"p50 {floor['p50']:.2f}, p99.9 {floor['p99.9']:.2f}"
        )
    else:
        line += f"; {figures['threads']} threads, bulkhead of {figures['max_concurrent']}"
        floor = figures["threads_floor_ms"]
        line += f"; bare thread wake-up floor: p50 {floor['p50']:.2f}, p99.9 {floor['p99.9']:.2f}"
    return line


def _faults(args: argparse.Namespace) -> int:
    results = {
        "python": platform.python_version(),
        "quick": args.quick,
        **faults.run(quick=args.quick),
    }
    print(
        f"fault drill, budget {results['budget_ms']:g} ms "
        f"(jitter probe max {results['jitter_probe_max_ms']:.2f} ms)"
    )
    header = (
        "fault",
        "mode",
        "decisions",
        "failed",
        "late",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "breaker_transitions",
        "breaker_open_p99_ms",
    )
    print("  ".join(f"{h:>14}" for h in header) + "  served_by")
    for row in results["rows"]:
        cells = [str(row[h]) if row[h] is not None else "-" for h in header]
        served = ", ".join(f"{k} {v:.0%}" for k, v in row["served_by"].items())
        print("  ".join(f"{c:>14}" for c in cells) + f"  {served}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _observability(args: argparse.Namespace) -> int:
    results = {
        "python": platform.python_version(),
        "quick": args.quick,
        **observability.run(quick=args.quick),
    }
    print("  ".join(f"{h:>13}" for h in ("mode", "configuration", "engine_ns", "off_ns", "ratio")))
    for mode in ("sync", "async"):
        for name, figures in results[mode].items():
            cells = (
                mode,
                name,
                f"{figures['subject_ns']:.0f}",
                f"{figures['baseline_ns']:.0f}",
                f"{figures['ratio']:.3f}",
            )
            print("  ".join(f"{c:>13}" for c in cells), flush=True)
    repeats = results["sync"]["default"]["repeats"]
    calls = results["sync"]["default"]["calls_per_repeat"]
    scrape = results["scrape_ms"]
    print(
        f"(medians of {repeats} interleaved repeats of {calls} decisions; target: default "
        f"ratio 1.10 or lower)\nscrape (measurement, not a ratio): generate_latest of the default "
        f"engine's registry after {results['scraped_decisions']} decisions: median "
        f"{scrape['median']:.3f} ms over {scrape['scrapes']} scrapes, {scrape['bytes']} bytes"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "suite",
        nargs="?",
        choices=("speed", "faults", "fleet", "flags", "ranking", "observability"),
        default="speed",
        help="speed (default): ratios against hand-written code; faults: the fault drill "
        "against a real redis-server; fleet: fleet breakers across processes; flags: a kill "
        "switch flipped in Redis reaching two processes; ranking: "
        "exploration on the synthetic population, and post-step cost; observability: the "
        "cost of metrics and events per decision",
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.suite == "faults":
        return _faults(args)
    if args.suite == "observability":
        return _observability(args)
    if args.suite == "ranking":
        results = {"python": platform.python_version(), **ranking.run(quick=args.quick)}
        on, off = results["exploration_on"], results["exploration_off"]
        print(
            f"ranking.exploration over {results['searches']} searches: coverage of the top 10 "
            f"{off['coverage']:.3f} off -> {on['coverage']:.3f} on; clicks per list "
            f"{off['ctr']:.3f} off -> {on['ctr']:.3f} on"
        )
        for size, cost in results["post_step_cost"].items():
            print(
                f"ranking.post_step_cost.{size}: boost_cap + exploration "
                f"{cost['post_steps_us']:.1f} us per decision (decision {cost['ratio']:.1f}x "
                "the same without post steps)"
            )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if args.suite == "flags":
        results = {"python": platform.python_version(), **flag_propagation.run(quick=args.quick)}
        spread, floor = results["propagation"], results["pubsub_floor"]
        print(
            f"flags.propagation ({results['flips']} flips x {results['processes']} processes, "
            f"write to first obeying decision): p50 {spread['p50_ms']:.2f} ms, p99 "
            f"{spread['p99_ms']:.2f} ms, max {spread['max_ms']:.2f} ms (goal p99 < "
            f"{results['goal_p99_ms']:g} ms); Redis publish->receive floor p50 "
            f"{floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms; ratio p50 "
            f"{results['ratio_p50']:.1f}"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if args.suite == "fleet":
        results = {"python": platform.python_version(), **fleet.run(quick=args.quick)}
        spread = results["propagation_s"]
        ratio = results["redis_down_ratio"]
        print(
            f"fleet.propagation (another process opens after this one): median "
            f"{spread['median']:.3f} s, max {spread['max']:.3f} s over "
            f"{len(spread['trials'])} trials, sync_every {results['sync_every_ms']:g} ms"
        )
        print(
            f"fleet.redis_down_ratio: decisions with the fleet's Redis frozen "
            f"{ratio['subject_ns'] / 1000:.2f} us, with it up {ratio['baseline_ns'] / 1000:.2f}"
            f" us, ratio {ratio['ratio']:.2f} (median of {ratio['repeats']} interleaved "
            "repeats)"
        )
        killed = results["redis_killed_ratio"]
        print(
            f"fleet.redis_killed_ratio: with the fleet's Redis killed "
            f"{killed['subject_ns'] / 1000:.2f} us, with it up "
            f"{killed['baseline_ns'] / 1000:.2f} us, ratio {killed['ratio']:.2f}"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "quick": args.quick,
        "happy_path": happy_path.run(quick=args.quick),
    }
    for mode, figures in results["happy_path"].items():
        print(
            f"happy_path.{mode}: engine {figures['subject_ns'] / 1000:.2f} us, "
            f"hand-written {figures['baseline_ns'] / 1000:.2f} us, "
            f"ratio {figures['ratio']:.2f} (median of {figures['repeats']} interleaved repeats)",
            flush=True,
        )

    results["breaker_concurrency"] = batch = concurrency.run(quick=args.quick)
    print(
        f"breaker_concurrency: {batch['threads']} threads x {batch['block_ms']:g} ms calls: "
        f"plain {batch['plain_ms']:.1f} ms, through one breaker {batch['resilience_ms']:.1f} ms, "
        f"ratio {batch['ratio']:.2f}; pybreaker {batch['pybreaker_ms']:.1f} ms, "
        f"ratio {batch['pybreaker_ratio']:.2f} (medians of {batch['repeats']} interleaved repeats)",
        flush=True,
    )

    results["open_breaker"] = open_breaker.run(quick=args.quick)
    for mode, figures in results["open_breaker"].items():
        print(
            f"open_breaker.{mode}: breaker open ({figures['served']} serves) "
            f"{figures['subject_ns'] / 1000:.2f} us, "
            f"happy path {figures['baseline_ns'] / 1000:.2f} us, ratio {figures['ratio']:.2f} "
            f"(median of {figures['repeats']} interleaved repeats)",
            flush=True,
        )

    results["overrun"] = overrun.run(quick=args.quick)
    for mode in ("async", "async_stress", "sync"):
        print(_overrun_line(mode, results["overrun"][mode]), flush=True)

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


sys.exit(main())
