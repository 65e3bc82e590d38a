"""OpenTelemetry spans per decision (resilience.otel), checked with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from resilience import Affinities, Click, Engine, Reason, RequestContext, SessionState
from resilience.otel import Instrumentation, instrument
from resilience.testing import FakeClock, FaultySource

from .conftest import Stores

POLICY = """
version: 1
default_policy: p
policies:
  p:
    holdout: {salt: otel-test, percent: 50}
    chain:
      - type: profile_only
        source: profile_store
      - type: segment
        source: segment_store
      - unpersonalized
"""
TREATED = "u2"  # in the treatment group under salt otel-test (u1 is in the holdout)
RETURNING = RequestContext(user_id="u1", session_id="s1")  # the reference policy's session serves


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def engine(make_engine: Callable[..., Engine], fake_clock: FakeClock) -> Engine:
    """Profiles fail after 3 ms; the segment store serves after 2 ms (on the fake clock)."""

    def failing_profiles(user_id: str) -> Affinities:
        fake_clock.advance(0.003)
        raise ConnectionError(f"profile store down for {user_id}")

    segments = FaultySource({"young": Affinities({"toys": 1.0})}, clock=fake_clock).slow(0.002)
    return make_engine(POLICY, {"profile_store": failing_profiles, "segment_store": segments})


def decisions(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "resilience.decision"]


def test_one_span_per_decision_with_the_trace_as_attributes(
    engine: Engine, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with instrument(engine, provider):
        served = engine.decide(
            RequestContext(user_id=TREATED, segment="young", request_id="r-1")
        ).trace
        anonymous = engine.decide(RequestContext()).trace
    spans = decisions(exporter)
    assert len(spans) == len(exporter.get_finished_spans()) == 2
    first, second = spans
    assert served.group == "treatment"
    assert dict(first.attributes or {}) == {
        "resilience.policy": "p",
        "resilience.config_version": engine.config_version("p"),
        "resilience.served": "segment",
        "resilience.reason": "fallback",
        "resilience.budget_us": 30_000,
        "resilience.used_us": 5_000,
        "resilience.group": "treatment",
        "resilience.shadow": False,
        "resilience.request_id": "r-1",
    }
    assert type(first.attributes["resilience.reason"]) is str  # type: ignore[index]  # not the enum
    # No group (anonymous traffic is in neither) and no request id: neither attribute.
    assert anonymous.group == ""
    assert dict(second.attributes or {}) == {
        "resilience.policy": "p",
        "resilience.config_version": engine.config_version("p"),
        "resilience.served": "unpersonalized",
        "resilience.reason": anonymous.reason.value,
        "resilience.budget_us": 30_000,
        "resilience.used_us": anonymous.used_us,
        "resilience.shadow": False,
    }
    assert first.kind is SpanKind.INTERNAL
    assert first.instrumentation_scope is not None
    assert first.instrumentation_scope.name == "resilience"
    assert first.status.status_code is StatusCode.UNSET
    # The span covers the decision: it ends when the listener is told, used_us earlier it starts.
    assert first.start_time is not None
    assert first.end_time is not None
    assert first.end_time - first.start_time == served.used_us * 1000


def test_steps_are_span_events_in_order_timed_from_the_span_start(
    engine: Engine, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with instrument(engine, provider):
        engine.decide(RequestContext(user_id=TREATED, segment="young"))
    (span,) = decisions(exporter)
    assert [event.name for event in span.events] == ["resilience.step", "resilience.step"]
    assert [dict(event.attributes or {}) for event in span.events] == [
        {
            "resilience.step": "profile_only",
            "resilience.outcome": "error",
            "resilience.elapsed_us": 3_000,
            "resilience.detail": "ConnectionError",
        },
        {"resilience.step": "segment", "resilience.outcome": "ok", "resilience.elapsed_us": 2_000},
    ]
    assert span.start_time is not None
    assert [event.timestamp - span.start_time for event in span.events] == [0, 3_000_000]


def test_the_span_is_a_child_of_the_callers_span_in_sync_code(
    engine: Engine, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("the-service")
    with instrument(engine, provider):
        with tracer.start_as_current_span("search") as parent:
            engine.decide(RequestContext(user_id=TREATED, segment="young"))
        engine.decide(RequestContext(user_id=TREATED, segment="young"))  # no enclosing span
    inside, outside = decisions(exporter)
    assert inside.parent is not None
    assert inside.parent.span_id == parent.get_span_context().span_id
    assert inside.context is not None
    assert inside.context.trace_id == parent.get_span_context().trace_id
    assert outside.parent is None


def test_the_span_is_a_child_of_each_tasks_own_span_under_asyncio(
    make_engine: Callable[..., Engine],
    stores: Stores,
    reference_yaml: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    async def yielding_profiles(user_id: str) -> Affinities | None:
        await asyncio.sleep(0)  # let the other task run in between: contexts must not mix
        profile: Affinities | None = await stores.profile.async_(user_id)
        return profile

    sources = stores.asyncio()
    sources["profile_store"] = yielding_profiles
    engine = make_engine(reference_yaml, sources)
    tracer = provider.get_tracer("the-service")
    parents: dict[str, int] = {}

    async def search(request_id: str) -> None:
        with tracer.start_as_current_span(f"search {request_id}") as parent:
            parents[request_id] = parent.get_span_context().span_id
            await engine.adecide(RequestContext(user_id="u1", request_id=request_id))

    async def main() -> None:
        await asyncio.gather(search("a"), search("b"), search("c"))

    with instrument(engine, provider):
        asyncio.run(main())
    spans = decisions(exporter)
    assert len(spans) == 3
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["resilience.served"] == "profile_only"  # the awaited source
        assert span.parent is not None
        assert span.parent.span_id == parents[str(span.attributes["resilience.request_id"])]


def test_close_stops_the_spans_and_may_be_called_twice(
    engine: Engine, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    instrumentation = instrument(engine, provider)
    assert isinstance(instrumentation, Instrumentation)
    engine.decide(RequestContext())
    assert len(decisions(exporter)) == 1
    instrumentation.close()
    instrumentation.close()
    assert instrumentation.closed
    engine.decide(RequestContext())
    assert len(decisions(exporter)) == 1
    with instrument(engine, provider, tracer_name="again") as again:
        engine.decide(RequestContext())
    engine.decide(RequestContext())  # the with block closed it
    assert again.closed
    spans = decisions(exporter)
    assert len(spans) == 2
    assert spans[1].instrumentation_scope is not None
    assert spans[1].instrumentation_scope.name == "again"


def test_an_internal_error_sets_the_error_status(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    with instrument(engine, provider):
        assert engine.decide(RETURNING).trace.reason is Reason.PRIMARY
        engine._plans["search"].tiers = None  # type: ignore[assignment]  # simulate a bug
        assert engine.decide(RETURNING).trace.reason is Reason.INTERNAL_ERROR
    healthy, broken = decisions(exporter)
    assert healthy.status.status_code is StatusCode.UNSET
    assert broken.status.status_code is StatusCode.ERROR
    assert broken.status.description
    assert "internal_error" in broken.status.description
    assert broken.attributes is not None
    assert broken.attributes["resilience.reason"] == "internal_error"


def test_no_user_or_session_id_reaches_a_span(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    fake_clock: FakeClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    user, session = "user-4f1c9e", "session-77ab02"
    now = fake_clock.wall()
    sessions = FaultySource(
        {session: SessionState((Click("i1", "shoes", now - 5),), now - 5)}, clock=fake_clock
    )
    profiles = FaultySource({user: Affinities({"books": 1.0})}, clock=fake_clock)
    segments = FaultySource(clock=fake_clock)
    engine = make_engine(
        reference_yaml,
        {"session_store": sessions, "profile_store": profiles, "segment_store": segments},
    )
    request = RequestContext(user_id=user, session_id=session, request_id="r-9", segment="young")
    with instrument(engine, provider):
        engine.decide(request)  # healthy: the session serves
        sessions.raises(ConnectionError(f"no session {session} for {user}"))
        engine.decide(request)  # a failing store, whose error names both ids
        engine._plans["search"].tiers = None  # type: ignore[assignment]  # simulate a bug
        engine.decide(request)  # an internal error
    spans = decisions(exporter)
    assert [s.attributes["resilience.served"] for s in spans if s.attributes] == [
        "session",
        "stale_cache",
        "",
    ]
    for span in spans:
        exported = span.to_json()  # name, attributes, events and their attributes, status
        assert "r-9" in exported  # what is meant to be there is there...
        assert user not in exported  # ...and neither id is
        assert session not in exported
        values = [span.name, *(span.attributes or {}).values()]
        for event in span.events:
            values += [event.name, *(event.attributes or {}).values()]
        assert not any(user in str(v) or session in str(v) for v in values)


def test_without_a_provider_the_global_one_is_used(
    engine: Engine,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stand in for the application's global provider without setting one (that is once only).
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    with instrument(engine):
        engine.decide(RequestContext())
    assert len(decisions(exporter)) == 1


def test_importing_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "resilience.otel")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'search-resilience\[otel\]'"):
        importlib.import_module("resilience.otel")
