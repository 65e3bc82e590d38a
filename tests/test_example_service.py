"""The example search service (examples/search_service): its routes, in process against a
private redis-server, and its load script end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from examples.search_service.app import ConfigError, HashedIds, Secret, Settings, create_app
from examples.search_service.catalog import CATEGORIES, session_value
from resilience.testing import RedisServer

# On the real clock: run alone, after the parallel run (see the Makefile).
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "examples" / "search_service" / "policies.yaml"
PASSWORD = "p@ss:w/rd#1 with spaces"  # quoted into the flags' URL by the app
TOKEN = "admin-token-for-tests-0123456789"
ENGINE_VARIABLES = ("SEARCH_REDIS_URL", "SEARCH_REDIS_PASSWORD")

Client = httpx.AsyncClient
Scenario = Callable[[Client], Awaitable[None]]


@pytest.fixture
def settings(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The service's settings for a private Redis with a password and sessions s-0..s-9, and
    the example policy with every decision sampled for CTR (so that a click counts)."""
    for name in ENGINE_VARIABLES:  # the app sets them; the test restores them
        monkeypatch.setenv(name, "unset")
    admin = redis.Redis(port=redis_server.port, socket_timeout=2)
    admin.config_set("requirepass", PASSWORD)
    admin.close()
    seeded = redis.Redis(port=redis_server.port, password=PASSWORD, socket_timeout=2)
    for n in range(10):
        seeded.set(f"session:s-{n}", session_value(n, time.time()))
    seeded.close()
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        POLICIES.read_text().replace(
            "settings:\n", "settings:\n  monitoring:\n    sample_rate: 1.0\n", 1
        )
    )
    return Settings(redis_server.url, Secret(PASSWORD), Secret(TOKEN), policies)


@pytest.fixture
def run(settings: Settings) -> Callable[..., None]:
    """Run a scenario against the app, in process, between its start-up and its shutdown
    (with other ``settings`` if given)."""

    def go(scenario: Scenario, settings: Settings = settings) -> None:
        async def main() -> None:
            app = create_app(settings)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                    await scenario(c)

        asyncio.run(main())

    return go


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def search(client: Client, **params: str) -> dict[str, Any]:
    response = await client.get("/search", params={"q": "red", "user": "u-1", **params})
    assert response.status_code == 200, response.text
    assert response.headers["server-timing"].startswith("decide;dur=")
    body: dict[str, Any] = response.json()
    return body


def test_search_is_personalized_from_the_redis_session(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: Client) -> None:
        body = await search(client, session="s-1", n="10")
        assert body["personalized"] is True
        assert (body["served"], body["reason"]) == ("session", "primary")
        assert len(body["items"]) == 10
        # session s-1 clicked three items of one category: it leads the re-ranked list
        top = Counter(item["category"] for item in body["items"]).most_common(1)[0][0]
        assert top == CATEGORIES[1]

        unknown = await search(client, session="s-unknown")
        assert unknown["personalized"] is True
        assert (unknown["served"], unknown["reason"]) == ("profile_only", "fallback")

        anonymous = await search(client, user="")
        assert anonymous["personalized"] is False

    run(scenario)


def test_click_counts_for_a_served_list(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: Client) -> None:
        body = await search(client, session="s-2")
        clicked = {"request_id": body["request_id"], "item_id": body["items"][0]["item_id"]}
        response = await client.post("/click", json=clicked)
        assert response.status_code == 202
        assert response.json() == {"counted": True}
        clicks = metric(await client.get("/metrics"), "resilience_window_clicks")
        assert clicks == {"session": 1.0}

        stray = await client.post("/click", json={"request_id": "nope", "item_id": "i1"})
        assert (stray.status_code, stray.json()) == (202, {"counted": False})
        assert (await client.post("/click", json={"item_id": "i1"})).status_code == 400
        assert (await client.post("/click", content=b"not json")).status_code == 400

    run(scenario)


def metric(response: httpx.Response, name: str) -> dict[str, float]:
    """The samples of metric ``name`` by tier."""
    assert response.status_code == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name:
                values[sample.labels["tier"]] = sample.value
    return values


def test_metrics_exposes_the_engines_series(run: Callable[[Scenario], None]) -> None:
    async def scenario(client: Client) -> None:
        await search(client, session="s-3")
        response = await client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        assert metric(response, "resilience_decisions_total")["session"] == 1.0
        for series in ("resilience_breaker_state", "resilience_flag_source_up"):
            assert series in response.text

    run(scenario)


