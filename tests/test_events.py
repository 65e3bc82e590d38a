"""Event names and the default sink: the library never configures logging."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog

from resilience import Engine, StructlogSink, load_policies

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
    # In a fresh process: the docs' plugin example registers a name of its own in this one.
    script = (
        "import json, resilience\n"
        "resilience.PluginHost(entry_points_=[])\n"
        "print(json.dumps({n: [s.level, s.description] for n, s in resilience.EVENTS.items()}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    events = json.loads(found.stdout)
    assert len(events) >= 20
    for name, (level, description) in events.items():
        assert name.startswith("resilience."), name
        assert level in {"debug", "info", "warning", "error"}, name
        assert len(description) > 20, name
