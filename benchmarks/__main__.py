"""Usage: ``python -m benchmarks [SUITE] [--quick] [--json PATH] [--check]``.

SUITE: ``speed`` (the default), ``faults``, ``fleet``, ``flags``, ``ranking``,
``observability``, ``hostile`` (how long each hostile policy file takes to be refused) or
``soak`` (the chaos soak, docs/chaos-soak.md: ``--seconds N --seed S``; ``--json -`` prints the
results as JSON instead of the report; exit 1 when a bound is missed);
``python -m benchmarks profile --help``: a pyinstrument profile of a decision.

Without a suite name: the performance suite of docs/performance.md, every figure a ratio of
interleaved runs against a baseline measured in the same run: the happy path against
hand-written code, a naive composition of the libraries, degraded paths, post steps, scale,
throughput, memory and cutoff accuracy, then the targets (``--check``: exit 1 if one is missed).
``faults``: the fault drill against a real redis-server (docs/fault-tolerance.md).
``observability``: a decision with metrics and events as shipped, and with every decision
logged, against both off (ratios).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    concurrency,
    degraded,
    faults,
    flag_propagation,
    fleet,
    happy_path,
    hostile,
    memory,
    naive,
    observability,
    overrun,
    post_steps,
    ranking,
    scale,
    soak,
    throughput,
)
from .targets import check_targets


def _overrun_line(mode: str, figures: dict[str, Any]) -> str:
    spread = figures["overrun_ms"]
    outcomes = ", ".join(f"{name} {count}" for name, count in figures["outcomes"].items())
    line = (
        f"cutoff.{mode} (measurement, not a ratio): ms past the 10 ms budget over "
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


def _soak(args: argparse.Namespace) -> int:
    seconds = args.seconds if args.seconds is not None else (2.5 if args.quick else 60.0)
    results = {
        "python": platform.python_version(),
        "quick": args.quick,
        **soak.run(seconds=seconds, seed=args.seed),
    }
    if args.json is not None and str(args.json) == "-":
        print(json.dumps(results, indent=2))
    else:
        print(soak.report(results), flush=True)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["passed"] else 1


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


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks`` (``profile`` has its own:
    :func:`benchmarks.profile.parser`)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "suite",
        nargs="?",
        choices=(
            "speed",
            "faults",
            "fleet",
            "flags",
            "ranking",
            "observability",
            "hostile",
            "soak",
        ),
        default="speed",
        help="speed (default): ratios against hand-written code; faults: the fault drill "
        "against a real redis-server; fleet: fleet breakers across processes; flags: a kill "
        "switch flipped in Redis reaching two processes; ranking: "
        "exploration on the synthetic population, and post-step cost; observability: the "
        "cost of metrics and events per decision; soak: the chaos soak (exit 1 when a bound is "
        "missed)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument(
        "--json",
        type=Path,
        help="also write the results here (soak: - prints them instead of the report)",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a target of the speed suite is missed"
    )
    parser.add_argument(
        "--seconds", type=float, help="soak: seconds of chaos (default 60; --quick: 2.5)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="soak: seeds the chaos schedule (default 1)"
    )
    return parser


def main() -> int:
    if sys.argv[1:2] == ["profile"]:  # its own options (benchmarks/profile.py)
        from . import profile  # noqa: PLC0415 - pyinstrument, a dev dependency, only here

        return profile.main(sys.argv[2:])
    args = parser().parse_args()
    if args.suite == "soak":
        return _soak(args)
    if args.suite == "faults":
        return _faults(args)
    if args.suite == "hostile":
        refused = {"python": platform.python_version(), "cases": hostile.run(quick=args.quick)}
        for case, figures in refused["cases"].items():
            print(
                f"hostile.{case}: refused in {figures['ms']:.1f} ms, peak "
                f"{figures['peak_bytes'] / 2**20:.1f} MiB: {figures['message'][:70]}"
            )
        if args.json:
            args.json.write_text(json.dumps(refused, indent=2) + "\n")
        return 0
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
    return _speed(args)


def _speed(args: argparse.Namespace) -> int:
    """The performance suite: every figure of docs/performance.md, then the targets."""
    quick = args.quick
    results: dict[str, Any] = {"python": platform.python_version(), "quick": quick}

    def section(name: str, measure: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        results[name] = measure()
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        return results[name]

    happy = section("happy_path", lambda: happy_path.run(quick=quick))
    for mode, figures in happy.items():
        print(_ratio_line(f"happy_path.{mode}", figures, "engine", "hand-written"), flush=True)

    naive_figures = section("naive", lambda: naive.run(quick=quick))
    for mode, figures in naive_figures.items():
        print(
            f"naive.{mode}: pybreaker + tenacity + thread-pool timeout + structlog "
            f"{figures['naive_ns'] / 1000:.2f} us, engine {figures['engine_ns'] / 1000:.2f} us, "
            f"speedup {figures['speedup']:.2f}",
            flush=True,
        )

    for mode, paths in section("degraded", lambda: degraded.run(quick=quick)).items():
        for path, figures in paths.items():
            label = f"degraded.{mode}.{path} ({figures['served']} serves, {figures['reason']})"
            print(_ratio_line(label, figures, "degraded", "happy"), flush=True)

    for size, figures in section("post_steps", lambda: post_steps.run(quick=quick)).items():
        print(
            f"post_steps.{size}: boost_cap + exploration over {size} candidates "
            f"{figures['post_steps_us']:.1f} us per decision, {figures['per_candidate_ns']:.0f} "
            f"ns per candidate (decision {figures['ratio']:.2f}x the same without them)",
            flush=True,
        )

    grown = section("scale", lambda: scale.run(quick=quick))
    for count in ("10", "100"):
        label = f"scale.policies.{count} (decision with {count} policies loaded)"
        print(_ratio_line(label, grown["policies"][count], str(count), "1"), flush=True)
    tiers = grown["tiers"]
    print(
        "scale.tiers: "
        + ", ".join(
            f"{n} tiers {tiers[n]['subject_ns'] / 1000:.2f} us" for n in ("5", "10") if n in tiers
        )
        + f" (2 tiers {tiers['2']['ns'] / 1000:.2f} us); {tiers['per_tier_ns'] / 1000:.2f} us per "
        f"tier tried, linearity {tiers['linearity']:.2f}",
        flush=True,
    )

    rates = section("throughput", lambda: throughput.run(quick=quick))
    for mode, figures in rates.items():
        extra = f", {figures['tasks']} concurrent tasks" if "tasks" in figures else ""
        print(
            f"throughput.{mode}: engine {figures['engine_per_s']:,.0f} decisions/s, hand-written "
            f"{figures['hand_written_per_s']:,.0f}/s (time ratio {figures['ratio']:.2f}){extra}",
            flush=True,
        )

    memory_figures = section("memory", lambda: memory.run(quick=quick))
    for mode in ("sync", "async"):
        engine, hand = memory_figures[mode]["engine"], memory_figures[mode]["hand_written"]
        print(
            f"memory.{mode}: per decision, engine retains {engine['retained_bytes']:,.0f} B "
            f"(peak {engine['transient_peak_bytes']:,.0f} B), hand-written "
            f"{hand['retained_bytes']:,.0f} B (peak {hand['transient_peak_bytes']:,.0f} B); "
            f"leak {engine['leak_bytes_per_decision']:.2f} B per decision",
            flush=True,
        )
    cache = memory_figures["stale_cache"]
    print(
        f"memory.stale_cache: {cache['entries']:,} entries (bound {cache['max_entries']:,}): "
        f"RSS {cache['rss_bytes'] / 2**20:.1f} MiB, {cache['rss_bytes_per_entry']:,.0f} B per "
        f"entry ({cache['bound_source']})",
        flush=True,
    )

    cut = section("cutoff", lambda: overrun.run(quick=quick))
    for mode in ("async", "async_stress", "sync"):
        print(_overrun_line(mode, cut[mode]), flush=True)

    batch = section("breaker_concurrency", lambda: concurrency.run(quick=quick))
    print(
        f"breaker_concurrency: {batch['threads']} threads x {batch['block_ms']:g} ms calls: "
        f"plain {batch['plain_ms']:.1f} ms, through one breaker {batch['resilience_ms']:.1f} ms, "
        f"ratio {batch['ratio']:.2f}; pybreaker {batch['pybreaker_ms']:.1f} ms, "
        f"ratio {batch['pybreaker_ratio']:.2f} (medians of {batch['repeats']} interleaved repeats)",
        flush=True,
    )

    results["targets"] = targets = check_targets(results)
    for name, verdict in targets.items():
        print(f"target {name}: {'met' if verdict['met'] else 'MISSED'} ({verdict['detail']})")
    print(f"suite: {sum(results['seconds'].values()):.0f} s measured")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if args.check and not all(v["met"] for v in targets.values()) else 0


def _ratio_line(label: str, figures: dict[str, Any], subject: str, baseline: str) -> str:
    return (
        f"{label}: {subject} {figures['subject_ns'] / 1000:.2f} us, {baseline} "
        f"{figures['baseline_ns'] / 1000:.2f} us, ratio {figures['ratio']:.2f} "
        f"(quartiles {figures['ratio_q1']:.2f}-{figures['ratio_q3']:.2f}, "
        f"{figures['repeats']} interleaved repeats)"
    )


if __name__ == "__main__":
    sys.exit(main())
