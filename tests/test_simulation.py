"""The simulator: the default scenario's acceptance figures, the lift interval's coverage over
many seeds, scenario validation, and ``resilience simulate``. Everything runs on the virtual
clock and is seeded, but the ``--redis`` runs, which read sessions from a private redis-server
(the ``redis_server`` fixture, never a shared one) on a clock of real time plus skipped time;
nothing asserts on timings."""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from resilience import Click, SessionState
from resilience._redis import SessionFormat, decode_session
from resilience.cli import main
from resilience.simulation import (
    Scenario,
    ScenarioError,
    SimulationError,
    builtin_scenarios,
    load_scenario,
    simulate,
)
from resilience.simulation._faults import encode_session
from resilience.testing import RedisServer

# A small, fast world: every search its own session, many users, half of them held out.
SMALL = """
name: small
duration: 20s
world:
  users: 1000
  items: 400
  candidates: 20
  rate: 15
  session_searches: 1
  click_scale: 1.0
"""

HALF_HOLDOUT = """
version: 1
settings: {{events: {{decision_sample_rate: 0}}, monitoring: {{sample_rate: 0}}}}
default_policy: search
policies:
  search:
    holdout: {{salt: coverage, percent: 50}}
    chain: [session, profile_only, segment, unpersonalized]
    post: {post}
"""
REFERENCE_POST = "[{type: boost_cap, cap: 0.5}, {type: exploration, share: 0.15, k: 10}]"
# The validator refuses cap: 0 (a boost_cap of 0 is no step at all); 1e-9 is as good as 0.
NO_BOOST_POST = "[{type: boost_cap, cap: 1.0e-9}, {type: exploration, share: 0.0, k: 10}]"


@pytest.fixture(scope="module")
def small() -> Scenario:
    return load_scenario("small", text=SMALL)


