"""Metrics: the request path's counters, the state read at scrape time, and what Prometheus sees.

The scripted run is the issue's acceptance test: healthy traffic, then a failing session store,
then the kill switch, each scraped over HTTP and checked against the traces the engine returned.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from resilience import (
    EVENTS,
    Affinities,
    Decision,
    Engine,
    PolicyValidationError,
    RequestContext,
    load_policies,
    metrics,
)
from resilience.metrics import METRICS
from resilience.testing import FakeClock, RecordingSink, wait_for

from .conftest import ROOT, Stores
from .plugins.test_stream_lag import POLICY as LAG_POLICY

USER = RequestContext(user_id="user-7f3a9c", session_id="sess-91b2e4", request_id="r1")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample the registry exposes, parsed back from the text format."""
    text = generate_latest(registry).decode()
    return parse(text)


def parse(text: str) -> Samples:
    """Every sample of an exposition; a series exposed twice fails the test."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"exposed twice: {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of a series, which must be exposed."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"not exposed: {name}{labels}"
    return samples[key]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def engine(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    registry: CollectorRegistry,
) -> Engine:
    """The reference policy on the test stores, exported through ``registry``."""
    built = make_engine(reference_yaml, stores.sync())
    metrics.register(built, registry)
    return built


@pytest.fixture(autouse=True)
def _user_is_known(stores: Stores) -> None:
    """USER has the session and the profile of the shared fixture's returning user."""
    stores.session.data["sess-91b2e4"] = stores.session.data["s1"]
    stores.profile.data["user-7f3a9c"] = stores.profile.data["u1"]


def expected_counts(decisions: list[Decision]) -> tuple[Counter[Any], Counter[Any]]:
    tiers: Counter[Any] = Counter()
    steps: Counter[Any] = Counter()
    for decision in decisions:
        trace = decision.trace
        tiers[(trace.policy, trace.served or "none", trace.reason.value)] += 1
        for record in trace.steps:
            steps[(trace.policy, record.step, record.outcome.value)] += 1
    return tiers, steps


def assert_counters_match(samples: Samples, decisions: list[Decision]) -> None:
    tiers, steps = expected_counts(decisions)
    found_tiers = {
        (dict(labels)["policy"], dict(labels)["tier"], dict(labels)["reason"]): v
        for labels, v in series(samples, "resilience_decisions_total").items()
        if v  # the internal_error series is there at 0 from the start
    }
    assert found_tiers == dict(tiers)
    found_steps = {
        (dict(labels)["policy"], dict(labels)["step"], dict(labels)["outcome"]): v
        for labels, v in series(samples, "resilience_step_outcomes_total").items()
    }
    assert found_steps == dict(steps)
    assert value(samples, "resilience_decision_duration_seconds_count", policy="search") == len(
        decisions
    )
    used = sum(d.trace.used_us for d in decisions) / 1e6
    assert math.isclose(
        value(samples, "resilience_decision_duration_seconds_sum", policy="search"), used
    )


