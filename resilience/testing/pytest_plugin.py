"""pytest fixtures for code that embeds or extends the engine. Loaded automatically (pytest11).

Fixtures:
    fake_clock: a :class:`~resilience.testing.FakeClock`.
    recording_sink: a :class:`~resilience.testing.RecordingSink`.
    faulty_source: a factory ``faulty_source(data=None) -> FaultySource`` on ``fake_clock``.
    make_engine: a factory ``make_engine(yaml_text, sources, **options) -> Engine`` that uses
        ``fake_clock`` and ``recording_sink`` unless told otherwise, and closes every engine it
        made when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from resilience import Engine, SourceFunction, load_policies

from . import FakeClock, FaultySource, RecordingSink

__all__ = ["fake_clock", "faulty_source", "make_engine", "recording_sink"]


@pytest.fixture
def fake_clock() -> FakeClock:
    """Clocks that move only when the test advances them."""
    return FakeClock()


@pytest.fixture
def recording_sink() -> RecordingSink:
    """An event sink that keeps every event."""
    return RecordingSink()


@pytest.fixture
def faulty_source(fake_clock: FakeClock) -> Callable[..., FaultySource]:
    """Make fault-injecting sources that advance ``fake_clock`` instead of sleeping."""

    def make(data: Mapping[str, Any] | None = None) -> FaultySource:
        return FaultySource(data, clock=fake_clock)

    return make


@pytest.fixture
def make_engine(
    fake_clock: FakeClock, recording_sink: RecordingSink
) -> Iterator[Callable[..., Engine]]:
    """Build engines from YAML text; every engine made is closed after the test."""
    made: list[Engine] = []

    def make(
        text: str, sources: Mapping[str, SourceFunction] | None = None, **options: Any
    ) -> Engine:
        options.setdefault("clock", fake_clock)
        options.setdefault("events", recording_sink)
        options.setdefault("seed", 0)
        engine = Engine(
            load_policies(text, plugins=options.pop("plugins", None)), sources, **options
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()
