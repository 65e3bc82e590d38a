"""The naive-composition, throughput and memory benchmarks run and report sane figures (they
assert no timing)."""

from __future__ import annotations

import threading


def test_naive_composition_reports_speedups_and_leaves_no_threads() -> None:
    from benchmarks import naive

    before = set(threading.enumerate())
    results = naive.run(quick=True, calls=20, repeats=1)
    # the thread pool was shut down (threads of earlier tests may end meanwhile: not counted)
    assert set(threading.enumerate()) - before == set()
    assert set(results) == {"sync", "async"}
    for figures in results.values():
        assert set(figures) == {"speedup", "engine_ns", "naive_ns", "repeats", "calls_per_repeat"}
        assert figures["speedup"] > 0
        assert figures["engine_ns"] > 0
        assert figures["naive_ns"] > 0
        assert figures["repeats"] == 1
        assert figures["calls_per_repeat"] == 20


def test_the_naive_composition_decides_as_the_engine_does_and_logs_each_step() -> None:
    import io

    from benchmarks import naive
    from benchmarks.happy_path import REQUEST, policy_text, sync_sources
    from resilience import Engine, NullSink, Outcome, load_policies

    log = io.StringIO()
    with Engine(load_policies(policy_text()), sync_sources(), events=NullSink()) as engine:
        composed = naive.Naive(engine.config_version(), log)
        try:
            decision = composed.decide(REQUEST)
        finally:
            composed.close()
        expected = engine.decide(REQUEST)
    assert decision.signals == expected.signals
    assert decision.trace.served == "session"
    assert [r.step for r in decision.trace.steps] == ["error_rate", "session"]
    assert decision.trace.outcome_of("session") is Outcome.OK
    assert decision.trace.config_version == expected.trace.config_version
    lines = log.getvalue().splitlines()
    assert len(lines) == 2  # one line per step, rendered by structlog's default processors
    assert "step=error_rate" in lines[0]
    assert "step=session" in lines[1]


def test_throughput_reports_decisions_per_second_and_no_failures() -> None:
    from benchmarks import throughput

    results = throughput.run(quick=True, calls=50, repeats=1, tasks=20, per_task=2)
    assert set(results) == {"sync", "async_concurrent"}
    sync = results["sync"]
    for key in ("engine_per_s", "hand_written_per_s", "ratio", "engine_ns", "hand_written_ns"):
        assert sync[key] > 0, key
    assert sync["calls_per_repeat"] == 50
    concurrent = results["async_concurrent"]
    assert concurrent["tasks"] == 20
    assert concurrent["decisions"] == 40
    assert concurrent["failed"] == 0  # every decision was served by the session tier
    assert concurrent["checked"] >= 40 * 3  # two surveys and at least one timed repeat
    for key in ("engine_per_s", "hand_written_per_s", "ratio"):
        assert concurrent[key] > 0, key
    at_reference = concurrent["at_reference_budget"]
    assert sum(at_reference["served"].values()) == 40
    assert concurrent["limits_ms"]["budget"] > 30


def test_the_yielding_sources_really_yield_to_the_loop() -> None:
    import asyncio

    from benchmarks import throughput

    order: list[str] = []

    async def other() -> None:
        order.append("other")

    async def both() -> None:
        task = asyncio.create_task(other())
        await throughput.yielding_sessions("s1")
        order.append("read")
        await task

    asyncio.run(both())
    assert order == ["other", "read"]


def test_memory_reports_bytes_per_decision_and_a_cache_at_its_bound() -> None:
    from benchmarks import memory

    results = memory.run(quick=True, decisions=100, samples=5, cache_entries=2_000)
    assert set(results) == {"sync", "async", "stale_cache"}
    for mode in ("sync", "async"):
        for side in ("engine", "hand_written"):
            figures = results[mode][side]
            assert figures["retained_bytes"] > 0
            assert figures["transient_peak_bytes"] > 0
            # discarded decisions leave (almost) nothing behind
            assert abs(figures["leak_bytes_per_decision"]) < 0.05 * figures["retained_bytes"]
        assert results[mode]["ratio"]["retained"] > 0
    cache = results["stale_cache"]
    assert cache["max_entries"] == 2_000
    assert cache["inserted"] == 2_200
    assert cache["entries"] == cache["max_entries"]  # overfilled, it stays at its bound
    assert cache["tracemalloc_bytes"] > 0
    assert cache["bytes_per_entry"] > 0
    assert cache["rss_bytes"] > 0
    assert cache["bound_source"] == "override (smoke test)"
    assert cache["policy_max_entries"] == 100_000


def test_the_stale_cache_bound_is_the_reference_policys() -> None:
    from resilience_plugins.signal_cache import DEFAULT_MAX_ENTRIES

    from benchmarks import memory
    from benchmarks.happy_path import policy_text
    from resilience import load_policies

    bound, ttl, declared = memory.cache_bound(load_policies(policy_text()))
    assert (bound, ttl, declared) == (DEFAULT_MAX_ENTRIES, 300.0, False)