def test_a_scripted_run_shows_healthy_then_a_failing_store_then_the_kill_switch(
    engine: Engine,
    stores: Stores,
    fake_clock: FakeClock,
    registry: CollectorRegistry,
) -> None:
    server = metrics.serve(0, registry=registry)
    try:

        def scrape_http() -> Samples:
            url = f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                return parse(response.read().decode())

        decisions: list[Decision] = []
        # 1. Healthy: the session tier serves every request.
        for _ in range(150):
            decisions.append(engine.decide(USER))
            fake_clock.advance(0.01)
        healthy = scrape_http()
        assert_counters_match(healthy, decisions)
        assert value(
            healthy, "resilience_decisions_total", policy="search", tier="session",
            reason="primary", mode="on",
        ) == 150  # fmt: skip
        assert value(healthy, "resilience_breaker_state", breaker="session_store", state="closed")
        assert value(healthy, "resilience_flag_state", flag="search", state="on") == 1
        assert value(healthy, "resilience_config_info", policy="search",
                     version=engine.config_version()) == 1  # fmt: skip
        assert value(healthy, "resilience_policy_budget_seconds", policy="search") == 0.03

        # 2. The session store fails: the stale cache serves, and the breaker opens.
        stores.session.raises()
        for _ in range(150):
            decisions.append(engine.decide(USER))
            fake_clock.advance(0.01)
        failing = scrape_http()
        assert_counters_match(failing, decisions)
        assert value(failing, "resilience_step_outcomes_total", policy="search",
                     step="session", outcome="error") >= 20  # fmt: skip
        assert value(failing, "resilience_step_outcomes_total", policy="search",
                     step="session", outcome="breaker_open") > 0  # fmt: skip
        assert value(failing, "resilience_decisions_total", policy="search",
                     tier="stale_cache", reason="fallback", mode="on") == 150  # fmt: skip
        assert value(failing, "resilience_breaker_state", breaker="session_store", state="open")
        assert not value(
            failing, "resilience_breaker_state", breaker="session_store", state="closed"
        )
        assert value(failing, "resilience_breaker_failure_ratio", breaker="session_store") > 0.5
        # A fallback served every request: not a personalization failure (the "unserved" rule).
        assert value(failing, "resilience_personalization_error_ratio", policy="search",
                     step="error_rate") == 0  # fmt: skip

        # 3. The kill switch: only the terminal tier answers.
        engine.flags.set("search", "off", reason="incident 42", by="oncall")
        for _ in range(40):
            decisions.append(engine.decide(USER))
        killed = scrape_http()
        assert_counters_match(killed, decisions)
        assert value(killed, "resilience_decisions_total", policy="search",
                     tier="unpersonalized", reason="switched_off", mode="on") == 40  # fmt: skip
        assert value(killed, "resilience_flag_state", flag="search", state="off") == 1
        assert value(killed, "resilience_flag_state", flag="search", state="on") == 0
        assert value(killed, "resilience_flag_overridden", flag="search") == 1
        assert value(killed, "resilience_flag_source_up", source="api") == 1
        # Counters only grow from one scrape to the next.
        for key, before in failing.items():
            if key[0].endswith(("_total", "_count", "_bucket", "_sum")):
                assert killed.get(key, 0.0) >= before, key
    finally:
        server.close()


def test_every_exported_name_is_catalogued_and_documented(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    registry: CollectorRegistry,
) -> None:
    lag_policy = reference_yaml.replace(
        "    guards:\n",
        "    guards:\n      - {type: stream_lag, source: segment_store, max_lag: 30s, "
        "resume_below: 10s, poll_every: 1h}\n",
        1,
    )
    engine = make_engine(lag_policy, stores.sync())
    metrics.register(engine, registry)
    engine.decide(USER)
    families = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    exposed = set(families)  # the parser names a counter's family without _total
    catalogued = {name.removesuffix("_total") for name in METRICS}
    assert exposed <= catalogued, exposed - catalogued
    assert "resilience_stream_lag_seconds" in exposed
    page = (ROOT / "docs" / "observability.md").read_text()
    ours = [name for name in METRICS if name.startswith("resilience_")]
    missing = [name for name in ours if f"`{name}`" not in page]
    assert not missing, f"docs/observability.md lacks {missing}"
    missing = [
        name for name in EVENTS if name.startswith("resilience.") and f"`{name}`" not in page
    ]
    assert not missing, f"docs/observability.md lacks {missing}"


def test_stream_lag_is_read_at_scrape_time(
    make_engine: Callable[..., Engine], fake_clock: FakeClock, registry: CollectorRegistry
) -> None:
    watermark = {"value": fake_clock.wall() - 45.0}
    engine = make_engine(
        LAG_POLICY,
        {
            "watermarks": lambda key: watermark["value"],
            "profile_store": {"u": Affinities({"books": 1.0})}.get,
        },
    )
    metrics.register(engine, registry)
    watch = engine._generation.compiled["p"].guards[0].watch  # type: ignore[attr-defined]
    assert wait_for(lambda: watch.reads >= 1, 30)
    samples = scrape(registry)
    labels = {"policy": "p", "step": "stream_lag"}
    assert value(samples, "resilience_stream_lag_seconds", **labels) == 45.0
    assert value(samples, "resilience_stream_lag_tripped", **labels) == 1
    assert value(samples, "resilience_stream_lag_threshold_seconds", **labels) == 30
    watermark["value"] = fake_clock.wall() - 2.0
    watch.poll()
    samples = scrape(registry)
    assert value(samples, "resilience_stream_lag_seconds", **labels) == 2.0
    assert value(samples, "resilience_stream_lag_tripped", **labels) == 0


