"""The degraded-path and scale benchmarks run and measure what they say (they assert no timing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from benchmarks import degraded, scale
from benchmarks.happy_path import REQUEST, policy_text, sync_sources
from resilience import Engine, NullSink, Outcome, load_policies

FIGURES = {
    "ratio",
    "ratio_q1",
    "ratio_q3",
    "subject_ns",
    "baseline_ns",
    "repeats",
    "calls_per_repeat",
}


def _check_figures(figures: dict[str, object], *, calls: int, repeats: int) -> None:
    for key in ("ratio", "subject_ns", "baseline_ns"):
        value = figures[key]
        assert isinstance(value, float)
        assert value > 0, key
    assert figures["repeats"] == repeats
    assert figures["calls_per_repeat"] == calls


def test_each_degraded_path_is_served_by_its_tier_for_its_reason() -> None:
    results = degraded.run(quick=True, calls=5, repeats=1)
    assert set(results) == {"sync", "async"}
    expected = {
        "session_failing": ("stale_cache", "fallback", "error"),
        "breaker_open": ("stale_cache", "fallback", "breaker_open"),
        "kill_switch": ("unpersonalized", "switched_off", None),
        "holdout": ("unpersonalized", "holdout", None),
    }
    for mode, paths in results.items():
        assert list(paths) == list(degraded.PATHS), mode
        for path, figures in paths.items():
            assert set(figures) == FIGURES | {"served", "reason", "session"}, (mode, path)
            assert (figures["served"], figures["reason"], figures["session"]) == expected[path]
            _check_figures(figures, calls=5, repeats=1)


def test_the_failing_store_policy_differs_only_in_a_breaker_that_failures_cannot_open() -> None:
    happy, failing = policy_text().splitlines(), degraded.failing_policy_text().splitlines()
    changed = [(a, b) for a, b in zip(happy, failing, strict=True) if a != b]
    assert len(changed) == 1
    assert changed[0][1].strip().startswith("failure_rate: 1.0")
    policies = load_policies(degraded.failing_policy_text())
    breaker = policies.source_options("session_store").breaker
    assert breaker is not None
    assert breaker.failure_rate == 1.0
    profile_breaker = policies.source_options("profile_store").breaker
    assert profile_breaker is not None
    assert profile_breaker.failure_rate == 0.5  # only the session store's breaker changed


@pytest.mark.parametrize(
    ("text", "outcome", "state"),
    [
        (degraded.failing_policy_text, Outcome.ERROR, "closed"),
        (policy_text, Outcome.BREAKER_OPEN, "open"),  # the reference breaker: it opens
    ],
)
def test_only_the_failing_store_policy_keeps_its_breaker_closed(
    text: Callable[[], str], outcome: Outcome, state: str
) -> None:
    sessions = degraded.SwitchableSessions()
    sources = {**sync_sources(), "session_store": sessions.get}
    with Engine(load_policies(text()), sources, events=NullSink(), seed=1) as engine:
        assert engine.decide(REQUEST).trace.served == "session"
        sessions.failing = True
        for _ in range(300):  # many times the window's minimum_calls, every call failing
            trace = engine.decide(REQUEST).trace
        assert trace.outcome_of("session") is outcome, trace
        assert trace.served == "stale_cache", trace
        assert engine.breaker("session_store").snapshot().state == state


def test_the_held_out_request_differs_from_the_happy_one_only_in_its_user() -> None:
    request = degraded.HELD_OUT_REQUEST
    assert request.user_id != REQUEST.user_id
    assert dataclasses.replace(request, user_id=REQUEST.user_id) == REQUEST


def test_the_scale_benchmark_reports_every_size() -> None:
    results = scale.run(quick=True, calls=5, repeats=1)
    assert set(results) == {"policies", "tiers"}
    policies = results["policies"]
    assert list(policies) == ["1", "10", "100"]
    assert policies["1"]["ns"] > 0
    for count in ("1", "10", "100"):
        assert policies[count]["loaded"] == int(count)
    for count in ("10", "100"):
        assert set(policies[count]) == FIGURES | {"loaded"}
        _check_figures(policies[count], calls=5, repeats=1)
    tiers = results["tiers"]
    assert set(tiers) == {"2", "5", "10", "per_tier_ns", "fixed_ns", "linearity"}
    assert tiers["2"]["ns"] > 0
    for length in ("2", "5", "10"):
        assert tiers[length]["tried"] == int(length)
    for length in ("5", "10"):
        assert set(tiers[length]) == FIGURES | {"tried"}
        _check_figures(tiers[length], calls=5, repeats=1)
    for key in ("per_tier_ns", "fixed_ns", "linearity"):
        assert isinstance(tiers[key], float), key


def test_an_engine_really_holds_a_hundred_complete_policies() -> None:
    policies = load_policies(scale.policies_text(100))
    with Engine(policies, sync_sources(), events=NullSink(), seed=1) as engine:
        versions = engine.versions()
        assert set(versions) == {"search"} | {f"search_{n}" for n in range(2, 101)}
        # a version hashes a policy's whole normalized content (guards, holdout, chain, sources)
        assert set(versions.values()) == {versions["search"]}
        copy = engine.decide(dataclasses.replace(REQUEST, policy="search_100")).trace
        assert copy.policy == "search_100"
        assert copy.served == "session"
        assert [r.step for r in copy.steps] == ["error_rate", "session"]
    assert scale.policies_text(1) == policy_text()


@pytest.mark.parametrize("length", [2, 3, 5, 10])
def test_every_tier_of_a_scale_chain_is_tried(length: int) -> None:
    policies = load_policies(scale.chain_text(length))
    with Engine(policies, scale.chain_sources(), events=NullSink(), seed=1) as engine:
        trace = engine.decide(REQUEST).trace
    assert len(trace.steps) == length
    assert [r.outcome for r in trace.steps] == [Outcome.MISS] * (length - 1) + [Outcome.OK]
    assert trace.served == "unpersonalized"
    assert len(policies.policies["chain"].chain) == length
