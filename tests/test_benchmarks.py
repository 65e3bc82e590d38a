"""The benchmark runs and compares like with like (it asserts no timing)."""

from __future__ import annotations

from typing import Any

from benchmarks import happy_path

from .conftest import need_redis_server


def test_happy_path_benchmark_runs_and_reports_ratios() -> None:
    results = happy_path.run(quick=True)
    assert set(results) == {"sync", "async", "foundation_sync", "foundation_async"}
    for figures in results.values():
        assert figures["ratio"] > 0
        assert figures["subject_ns"] > 0
        assert figures["baseline_ns"] > 0
        assert figures["repeats"] >= 7


def test_breaker_concurrency_benchmark_reports_all_three_variants() -> None:
    from benchmarks import concurrency

    results = concurrency.run(quick=True, threads=4, block=0.002, repeats=2)
    for key in ("ratio", "pybreaker_ratio", "plain_ms", "resilience_ms", "pybreaker_ms"):
        assert results[key] > 0, key
    assert results["threads"] == 4
    assert results["repeats"] == 2
    assert results["breaker_state"] == "closed"  # every call succeeded through the breaker


def test_overrun_benchmark_counts_outcomes_and_never_raises() -> None:
    from benchmarks import overrun

    results = overrun.run(quick=True, calls=24, threads=4, batch=8, stress_batch=12, sync_hang=0.05)
    assert results["budget_ms"] == 10.0
    for mode in ("async", "sync"):
        figures = results[mode]
        assert figures["exceptions"] == 0
        assert figures["calls"] == 24
        assert set(figures["outcomes"]) == {"timeout", "rejected"}
        assert sum(figures["outcomes"].values()) == 24
        assert figures["served"] == {"unpersonalized": 24}
        assert set(figures["overrun_ms"]) == {"p50", "p99", "p99.9", "max"}
    assert results["async"]["outcomes"]["timeout"] == 24  # cancelled at the deadline, every one
    assert set(results["async"]["asyncio_floor_ms"]) == {"p50", "p99", "p99.9", "max"}
    assert results["sync"]["max_concurrent"] == 512


def test_the_fault_drill_runs_against_a_private_redis() -> None:
    need_redis_server()
    from benchmarks import faults

    results = faults.run(quick=True, decisions=30, faults=("healthy", "refused", "malformed"))
    assert results["budget_ms"] == 30.0
    assert [(r["fault"], r["mode"]) for r in results["rows"]] == [
        (fault, mode) for mode in ("sync", "async") for fault in ("healthy", "refused", "malformed")
    ]
    for row in results["rows"]:
        assert row["failed"] == 0
        assert row["decisions"] == 30
    healthy = results["rows"][0]
    assert healthy["served_by"] == {"session": 1.0}
    refused = results["rows"][1]
    assert "session" not in refused["served_by"]


def test_the_ranking_experiment_runs_on_the_synthetic_population() -> None:
    from benchmarks import ranking

    results = ranking.run(quick=True, searches=200)
    for arm in ("exploration_on", "exploration_off"):
        assert 0.0 < results[arm]["coverage"] <= 1.0
        assert results[arm]["ctr"] >= 0.0
    assert set(results["post_step_cost"]) == {"50", "500"}


def test_the_observability_benchmark_compares_each_configuration_with_off() -> None:
    import logging

    from benchmarks import observability

    logger = logging.getLogger("resilience")
    before = (list(logger.handlers), logger.level, logger.propagate)
    results = observability.run(quick=True, calls=20, repeats=1)
    assert (list(logger.handlers), logger.level, logger.propagate) == before  # restored
    for mode in ("sync", "async"):
        assert set(results[mode]) == {"default", "all_logged"}
        for figures in results[mode].values():
            assert figures["ratio"] > 0
            assert figures["subject_ns"] > 0
            assert figures["baseline_ns"] > 0
            assert figures["repeats"] == 1
            assert figures["calls_per_repeat"] == 20
    assert results["scrape_ms"]["median"] > 0
    assert results["scrape_ms"]["bytes"] > 0
    assert results["scraped_decisions"] > 0


def _suite_figures(*, happy: float, breaker_open: float, q1: float, q3: float) -> dict[str, Any]:
    return {
        "happy_path": {"sync": {"ratio": happy}, "async": {"ratio": 1.2}},
        "degraded": {
            "sync": {"breaker_open": {"ratio": breaker_open}},
            "async": {"breaker_open": {"ratio": 0.7}},
        },
        "scale": {
            "policies": {"100": {"ratio": (q1 + q3) / 2, "ratio_q1": q1, "ratio_q3": q3}},
            "tiers": {"linearity": 1.0},
        },
    }


def test_the_targets_are_met_by_good_figures_and_missed_by_bad_ones() -> None:
    from benchmarks.targets import check_targets

    good = check_targets(_suite_figures(happy=1.49, breaker_open=0.8, q1=0.98, q3=1.03))
    assert all(verdict["met"] for verdict in good.values()), good
    noisy = check_targets(_suite_figures(happy=1.2, breaker_open=0.8, q1=0.80, q3=0.99))
    assert noisy["scale.policies.100 flat"]["met"]  # faster with 100 policies: noise, not a fault
    bad = check_targets(_suite_figures(happy=1.51, breaker_open=1.02, q1=0.98, q3=1.14))
    missed = {name for name, verdict in bad.items() if not verdict["met"]}
    assert missed == {
        "happy_path.sync.ratio <= 1.5",
        "degraded.sync.breaker_open.ratio < 1",
        "scale.policies.100 flat",
    }


def test_the_profile_shows_where_a_decision_spends_its_time() -> None:
    from benchmarks.profile import profile

    tree = profile(asynchronous=False, post=50, calls=200, baseline=False)
    assert "Engine.decide" in tree
    assert "BoostCapStep.apply" in tree  # the post steps ran, and the profile saw them
    baseline = profile(asynchronous=True, post=0, calls=200, baseline=True)
    assert "HandWritten.adecide" in baseline
    assert "Engine" not in baseline


def test_the_post_step_benchmark_reranks_every_page_it_times() -> None:
    from benchmarks import post_steps

    results = post_steps.run(quick=True, calls=5, repeats=1)
    assert set(results) == {"50", "500"}
    for size, figures in results.items():
        assert figures["candidates"] == int(size)
        assert figures["subject_ns"] > 0
        assert figures["baseline_ns"] > 0
        spent = (figures["subject_ns"] - figures["baseline_ns"]) / int(size)
        assert abs(figures["per_candidate_ns"] - spent) <= 0.1  # the two medians are rounded


def test_the_hostile_file_benchmark_times_every_case() -> None:
    from benchmarks import hostile

    results = hostile.run(quick=True)
    assert set(results) == set(hostile.CASES) | set(hostile.BEYOND_RECURSION)
    for case, figures in results.items():
        assert figures["ms"] >= 0
        assert figures["message"], case