def test_counts_from_many_threads_are_exact_and_outlive_their_threads(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    threads, each = 8, 2_000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(each):
            engine.decide(USER)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    totals = engine.stats()
    assert sum(totals.decisions.values()) == threads * each
    assert sum(totals.durations["search"][:-1]) == threads * each
    assert len(engine._stats._shards) == 0  # the ended threads' shards were folded in
    assert sum(engine.stats().decisions.values()) == threads * each


def test_metrics_off_counts_nothing_and_readings_still_work(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    registry: CollectorRegistry,
) -> None:
    text = reference_yaml.replace("settings:\n", "settings:\n  metrics: {enabled: false}\n", 1)
    engine = make_engine(text, stores.sync())
    metrics.register(engine, registry)
    for _ in range(10):
        engine.decide(USER)
    assert engine.stats().decisions == {}
    samples = scrape(registry)
    assert not series(samples, "resilience_decisions_total")
    assert value(samples, "resilience_flag_state", flag="search", state="on") == 1
    # A reload that turns them on starts counting; one that turns them off stops again.
    assert engine.reload(reference_yaml).ok
    engine.decide(USER)
    assert sum(engine.stats().decisions.values()) == 1


def test_reloads_are_counted_by_result(
    engine: Engine,
    reference_yaml: str,
    registry: CollectorRegistry,
) -> None:
    assert engine.reload(reference_yaml.replace("budget: 30ms", "budget: 25ms")).ok
    assert not engine.reload("version: 1\npolicies: {}\n").ok
    assert not engine.reload("not: [valid").ok
    samples = scrape(registry)
    assert value(samples, "resilience_reloads_total", result="ok") == 1
    assert value(samples, "resilience_reloads_total", result="refused") == 2
    assert value(samples, "resilience_policy_budget_seconds", policy="search") == 0.025


def test_duration_buckets_come_from_settings_and_bad_ones_are_refused(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    fake_clock: FakeClock,
    registry: CollectorRegistry,
) -> None:
    text = reference_yaml.replace(
        "settings:\n", "settings:\n  metrics: {duration_buckets: [5ms, 10ms, 30ms]}\n", 1
    )
    engine = make_engine(text, stores.sync())
    metrics.register(engine, registry)
    stores.session.slow(0.007)  # the fake clock moves 7 ms inside the session tier
    engine.decide(USER)
    samples = scrape(registry)
    bucket = "resilience_decision_duration_seconds_bucket"
    assert value(samples, bucket, policy="search", le="0.005") == 0
    assert value(samples, bucket, policy="search", le="0.01") == 1
    assert value(samples, bucket, policy="search", le="+Inf") == 1
    bad = reference_yaml.replace(
        "settings:\n", "settings:\n  metrics: {duration_buckets: [10ms, 5ms]}\n", 1
    )
    with pytest.raises(PolicyValidationError, match=r"settings\.metrics\.duration_buckets"):
        load_policies(bad)


def test_several_engines_share_a_registry_apart_by_label_and_a_closed_one_drops_out(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    registry: CollectorRegistry,
) -> None:
    first = make_engine(reference_yaml, stores.sync())
    second = make_engine(reference_yaml, stores.sync())
    metrics.register(first, registry, labels={"engine": "a"})
    metrics.register(second, registry, labels={"engine": "b"})
    first.decide(USER)
    for _ in range(3):
        second.decide(USER)
    samples = scrape(registry)
    name = "resilience_decision_duration_seconds_count"
    assert value(samples, name, policy="search", engine="a") == 1
    assert value(samples, name, policy="search", engine="b") == 3
    second.close()
    samples = scrape(registry)
    assert value(samples, name, policy="search", engine="a") == 1
    assert (name, frozenset({"policy": "search", "engine": "b"}.items())) not in samples
    assert metrics.unregister(first, registry)
    assert not series(scrape(registry), name)


def test_a_step_whose_readings_fail_costs_only_its_own_readings(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resilience_plugins.guards.error_rate import ErrorRateGuard

    def broken(self: object) -> list[Any]:
        raise RuntimeError("bug in a plugin")

    monkeypatch.setattr(ErrorRateGuard, "readings", broken)
    engine = make_engine(reference_yaml, stores.sync())
    metrics.register(engine, registry)
    engine.decide(USER)
    samples = scrape(registry)
    assert series(samples, "resilience_decisions_total")
    assert value(samples, "resilience_breaker_state", breaker="session_store", state="closed")
    assert not series(samples, "resilience_personalization_error_ratio")
    (error,) = recording_sink.of("resilience.engine.internal_error")
    assert "readings of error_rate failed: RuntimeError" in error["error"]


def test_the_wsgi_app_serves_the_registry(
    engine: Engine,
    registry: CollectorRegistry,
) -> None:
    engine.decide(USER)
    app = metrics.wsgi_app(registry)
    status: list[str] = []

    def start_response(code: str, headers: list[tuple[str, str]]) -> None:
        status.append(code)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    body = b"".join(app(environ, start_response))
    assert status == ["200 OK"]
    assert b'resilience_decisions_total{mode="on",policy="search"' in body


class _Records:
    """An exposure sink that keeps the records."""

    def __init__(self) -> None:
        self.records: list[Mapping[str, Any]] = []

    def write(self, record: Mapping[str, Any]) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_no_user_or_session_id_reaches_an_event_or_a_metric(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nor a span, an exposure record, a trace or a log line: everything that leaves the
    process, after healthy traffic, a store whose errors name both ids, a kill switch, a
    refused reload, a click and a bug of the engine's own."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from resilience.otel import instrument

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exposures = _Records()
    text = reference_yaml.replace("decision_sample_rate: 0.001", "decision_sample_rate: 1").replace(
        "settings:\n", "settings:\n  exposures: {path: unused.jsonl, user_salt: leak-test}\n", 1
    )
    user, session = USER.user_id, USER.session_id
    assert user is not None and session is not None
    traces: list[str] = []
    with caplog.at_level(logging.DEBUG):
        engine = make_engine(text, stores.sync(), exposure_sink=exposures)
        metrics.register(engine, registry)
        with instrument(engine, provider):
            for _ in range(5):
                traces.append(str(engine.decide(USER).trace))
            stores.session.raises(ConnectionError(f"no session {session} for {user}"))
            stores.profile.raises(KeyError(user))
            for _ in range(40):
                traces.append(str(engine.decide(USER).trace))
            engine.flags.set("search", "off", reason="test")
            decision = engine.decide(USER)
            engine.record_click(decision.trace, user_id=user, item_id="i1")
            engine.reload("not: [valid")
            engine.flags.clear("search", reason="test")
            engine._plans["search"].tiers = None  # type: ignore[assignment]  # simulate a bug
            traces.append(str(engine.decide(USER).trace))
        exposed = generate_latest(registry).decode()
        engine.close()  # writes the queued exposure records
    provider.shutdown()
    assert recording_sink.of("resilience.decision")
    assert recording_sink.of("resilience.engine.internal_error")
    assert exposures.records and exporter.get_finished_spans()
    events = json.dumps(recording_sink.events, default=str)
    records = json.dumps(exposures.records, default=str)
    spans = [span.to_json() for span in exporter.get_finished_spans()]
    assert all("r1" in span for span in spans)  # what is meant to be there is there
    for secret in (user, session):
        assert secret not in events
        assert secret not in exposed
        assert secret not in records
        assert not any(secret in span for span in spans)
        assert not any(secret in trace for trace in traces)
        assert secret not in caplog.text


def test_a_forked_child_counts_from_zero(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    for _ in range(5):
        engine.decide(USER)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            fresh = engine.stats().decisions == {}
            engine.decide(USER)
            code = 0 if fresh and sum(engine.stats().decisions.values()) == 1 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sum(engine.stats().decisions.values()) == 5


@pytest.fixture(autouse=True)
def _no_leaked_servers() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert wait_for(lambda: threading.active_count() <= before, 10)


def test_the_documented_alert_rules_parse_and_name_only_metrics_that_exist() -> None:
    import re

    import promql_parser
    import yaml

    page = (ROOT / "docs" / "observability.md").read_text()
    section = page.split("## Example alert rules", 1)[1]
    block = section.split("```yaml prometheus\n", 1)[1].split("```", 1)[0]
    rules = yaml.safe_load(block)["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} >= {
        "PersonalizationErrorRateHigh",
        "StreamLagHigh",
        "BreakerOpen",
        "PolicyReloadFailed",
    }
    known = set(METRICS)
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        names = set(re.findall(r"resilience_[a-z_]+", rule["expr"]))
        assert names, rule["alert"]
        for name in names:
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in known, (rule["alert"], name)


def test_the_asgi_app_serves_the_registry(engine: Engine, registry: CollectorRegistry) -> None:
    import asyncio

    engine.decide(USER)
    app = metrics.asgi_app(registry)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"",
             "headers": []}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert b"resilience_decision_duration_seconds_bucket" in body


def test_a_made_up_policy_name_never_becomes_a_label(
    engine: Engine, registry: CollectorRegistry
) -> None:
    for n in range(50):
        decision = engine.decide(RequestContext(user_id="u", policy=f"attacker-{n}"))
        assert decision.trace.policy == f"attacker-{n}"  # the trace keeps what was asked
    samples = scrape(registry)
    policies = {dict(labels)["policy"] for labels in series(samples, "resilience_decisions_total")}
    assert policies == {"search", "unknown"}
    assert value(samples, "resilience_decisions_total", policy="unknown", tier="none",
                 reason="unknown_policy", mode="on") == 50  # fmt: skip


def test_the_internal_error_series_is_there_from_the_start(
    engine: Engine, registry: CollectorRegistry
) -> None:
    samples = scrape(registry)
    labels = {"policy": "search", "tier": "none", "reason": "internal_error", "mode": "on"}
    assert value(samples, "resilience_decisions_total", **labels) == 0
    engine.decide(object())  # type: ignore[arg-type]  # a broken request: an internal error
    assert value(scrape(registry), "resilience_decisions_total", **labels) == 1


def test_registering_refuses_colliding_engines_and_replaces_a_repeat(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    registry = CollectorRegistry()
    first = make_engine(reference_yaml, stores.sync())
    second = make_engine(reference_yaml, stores.sync())
    metrics.register(first, registry, labels={"engine": "a"})
    metrics.register(first, registry, labels={"engine": "a"})  # again: replaces, no doubles
    first.decide(USER)
    assert value(scrape(registry), "resilience_decision_duration_seconds_count",
                 policy="search", engine="a") == 1  # fmt: skip
    with pytest.raises(ValueError, match="same label names"):
        metrics.register(second, registry)
    with pytest.raises(ValueError, match="another engine is collected with the labels"):
        metrics.register(second, registry, labels={"engine": "a"})
    metrics.register(second, registry, labels={"engine": "b"})
    scrape(registry)  # parse() fails on any series exposed twice


def test_one_engine_failing_to_report_costs_only_its_own_metrics(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    healthy = make_engine(reference_yaml, stores.sync())
    broken = make_engine(reference_yaml, stores.sync())
    metrics.register(healthy, registry, labels={"engine": "healthy"})
    metrics.register(broken, registry, labels={"engine": "broken"})

    def fails() -> list[Any]:
        raise RuntimeError("flag board bug")

    monkeypatch.setattr(broken, "readings", fails)
    healthy.decide(USER)
    samples = scrape(registry)
    assert value(samples, "resilience_decision_duration_seconds_count",
                 policy="search", engine="healthy") == 1  # fmt: skip
    assert not [k for k in samples if ("engine", "broken") in k[1]]
    assert any("metrics collection failed" in e["error"]
               for e in recording_sink.of("resilience.engine.internal_error"))  # fmt: skip


def test_bounds_closer_than_a_microsecond_are_refused(reference_yaml: str) -> None:
    bad = reference_yaml.replace(
        "settings:\n", "settings:\n  metrics: {duration_buckets: [1.2us, 1.4us]}\n", 1
    )
    with pytest.raises(PolicyValidationError, match="at least 1us apart"):
        load_policies(bad)


def test_a_reload_that_turns_metrics_off_stops_counting(
    engine: Engine, reference_yaml: str
) -> None:
    engine.decide(USER)
    off = reference_yaml.replace("settings:\n", "settings:\n  metrics: {enabled: false}\n", 1)
    assert engine.reload(off).ok
    for _ in range(5):
        engine.decide(USER)
    assert sum(engine.stats().decisions.values()) == 1


def test_a_failing_listener_is_reported_once(engine: Engine, recording_sink: RecordingSink) -> None:
    def broken(trace: object) -> None:
        raise RuntimeError("listener bug")

    engine.add_listener(broken)
    for _ in range(20):
        assert engine.decide(USER).trace.served == "session"
    failures = [e for e in recording_sink.of("resilience.engine.internal_error")
                if "listener failed" in e["error"]]  # fmt: skip
    assert len(failures) == 1


def test_a_fork_while_a_scrape_holds_the_counters_lock_does_not_hang_the_child(
    engine: Engine,
) -> None:
    engine.decide(USER)
    held, release = threading.Event(), threading.Event()

    def scrape_in_progress() -> None:
        with engine._stats._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=scrape_in_progress)
    holder.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                engine.decide(USER)
                code = 0 if sum(engine.stats().decisions.values()) == 1 else 1
            finally:
                os._exit(code)
        status = wait_for_exit(pid, 30)
    finally:
        release.set()
        holder.join()
    assert status == 0


def wait_for_exit(pid: int, seconds: float) -> int | None:
    """The child's exit code, or None (after killing it) if it did not end in time."""
    ended: list[int] = []

    def reaped() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            ended.append(os.waitstatus_to_exitcode(status))
        return bool(ended)

    if wait_for(reaped, seconds):
        return ended[0]
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None
