"""The benchmark runs and compares like with like (it asserts no timing)."""

from __future__ import annotations

from benchmarks import happy_path


def test_happy_path_benchmark_runs_and_reports_ratios() -> None:
    results = happy_path.run(quick=True)
    assert set(results) == {"sync", "async"}
    for figures in results.values():
        assert figures["ratio"] > 0
        assert figures["subject_ns"] > 0
        assert figures["baseline_ns"] > 0
        assert figures["repeats"] >= 7
