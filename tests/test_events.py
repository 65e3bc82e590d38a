"""Event names and the default sink: the library never configures logging."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from resilience import EVENTS, Engine, StructlogSink, load_policies

from .conftest import Stores


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("unconfigured_structlog")
def test_without_app_configuration_events_go_to_stdlib_logging_as_json(
    caplog: pytest.LogCaptureFixture,
    reference_yaml: str,
    stores: Stores,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root_handlers = list(logging.getLogger().handlers)
    with caplog.at_level(logging.INFO, logger="resilience"):
        Engine(load_policies(reference_yaml), stores.sync()).close()
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "resilience"]
    assert [r["event"] for r in records] == ["resilience.engine.built", "resilience.engine.closed"]
    assert records[0]["level"] == "info"
    assert capsys.readouterr().out == ""  # nothing printed by the library itself
    assert logging.getLogger().handlers == root_handlers
    assert not structlog.is_configured()


@pytest.mark.usefixtures("unconfigured_structlog")
def test_an_app_that_configured_structlog_gets_its_own_pipeline() -> None:
    seen: list[dict[str, object]] = []

    def keep(logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
        seen.append(event)
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    StructlogSink().emit("resilience.engine.closed", policies=["p"])
    assert seen == [{"event": "resilience.engine.closed", "policies": ["p"]}]


def test_every_event_name_is_namespaced_and_documented() -> None:
    for name, spec in EVENTS.items():
        assert name.startswith("resilience."), name
        assert spec.level in {"debug", "info", "warning", "error"}, name
        assert len(spec.description) > 20, name
