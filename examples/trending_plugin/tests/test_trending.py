"""The plugin's own tests, with the engine's test kit (the ``make_engine``, ``fake_clock`` and
``faulty_source`` fixtures that installing ``search-resilience`` gives pytest)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from resilience_trending import plugin

from resilience import Affinities, Engine, Outcome, PluginHost, RequestContext
from resilience.testing import FaultySource, assert_plugin, assert_trace, trace_problems

POLICY = """
version: 1
default_policy: anonymous
policies:
  anonymous:
    chain:
      - {type: trending_region, timeout: 2ms}
      - unpersonalized
"""

TRENDING = {"fr": Affinities({"cheese": 3.0, "wine": 1.0})}


@pytest.fixture
def host() -> PluginHost:
    # In code, without the entry point: the tests do not depend on what is installed.
    return PluginHost(extra=[plugin])


@pytest.fixture
def store(faulty_source: Callable[..., FaultySource]) -> FaultySource:
    return faulty_source(TRENDING)


def request(region: str | None = "fr") -> RequestContext:
    return RequestContext(attributes={"region": region} if region else {})


def test_it_serves_the_region_s_trending_categories(
    make_engine: Callable[..., Engine], store: FaultySource, host: PluginHost
) -> None:
    engine = make_engine(POLICY, {"trending_store": store}, plugins=host)
    decision = engine.decide(request())
    assert decision.trace.served == "trending_region"
    assert decision.signals is not None
    assert dict(decision.signals.categories) == {"cheese": 0.75, "wine": 0.25}
    assert decision.signals.sources == ("trending_store",)


@pytest.mark.parametrize("region", [None, "xx"])
def test_no_region_or_an_unknown_one_is_a_miss(
    make_engine: Callable[..., Engine], store: FaultySource, host: PluginHost, region: str | None
) -> None:
    engine = make_engine(POLICY, {"trending_store": store}, plugins=host)
    decision = engine.decide(request(region))
    assert decision.trace.outcome_of("trending_region") is Outcome.MISS
    assert decision.trace.served == "unpersonalized"


def test_a_slow_store_is_cut_and_the_chain_goes_on(
    make_engine: Callable[..., Engine], store: FaultySource, host: PluginHost
) -> None:
    store.slow(0.010)  # 10 ms on the fake clock, past the tier's 2 ms
    engine = make_engine(POLICY, {"trending_store": store}, plugins=host)
    trace = engine.decide(request()).trace
    assert_trace(trace, served="unpersonalized", outcomes={"trending_region": "timeout"})
    assert trace_problems(trace) == []


def test_a_failing_store_is_an_error_never_a_crash(
    make_engine: Callable[..., Engine], store: FaultySource, host: PluginHost
) -> None:
    store.raises(ConnectionError("down"))
    engine = make_engine(POLICY, {"trending_store": store}, plugins=host)
    decision = engine.decide(request())
    assert decision.trace.outcome_of("trending_region") is Outcome.ERROR
    assert decision.trace.served == "unpersonalized"


def test_a_store_answering_garbage_is_garbage(
    make_engine: Callable[..., Engine], host: PluginHost
) -> None:
    engine = make_engine(POLICY, {"trending_store": lambda region: ["cheese"]}, plugins=host)
    decision = engine.decide(request())
    assert decision.trace.outcome_of("trending_region") is Outcome.GARBAGE


def test_it_runs_under_adecide_with_an_async_store(
    make_engine: Callable[..., Engine], host: PluginHost
) -> None:
    async def trending(region: str) -> Affinities | None:
        await asyncio.sleep(0)
        return TRENDING.get(region)

    engine = make_engine(POLICY, {"trending_store": trending}, plugins=host)
    decision = asyncio.run(engine.adecide(request()))
    assert decision.trace.served == "trending_region"


def test_the_plugin_keeps_the_contract() -> None:
    # described parameters, declared telemetry, and nothing to read is a miss, never an error
    assert_plugin(plugin)