def _policy(tmp_path: Path, post: str, name: str = "policies.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HALF_HOLDOUT.format(post=post))
    return path


@pytest.fixture(scope="module")
def default_run() -> dict[str, Any]:
    # The default scenario at a quarter of its traffic: the same timeline and faults.
    return simulate("default", seed=1, scale=0.25)


def test_the_default_scenario_meets_the_acceptance_figures(default_run: dict[str, Any]) -> None:
    result = default_run
    assert result["failed"] == 0
    assert result["decisions"] > 2000
    assert result["latency_ms"]["p999"] <= result["budget_ms"] + 2.0
    assert set(result["guardrails"]) == {
        "error_rate",
        "stream_lag",
        "session_store",
        "profile_store",
        "search",
    }
    for name, guard in result["guardrails"].items():
        assert guard["tripped"] >= 1, name
        assert guard["recovered"] >= 1, name
    assert result["lift"]["ci_contains_true"] is True
    assert result["lift"]["true"] > 0.2  # personalization helps, by construction


def test_the_result_holds_the_contracted_keys(default_run: dict[str, Any]) -> None:
    result = default_run
    for key in (
        "scenario",
        "seed",
        "policies",
        "policy",
        "mode",
        "budget_ms",
        "duration_s",
        "decisions",
        "failed",
        "latency_ms",
        "served_by",
        "guardrails",
        "transitions",
        "diversity",
        "ctr",
        "lift",
        "phases",
        "timeline",
        "thresholds",
    ):
        assert key in result, key
    assert set(result["latency_ms"]) == {"p50", "p99", "p999", "max"}
    assert set(result["lift"]) >= {"estimate", "ci_low", "ci_high", "true", "ci_contains_true"}
    assert abs(sum(result["served_by"].values()) - 1.0) < 1e-3
    assert [p["name"] for p in result["phases"]][:2] == ["warm-up", "latency-spike"]
    assert sum(p["decisions"] for p in result["phases"]) == result["decisions"]
    timeline = result["timeline"]
    buckets = len(timeline["t"])
    assert buckets == 120  # 10 minutes in 5 s buckets
    for series in (timeline["error_rate"], timeline["lag_s"], timeline["coverage"]):
        assert len(series) == buckets
    assert max(x for x in timeline["lag_s"] if x is not None) > result["thresholds"]["lag_s"]
    assert {e["label"] for e in timeline["events"]} >= {"kill switch off", "new users"}
    kinds = {t["kind"] for t in result["transitions"]}
    assert kinds == {"breaker", "guard", "flag", "reload"}
    json.dumps(result, allow_nan=False)  # plain, finite data


def test_no_user_or_session_id_reaches_the_result(default_run: dict[str, Any]) -> None:
    """The world's users (user<n>, new<n>), its sessions (s<n>) and the held-out stand-ins
    (counterfactual-<n>) stay in the run: the result and the report built from it carry
    aggregates only."""
    text = json.dumps(default_run)
    assert not re.search(r'"(user|new|s|counterfactual-)\d+"', text)


def test_a_seed_gives_the_same_run(small: Scenario, tmp_path: Path) -> None:
    policy = _policy(tmp_path, REFERENCE_POST)
    first = simulate(small, policies=policy, seed=5, replicates=100)
    second = simulate(small, policies=policy, seed=5, replicates=100)
    first.pop("wall_s"), second.pop("wall_s")
    for result in (first, second):
        for key in ("latency_ms", "phases", "timeline"):
            result.pop(key)  # latency includes measured CPU time: the rest is identical
    assert first == second


def test_the_lift_interval_covers_the_true_lift_about_95_percent_of_the_time(
    small: Scenario, tmp_path: Path
) -> None:
    policy = _policy(tmp_path, REFERENCE_POST)
    seeds = range(80)
    hits = 0
    for seed in seeds:
        lift = simulate(small, policies=policy, seed=seed, replicates=300)["lift"]
        assert lift["ci_low"] is not None and lift["true"] is not None
        hits += lift["ci_contains_true"]
    coverage = hits / len(seeds)
    assert 0.90 <= coverage <= 0.99, coverage


def test_a_policy_that_cannot_reorder_scores_differently(small: Scenario, tmp_path: Path) -> None:
    reference = simulate(small, policies=_policy(tmp_path, REFERENCE_POST), seed=3)
    flat = simulate(small, policies=_policy(tmp_path, NO_BOOST_POST, "flat.yaml"), seed=3)
    # Without a boost or exploration, treatment is shown exactly what the holdout would be.
    assert flat["lift"]["true"] == 0.0
    assert reference["lift"]["true"] > 0.2
    assert reference["lift"]["ci_low"] > 0.0
    assert flat["lift"]["ci_low"] <= 0.0 <= flat["lift"]["ci_high"]
    assert flat["ctr"]["treatment"] < reference["ctr"]["treatment"]


def test_every_built_in_scenario_loads() -> None:
    names = builtin_scenarios()
    assert {"default", "steady"} <= set(names)
    for name in names:
        assert load_scenario(name).name == name


BAD = """\
name: bad
duration: 1m
world: {users: 50, rat: 20}
events:
  - {at: 10s, type: outage, store: sesion_store, for: 10s}
  - {at: 20s, type: hangs, store: session_store, for: 10s}
  - {at: 30, type: hang, store: session_store}
"""


def test_a_bad_scenario_reports_every_problem_with_its_line() -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario("bad.yaml", text=BAD)
    found = [str(issue) for issue in caught.value.issues]
    assert found == [
        "bad.yaml:3:20: world.rat: unknown key 'rat' (did you mean 'rate'?)",
        "bad.yaml:5:29: events[0].store: unknown store 'sesion_store' "
        "(did you mean 'session_store'?)",
        "bad.yaml:6:15: events[1].type: unknown event type 'hangs' (did you mean 'hang'?)",
        "bad.yaml:7:5: events[2].for: missing required key 'for' (add 'for:')",
        "bad.yaml:7:6: events[2].at: a bare number is ambiguous "
        "(write it with a unit, e.g. '30ms' or '30s')",
    ]


def test_problems_across_fields_point_at_their_line() -> None:
    text = """\
name: late
duration: 1m
phases:
  - {name: a, until: 2m}
events:
  - {at: 90s, type: kill_switch, for: 1s}
"""
    with pytest.raises(ScenarioError) as caught:
        load_scenario("late.yaml", text=text)
    found = [(i.line, i.path) for i in caught.value.issues]
    assert found == [(4, "phases[0].until"), (6, "events[0].at")]


def test_an_unknown_built_in_scenario_suggests_one() -> None:
    with pytest.raises(ScenarioError, match="did you mean 'default'"):
        load_scenario("defualt")


def test_a_policy_naming_sources_the_world_lacks_is_refused(
    small: Scenario, tmp_path: Path
) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(
        "version: 1\ndefault_policy: p\npolicies:\n  p:\n"
        "    chain: [{type: profile_only, source: user_db}, unpersonalized]\n"
    )
    with pytest.raises(SimulationError, match="user_db"):
        simulate(small, policies=path)


def test_the_command_writes_json_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "small.yaml"
    scenario.write_text(SMALL)
    out = tmp_path / "result.json"
    code = main(
        [
            "simulate",
            "--scenario",
            str(scenario),
            "--policies",
            str(_policy(tmp_path, REFERENCE_POST)),
            "--seed",
            "2",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "guardrails" in printed and "lift:" in printed
    result = json.loads(out.read_text())
    assert result["seed"] == 2
    assert result["failed"] == 0
    assert set(result["lift"]) >= {"estimate", "ci_low", "ci_high", "true", "ci_contains_true"}


def test_the_command_reports_a_bad_scenario_in_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(BAD)
    assert main(["simulate", "--scenario", str(scenario), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{scenario}:3:20: world.rat: unknown key 'rat'" in err
    assert err.strip().endswith("5 problems")


# --- --redis: the session store on a real (private) Redis, faults injected on the wire -----------

# 90 s of a small world at 10 searches/s: healthy, then each session-store fault in turn, with
# healthy time between them for the breaker to close again.
REDIS_DRILL = """
name: redis-drill
duration: 110s
world: {users: 600, items: 400, candidates: 20, rate: 10}
phases:
  - {name: healthy, until: 20s}
  - {name: slow, until: 30s}
  - {name: gap1, until: 40s}
  - {name: hang, until: 50s}
  - {name: gap2, until: 60s}
  - {name: down, until: 70s}
  - {name: flapping, until: 80s}
  - {name: recovered}
events:
  - {at: 20s, type: latency, store: session_store, latency: 12ms, for: 10s}
  - {at: 40s, type: hang, store: session_store, for: 10s}
  - {at: 60s, type: outage, store: session_store, for: 10s}
  - {at: 70s, type: flapping, store: session_store, for: 10s, down: 2s, up: 3s}
"""


def _keys(server: RedisServer) -> list[bytes]:
    import redis  # the optional extra, present in the dev install

    client = redis.Redis.from_url(server.url)
    try:
        return sorted(client.keys("*"))
    finally:
        client.close()


@pytest.mark.serial  # real reads with 10 ms cutoffs: run alone (see the Makefile)
def test_a_redis_run_reads_sessions_from_redis_through_the_fault_proxy(
    redis_server: RedisServer,
) -> None:
    redis_server.set("someone-else:key", "kept")
    scenario = load_scenario("redis-drill", text=REDIS_DRILL)
    result = simulate(scenario, seed=1, redis=redis_server.url, replicates=100)
    assert result["mode"] == "real+skipped"
    assert result["failed"] == 0
    assert result["decisions"] > 500
    phases = {p["name"]: p for p in result["phases"]}
    # Healthy: the session tier serves, from what the stream processor wrote to Redis.
    assert phases["healthy"]["served_by"].get("session", 0.0) > 0.05
    assert phases["recovered"]["served_by"].get("session", 0.0) > 0.1
    wire = result["redis"]
    assert wire["sessions_written"] > 50
    assert wire["writes"] >= wire["sessions_written"]
    # Faults reached the engine on the wire: reads cut at their deadline (slow, hang), refused
    # connections (down, flapping), and the breaker then refusing reads itself.
    steps = wire["session_steps"]
    for outcome in ("ok", "timeout", "error", "breaker_open"):
        assert steps.get(outcome, 0) > 0, (outcome, steps)
    for name in ("slow", "hang", "down"):
        opened = [t for t in phases[name]["transitions"] if "session_store opened" in t["what"]]
        assert opened, name
    assert result["guardrails"]["session_store"]["tripped"] >= 3
    assert result["guardrails"]["session_store"]["recovered"] >= 3
    # Every key it wrote is gone; the one it did not write is kept.
    assert wire["keys_deleted"] == wire["sessions_written"]
    assert _keys(redis_server) == [b"someone-else:key"]
    json.dumps(result, allow_nan=False)


def test_sessions_are_written_in_the_stores_layout() -> None:
    state = SessionState(
        (Click("item1", "cat0", 1_700_000_000.25), Click("item2", None, 1_700_000_001.5)),
        1_700_000_001.5,
    )
    for fmt in (SessionFormat(), SessionFormat(clicks="c", time="t", time_unit="ms")):
        assert decode_session(encode_session(state, fmt), fmt, 65_536) == state


def test_the_command_runs_against_redis_and_writes_json(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "drill.yaml"
    scenario.write_text(
        "name: short\nduration: 20s\nworld: {users: 300, items: 400, candidates: 20, rate: 10}\n"
        "events: [{at: 10s, type: outage, store: session_store, for: 5s}]\n"
    )
    out = tmp_path / "result.json"
    code = main(
        [
            "simulate",
            "--scenario",
            str(scenario),
            "--redis",
            redis_server.url,
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "real+skipped clock" in printed
    assert f"session store: Redis at {redis_server.url} through a fault proxy" in printed
    result = json.loads(out.read_text())
    assert result["mode"] == "real+skipped"
    assert result["failed"] == 0
    assert result["redis"]["sessions_written"] > 0
    assert _keys(redis_server) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:6379/0", "not a Redis URL"),
        ("redis://127.0.0.1:notaport/0", "the port is not a number"),
        ("redis://127.0.0.1:6379/zero", "not a Redis URL"),
        ("rediss://127.0.0.1:6379/0", "TLS (rediss://) is not supported"),
        ("redis://127.0.0.1:6379/0?max_connections=1", "drop the query"),
    ],
)
def test_a_bad_redis_url_is_one_line(
    url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--scenario", "steady", "--redis", url, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_unreachable_redis_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://:secret@127.0.0.1:{_free_port()}/0"  # nothing listens there
    assert main(["simulate", "--scenario", "steady", "--redis", url, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "start it or fix the URL" in err
    assert "secret" not in err  # the password is masked
    assert err.count("\n") == 1


def test_without_the_redis_extra_it_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails
    url = "redis://127.0.0.1:6379/0"  # never reached: the import fails first
    assert main(["simulate", "--scenario", "steady", "--redis", url, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'search-resilience[redis]'" in err
    assert err.count("\n") == 1