def test_admin_flags_refuses_a_missing_or_wrong_token(
    run: Callable[[Scenario], None], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(client: Client) -> None:
        missing = await client.get("/admin/flags")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert (
            await client.get("/admin/flags", headers={"Authorization": TOKEN})
        ).status_code == 401
        for wrong in ("wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
            response = await client.get("/admin/flags", headers=bearer(wrong))
            assert response.status_code == 403, wrong
        flip = {"key": "search", "value": "off", "reason": "not allowed"}
        assert (await client.post("/admin/flags", json=flip)).status_code == 401
        assert (
            await client.post("/admin/flags", json=flip, headers=bearer("wrong"))
        ).status_code == 403
        assert (await search(client, session="s-1"))["personalized"] is True  # nothing changed

    with caplog.at_level(logging.DEBUG):
        run(scenario)
    assert "refused a wrong token" in caplog.text
    assert TOKEN[:-1] not in caplog.text  # nor the longer wrong one
    assert TOKEN.upper() not in caplog.text
    assert PASSWORD not in caplog.text


def test_admin_flags_flips_the_kill_switch(
    run: Callable[[Scenario], None], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(client: Client) -> None:
        listed = await client.get("/admin/flags", headers=bearer(TOKEN))
        assert listed.status_code == 200
        assert PASSWORD not in listed.text  # the sources' health names Redis by host:port
        flags = {f["key"]: f for f in listed.json()["flags"]}
        assert flags["search"]["value"] == "on"
        assert {s["source"] for s in listed.json()["sources"]} >= {"redis", "api"}

        off = {"key": "search", "value": "off", "reason": "INC-1: test", "by": "alice"}
        response = await client.post("/admin/flags", json=off, headers=bearer(TOKEN))
        assert response.status_code == 200, response.text
        assert response.json()["flag"] | {"at": 0} == {
            "key": "search",
            "value": "off",
            "source": "api",
            "default": "on",
            "stale": False,
            "reason": "INC-1: test",
            "by": "alice",
            "at": 0,
        }
        body = await search(client, session="s-1")
        assert (body["personalized"], body["reason"]) == (False, "switched_off")

        cleared = {"key": "search", "value": None, "reason": "INC-1 resolved"}
        response = await client.post("/admin/flags", json=cleared, headers=bearer(TOKEN))
        assert response.json()["flag"]["value"] == "on"
        assert (await search(client, session="s-1"))["personalized"] is True

        for bad in (
            {"key": "search", "value": "off"},  # no reason
            {"key": "search", "value": "off", "reason": " "},
            {"key": "nope", "value": "off", "reason": "r"},
            {"key": "search", "value": "sideways", "reason": "r"},
            {"key": "search", "value": 3, "reason": "r"},
        ):
            response = await client.post("/admin/flags", json=bad, headers=bearer(TOKEN))
            assert response.status_code == 400, bad

    with caplog.at_level(logging.INFO):
        run(scenario)
    assert "flag search is off (by alice: INC-1: test)" in caplog.text
    assert TOKEN not in caplog.text
    assert PASSWORD not in caplog.text


def test_settings_read_secrets_from_the_environment_or_files(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    base = {"SEARCH_REDIS_URL": "redis://127.0.0.1:6399/0"}
    settings = Settings.from_env(
        {**base, "SEARCH_REDIS_PASSWORD": PASSWORD, "SEARCH_ADMIN_TOKEN_FILE": str(token_file)}
    )
    assert settings.admin_token is not None and settings.admin_token.matches(TOKEN)
    assert settings.redis_password.reveal() == PASSWORD
    assert TOKEN not in repr(settings)
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.redis_password)
    # the policy names variables for the session store and the flags: only these two
    assert settings.engine_environment() == {
        "SEARCH_REDIS_URL": "redis://127.0.0.1:6399/0",
        "SEARCH_REDIS_PASSWORD": PASSWORD,
    }

    good = {**base, "SEARCH_REDIS_PASSWORD": PASSWORD, "SEARCH_ADMIN_TOKEN": TOKEN}
    for broken, message in (
        ({"SEARCH_REDIS_URL": "http://x"}, "SEARCH_REDIS_URL"),
        ({"SEARCH_REDIS_URL": f"redis://:{PASSWORD}@h:1/0"}, "no password"),
        ({"SEARCH_ADMIN_TOKEN": "short"}, "at least 16"),
        ({"SEARCH_ADMIN_TOKEN_FILE": str(token_file)}, "not both"),
        ({"SEARCH_REDIS_PASSWORD": ""}, "SEARCH_REDIS_PASSWORD is empty"),
        ({"SEARCH_ADMIN_TOKEN": ""}, "SEARCH_ADMIN_TOKEN is empty"),
    ):
        with pytest.raises(ConfigError, match=message) as caught:
            Settings.from_env({**good, **broken})
        assert PASSWORD not in str(caught.value)
        assert TOKEN not in str(caught.value)
    missing = {**base, "SEARCH_ADMIN_TOKEN": TOKEN, "SEARCH_REDIS_PASSWORD_FILE": "/nonexistent"}
    with pytest.raises(ConfigError, match="cannot read it"):
        Settings.from_env(missing)
    with pytest.raises(ConfigError, match="set SEARCH_REDIS_PASSWORD or"):
        Settings.from_env({**base, "SEARCH_ADMIN_TOKEN": TOKEN})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    without_token = {k: v for k, v in good.items() if k != "SEARCH_ADMIN_TOKEN"}
    with pytest.raises(ConfigError, match="SEARCH_ADMIN_TOKEN_FILE is empty"):
        Settings.from_env({**without_token, "SEARCH_ADMIN_TOKEN_FILE": str(empty)})
    # no token at all: the service starts, with its admin routes off
    untokened = {**base, "SEARCH_REDIS_PASSWORD": PASSWORD}
    assert Settings.from_env(untokened).admin_token is None


def test_without_a_token_the_admin_routes_refuse_everything(
    run: Callable[..., None], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Fails closed: an unset token turns the routes off, it never lets anything through."""

    async def scenario(client: Client) -> None:
        flip = {"key": "search", "value": "off", "reason": "r"}
        for headers in ({}, bearer(TOKEN), bearer(""), {"Authorization": "Bearer"}):
            response = await client.get("/admin/flags", headers=headers)
            assert response.status_code == 404, headers
            assert "no admin token" in response.json()["error"]
            assert (
                await client.post("/admin/flags", json=flip, headers=headers)
            ).status_code == 404
        assert (await search(client, session="s-1"))["personalized"] is True  # nothing changed

    with caplog.at_level(logging.INFO):
        run(scenario, dataclasses.replace(settings, admin_token=None))
    assert "admin routes are off" in caplog.text


def test_token_comparison_is_exact_and_on_digests() -> None:
    secret = Secret(TOKEN)
    assert secret.matches(TOKEN)
    for other in ("", TOKEN[:-1], TOKEN + " ", TOKEN.upper(), "\udcff", "é" * 40):
        assert not secret.matches(other), other
    assert TOKEN not in repr(secret) and TOKEN not in str(secret)


def test_the_access_log_carries_hashed_ids_only(
    run: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn logs each request's path and query: the user and session ids of /search are
    replaced by salted hashes before any handler sees the line."""
    user, session = "user-e5c2a9", "session-0b77f1"

    async def scenario(client: Client) -> None:
        await search(client, user=user, session=session)

    run(scenario)  # create_app installs the filter
    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        # what uvicorn's h11 and httptools protocols log for each request
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:50000",
            "GET",
            f"/search?q=red&user={user}&session={session}&n=5",
            "1.1",
            200,
        )
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "GET", "/metrics", "1.1", 200)
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert len(lines) == 2
    assert user not in lines[0] and session not in lines[0]
    assert re.search(r"user=[0-9a-f]{16}&session=[0-9a-f]{16}&n=5", lines[0]), lines[0]
    assert lines[1].endswith('"GET /metrics HTTP/1.1" 200')
    assert sum(isinstance(f, HashedIds) for f in access.filters) == 1  # once, however many apps


def test_the_load_script_runs_end_to_end(redis_server: RedisServer, tmp_path: Path) -> None:
    """--quick: its own redis-server (not the fixture's, which only checks that one can be
    started) and its own uvicorn, three phases, everything stopped."""
    report_path = tmp_path / "report.json"
    finished = subprocess.run(
        [sys.executable, "-m", "examples.search_service.load", "--quick", "--json", report_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "redis stopped" in finished.stdout
    report = json.loads(report_path.read_text())
    phases = {p["phase"]: p for p in report["phases"]}
    assert list(phases) == ["redis healthy", "redis stopped", "redis resumed"]
    for phase in phases.values():
        assert phase["requests"] > 0
        assert phase["errors"] == 0
        assert set(phase["latency_ms"]) == {"p50", "p99", "max"}
    # frozen, Redis answers nothing: the session tier never serves, the chain falls back
    assert "session" not in phases["redis stopped"]["served_by"]
    assert phases["redis stopped"]["session_outcomes"].keys() <= {
        "timeout",
        "breaker_open",
        "miss",
    }
    assert (report["admin_without_token"], report["admin_with_wrong_token"]) == (401, 403)
    assert report["secrets_in_log"] is False
    assert report["service_shutdown"] == "clean"
