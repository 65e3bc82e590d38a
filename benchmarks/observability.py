"""What observability costs a decision: the happy path with it off, as shipped, and logging all.

Three engines run the reference policy (``policies.yaml`` without post steps, as the happy path
does), each built from its own policy text:

- ``off``: ``settings.metrics.enabled: false``, ``settings.events.decision_sample_rate: 0`` and
  a :class:`NullSink`: nothing is counted, sampled or emitted;
- ``default``: the settings as shipped (metrics on, 0.1% of decisions reported as events) with
  the default :class:`StructlogSink`, its events rendered as JSON and written (to ``os.devnull``
  through :func:`use_json_logging`), and the engine registered with a Prometheus registry;
- ``all_logged``: as ``default``, with every decision reported (``decision_sample_rate: 1``).

``default`` and ``all_logged`` are each timed against ``off``, interleaved; the median ratio is
the figure. A scrape of the ``default`` engine's registry is timed as a plain measurement.
``settings.monitoring`` (diversity of served lists) is left as shipped in all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest

from resilience import (
    Engine,
    EventSink,
    NullSink,
    PolicySet,
    StructlogSink,
    load_policies,
    metrics,
)
from resilience.events import use_json_logging

from .happy_path import (
    PROFILES,
    REQUEST,
    SEGMENTS,
    SESSIONS,
    _async_profiles,
    _async_sessions,
    async_loop,
    sync_loop,
    without_post,
)
from .interleaved import compare

__all__ = ["CONFIGURATIONS", "run"]

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATIONS = ("off", "default", "all_logged")
LOGGER = "resilience"


def with_settings(text: str, *, metrics_enabled: bool | None, sample_rate: float | None) -> str:
    """``text`` (the reference policy) with ``settings.metrics.enabled`` and
    ``settings.events.decision_sample_rate`` set; ``None`` leaves a setting as it is.

    Raises:
        ValueError: the file's ``settings:`` section is not laid out as expected.
    """
    if sample_rate is not None:
        text, found = re.subn(
            r"(?m)^(  events:\n(?:    .*\n)*?    decision_sample_rate:)[ \t]*[^\s#]+",
            rf"\g<1> {sample_rate!r}",
            text,
        )
        if found != 1:
            raise ValueError("no settings.events.decision_sample_rate in the policy text")
    if metrics_enabled is not None:
        if re.search(r"(?m)^  metrics:", text):
            raise ValueError("the policy text already has settings.metrics: extend this helper")
        value = "true" if metrics_enabled else "false"
        text, found = re.subn(
            r"(?m)^settings:\n", f"settings:\n  metrics:\n    enabled: {value}\n", text
        )
        if found != 1:
            raise ValueError("no top-level settings: in the policy text")
    return text


def policy_texts() -> dict[str, str]:
    """The policy text of each configuration."""
    shipped = without_post((ROOT / "policies.yaml").read_text())
    return {
        "off": with_settings(shipped, metrics_enabled=False, sample_rate=0),
        "default": shipped,
        "all_logged": with_settings(shipped, metrics_enabled=None, sample_rate=1.0),
    }


@contextlib.contextmanager
def json_logging(stream: IO[str]) -> Iterator[logging.Handler]:
    """:func:`use_json_logging` onto ``stream`` for the duration; the logger restored after."""
    logger = logging.getLogger(LOGGER)
    level, propagate = logger.level, logger.propagate
    handler = use_json_logging(stream=stream, level="INFO")
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _decision_lines(stream: io.StringIO) -> int:
    return sum('"resilience.decision"' in line for line in stream.getvalue().splitlines())


def _check(name: str, policies: PolicySet, engine: Engine, handler: logging.Handler) -> None:
    """Assert that ``engine`` behaves as configuration ``name`` means (before any timing)."""
    settings = policies.settings
    expected = {"off": (False, 0.0), "default": (True, 0.001), "all_logged": (True, 1.0)}[name]
    actual = (settings.metrics.enabled, settings.events.decision_sample_rate)
    assert actual == expected, (name, actual)
    assert isinstance(handler, logging.StreamHandler)
    probe = io.StringIO()
    kept = handler.setStream(probe)
    try:
        before = sum(engine.stats().decisions.values())
        decision = engine.decide(REQUEST)
        assert decision.trace.served == "session", decision.trace
        one = _decision_lines(probe)
        for _ in range(999):
            engine.decide(REQUEST)
        counted = sum(engine.stats().decisions.values()) - before
        lines = _decision_lines(probe)
    finally:
        handler.setStream(kept)
    if name == "off":
        assert not engine.stats().decisions, "off: decisions were counted"
        assert lines == 0, "off: decisions were logged"
    elif name == "default":
        assert counted == 1000, counted
        assert lines < 20, f"default: {lines} decision events in 1000 decisions"
    else:
        assert counted == 1000, counted
        assert one == 1, "all_logged: one decision did not write one line"
        assert lines == 1000, lines


def _build(
    name: str, text: str, sources: dict[str, Any], registries: dict[str, CollectorRegistry]
) -> tuple[PolicySet, Engine]:
    policies = load_policies(text)
    sink: EventSink = NullSink() if name == "off" else StructlogSink()
    engine = Engine(policies, sources, events=sink, seed=1)
    if name != "off":
        registries[name] = CollectorRegistry()
        metrics.register(engine, registries[name])
    return policies, engine


def _scrape_ms(registry: CollectorRegistry, times: int) -> dict[str, float | int]:
    generate_latest(registry)  # warm-up
    spent: list[float] = []
    size = 0
    for _ in range(times):
        start = time.perf_counter_ns()
        size = len(generate_latest(registry))
        spent.append((time.perf_counter_ns() - start) / 1e6)
    return {"median": round(statistics.median(spent), 3), "scrapes": times, "bytes": size}


def run(*, quick: bool, calls: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """Measure ``default`` and ``all_logged`` against ``off``, sync and async; time a scrape.

    Args:
        quick: fewer calls and repeats.
        calls: decisions per repeat, instead of the mode's (tests).
        repeats: interleaved repeats, instead of the mode's (tests).
    """
    if structlog.is_configured():
        raise RuntimeError("structlog is configured: StructlogSink would not render JSON itself")
    default_calls, default_repeats = (2_000, 9) if quick else (10_000, 15)
    calls = calls or default_calls
    repeats = repeats or default_repeats
    texts = policy_texts()
    sync_sources = {"session_store": SESSIONS, "profile_store": PROFILES, "segment_store": SEGMENTS}
    async_sources = {
        **sync_sources,
        "session_store": _async_sessions,
        "profile_store": _async_profiles,
    }
    results: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below, after the handler goes
    try:
        with json_logging(devnull) as handler, contextlib.ExitStack() as stack:
            registries: dict[str, CollectorRegistry] = {}
            engines: dict[str, dict[str, Engine]] = {"sync": {}, "async": {}}
            for mode, sources in (("sync", sync_sources), ("async", async_sources)):
                for name in CONFIGURATIONS:
                    # The scrape is timed on the sync engines' registries: keep only theirs.
                    kept: dict[str, CollectorRegistry] = {}
                    policies, engine = _build(name, texts[name], sources, kept)
                    stack.enter_context(engine)
                    if mode == "sync":
                        registries.update(kept)
                        _check(name, policies, engine, handler)
                    engines[mode][name] = engine
            for mode, loop_of in (
                ("sync", lambda e: sync_loop(e.decide)),
                ("async", lambda e: async_loop(e.adecide, loop)),
            ):
                if mode == "async":
                    for engine in engines["async"].values():
                        check = loop.run_until_complete(engine.adecide(REQUEST))
                        assert check.trace.served == "session", check.trace
                off = loop_of(engines[mode]["off"])
                results[mode] = {
                    name: compare(
                        loop_of(engines[mode][name]), off, calls=calls, repeats=repeats
                    ).as_dict()
                    for name in ("default", "all_logged")
                }
            for mode in ("sync", "async"):  # what each configuration counted while timed
                assert not engines[mode]["off"].stats().decisions, mode
                for name in ("default", "all_logged"):
                    assert engines[mode][name].stats().decisions, (mode, name)
            results["scrape_ms"] = _scrape_ms(registries["default"], 5 if quick else 15)
            results["scraped_decisions"] = sum(
                engines["sync"]["default"].stats().decisions.values()
            )
    finally:
        devnull.close()
        loop.close()
    results["decision_sample_rate"] = {"off": 0.0, "default": 0.001, "all_logged": 1.0}
    return results
