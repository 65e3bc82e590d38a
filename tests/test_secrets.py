"""Redis passwords never leave the process.

A private redis-server requires a password; the engine gets it from the environment or from a
file, and every Redis connection it makes is exercised: the session store (sync and asyncio),
fleet-wide breakers, the fleet's flags (the engine's feed and the operator's CLI) and the
stream_lag guard's watermark. Each test drives success or failure (a wrong password, a stopped
server, unusable settings, a bad URL, validation errors) and then searches everything that left
the process for the password: events, log records of every logger at DEBUG, decision traces,
OpenTelemetry spans, the metrics exposition, CLI output, exception chains as a traceback prints
them, and the repr and str of the objects an operator may print.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError
from resilience_plugins.guards.stream_lag import RedisWatermark, StreamLagParams

from resilience import (
    BreakerOptions,
    Engine,
    FlagSettings,
    Mode,
    Outcome,
    PolicyValidationError,
    RedisOptions,
    RequestContext,
    SourceOptions,
    load_policies,
    load_policies_file,
    metrics,
    user_hash,
)
from resilience._exposure import ExposureSettings
from resilience._flags_redis import FlagStoreError, RedisFlagFeed, RedisFlagOptions, RedisFlagStore
from resilience._fleet import FleetOptions
from resilience._secrets import FileCredentials, read_secret_file, redact_url
from resilience.cli import main as cli
from resilience.otel import instrument
from resilience.testing import RecordingSink, RedisServer, wait_for

from .conftest import private_redis

# Searched for in everything: it survives %-encoding, repr escapes and JSON.
CORE = "Kq7c1e9b2fVZ"
PASSWORD = f"{CORE} p@ss:w/rd?#"  # a space, and what a URL must %-encode
WRONG_CORE = "Wr0ng5ecr3tX"
WRONG = f"{WRONG_CORE}-nope"
REQUEST = RequestContext(user_id="u1", session_id="s1", request_id="r1")
PASSWORD_VARIABLE = "TEST_SECRETS_REDIS_PASSWORD"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A private redis-server that requires ``PASSWORD`` (never the shared one)."""
    with private_redis(password=PASSWORD) as server:
        now = time.time()
        session = {"clicks": [{"item": "i1", "category": "shoes", "ts": now}], "event_time": now}
        server.set("session:s1", json.dumps(session))
        server.set("watermark", repr(now))
        yield server


class Seen:
    """Everything that left the process during a test, to be searched for secrets.

    Log records of every logger (from DEBUG) and the CLI's output are taken when checked; the
    rest is added as the test makes it.
    """

    def __init__(self, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]):
        self.texts: list[tuple[str, str]] = []
        self._caplog = caplog
        self._capsys = capsys
        self.sink = RecordingSink()
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        caplog.set_level(logging.DEBUG)

    def add(self, what: str, value: object) -> None:
        self.texts.append((what, value if isinstance(value, str) else f"{value!r} {value!s}"))

    def error(self, what: str, exc: BaseException) -> None:
        """An exception as a traceback shows it: its message and every one it was raised from
        or during."""
        self.add(what, "".join(traceback.format_exception(exc)))

    def engine(self, engine: Engine) -> None:
        """What an operator may print of an engine and of what it made."""
        generation = engine._generation
        self.add("repr(engine)", engine)
        self.add("repr(engine.policies)", engine.policies)
        for name, runtime in generation.sources.items():
            self.add(f"source {name}", runtime.target)
            self.add(f"options of {name}", runtime.options)
        self.add("fleet", generation.fleet)
        self.add("flag sources", engine.flags.sources())
        self.add("flags", engine.flags.states())
        for compiled in generation.compiled.values():
            for step in (*compiled.guards, *compiled.tiers, *compiled.post):
                self.add(f"step {step.step_id}", step)
                self.add(f"params of {step.step_id}", step.params)
        self.add("stats", engine.stats())

    def output(self) -> tuple[str, str]:
        """What was printed (the CLI's stdout and stderr) since the last call, kept for the
        check."""
        captured = self._capsys.readouterr()
        self.add("stdout", captured.out)
        self.add("stderr", captured.err)
        return captured.out, captured.err

    def check(self, *secrets: str) -> None:
        """No secret (the password's core by default) in anything seen."""
        self.output()
        self.add("log records", "\n".join(self._log_lines()))
        self.add("events", json.dumps(self.sink.events, default=repr))
        self.add("metrics", generate_latest(self.registry).decode())
        self.add("spans", "\n".join(s.to_json() for s in self.exporter.get_finished_spans()))
        for secret in secrets or (CORE,):
            for what, text in self.texts:
                assert secret not in text, f"a secret in {what}: {text.replace(secret, '<HERE>')}"

    def _log_lines(self) -> Iterator[str]:
        for record in self._caplog.records:
            yield f"{record.name} {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                yield "".join(traceback.format_exception(record.exc_info[1]))


@pytest.fixture
def seen(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Iterator[Seen]:
    everything = Seen(caplog, capsys)
    yield everything
    everything.provider.shutdown()


def policy(url: str, login: str = "") -> str:
    """A policy with every kind of Redis connection, each logging in with ``login``: the
    session store, a fleet-wide breaker, the fleet's flags and the stream_lag watermark.
    Timeouts are generous: these tests are about what is shown, not about time."""
    redis_at = f'url: "{url}", {login}'
    return f"""version: 1
settings:
  flags:
    env_prefix: null
    redis: {{{redis_at} timeout: 2s, reread_every: 50ms}}
sources:
  session_store:
    redis: {{{redis_at} connect_timeout: 1s}}
    breaker:
      minimum_calls: 5
      size: 10
      fleet: {{{redis_at} timeout: 1s, sync_every: 1h}}
default_policy: p
policies:
  p:
    budget: 3s
    guards:
      - type: stream_lag
        redis: {{{redis_at} timeout: 1s}}
        poll_every: 1h
        read_timeout: 1s
    chain:
      - type: session
        source: session_store
        profile_source: null
        timeout: 2s
      - unpersonalized
"""


def login(how: str, password: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The policy's keys for ``password`` given the way ``how`` says: in a file (with the
    trailing newline ``echo`` writes) or in an environment variable."""
    if how == "file":
        secret = folder / "redis-password"
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        return f'password_file: "{secret}",'
    monkeypatch.setenv(PASSWORD_VARIABLE, password)
    return f"password_env: {PASSWORD_VARIABLE},"


def write_policy(folder: Path, text: str) -> Path:
    path = folder / "policies.yaml"
    path.write_text(text)
    return path


def build(path: Path, seen: Seen) -> Engine:
    engine = Engine.from_file(path, {}, events=seen.sink, seed=0)
    metrics.register(engine, seen.registry)
    return engine


def watch_of(engine: Engine) -> Any:
    return engine._generation.compiled["p"].guards[0].watch  # type: ignore[attr-defined]


def redis_health(engine: Engine) -> Any:
    return next(h for h in engine.flags.sources() if h.source == "redis")


# --- success ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["file", "env"])
def test_every_redis_connection_logs_in_and_shows_no_password(
    how: str, server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen: Seen
) -> None:
    path = write_policy(tmp_path, policy(server.url, login(how, PASSWORD, tmp_path, monkeypatch)))
    engine = build(path, seen)
    try:
        with instrument(engine, seen.provider):
            decision = engine.decide(REQUEST)
            assert decision.trace.served == "session", decision.trace
            later = asyncio.run(engine.adecide(REQUEST))
            assert later.trace.served == "session", later.trace
        seen.add("traces", f"{decision.trace!s} {decision.trace!r} {later.trace!s}")
        watch = watch_of(engine)
        watch.poll()
        assert watch.state.lag is not None  # the watermark was read
        fleet = engine._generation.fleet
        assert fleet is not None
        fleet.sync_once()
        assert fleet.last_round is not None  # the fleet's Redis answered
        assert redis_health(engine).healthy
        # The operator's CLI writes the fleet's flags with the same login; the feed sees it.
        policies = ["--policies", str(path)]
        assert cli(["flags", "set", "p", "off", "--reason", "drill", "--by", "t", *policies]) == 0
        assert wait_for(lambda: engine.flags.get("p").value is Mode.OFF, 5)
        assert cli(["flags", "list", "--format", "json", *policies]) == 0
        assert cli(["flags", "history", *policies]) == 0
        assert cli(["explain", "--format", "json", str(path)]) == 0
        assert cli(["validate", str(path)]) == 0
        seen.engine(engine)
    finally:
        engine.close()
    assert not seen.sink.of("resilience.flag.source_stale")
    seen.check()


def test_a_password_in_the_url_works_is_warned_about_and_is_masked(
    server: RedisServer, tmp_path: Path, seen: Seen
) -> None:
    inline = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/0"
    path = write_policy(tmp_path, policy(inline))
    engine = build(path, seen)
    try:
        assert engine.decide(REQUEST).trace.served == "session"
        server.kill()  # failures name the Redis: by host and port
        engine._generation.fleet.sync_once()  # type: ignore[union-attr]
        unreachable = seen.sink.of("resilience.fleet.unreachable")
        assert [e["url_host"] for e in unreachable] == [f"127.0.0.1:{server.port}"]
        engine.flags.refresh()
        assert "127.0.0.1" in redis_health(engine).error
        seen.engine(engine)
    finally:
        engine.close()
    assert cli(["validate", str(path)]) == 0
    assert cli(["validate", "--format", "json", str(path)]) == 0
    assert cli(["explain", str(path)]) == 0
    assert cli(["explain", "--format", "json", str(path)]) == 0
    out, err = seen.output()
    # one warning per declaration: the guard's (from the loader), then the file-level ones
    for where in (
        "policies.p.guards[0]: redis.url holds a password",
        "settings.flags.redis: url holds a password",
        "sources.session_store.breaker.fleet: url holds a password",
        "sources.session_store.redis: url holds a password",
    ):
        assert "policies.yaml:" in err and where in err, where
    assert "redis://:***@127.0.0.1" in out  # explain shows where, not the password
    # A config version (in every trace and metric) must not be a function of the password.
    (tmp_path / "other").mkdir()
    other = write_policy(tmp_path / "other", policy(inline.replace(quote(CORE), "another")))
    assert load_policies_file(other).version == load_policies_file(path).version
    seen.check()


def test_a_rotated_password_file_reaches_new_connections(
    server: RedisServer, tmp_path: Path, seen: Seen
) -> None:
    """Kubernetes rewrites a mounted secret in place: a new connection reads the new one."""
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    store = RedisFlagStore(RedisFlagOptions(url=server.url, password_file=str(secret), timeout=2.0))
    try:
        assert store.set("p", "on", reason="before", by="t") == 1
        rotated = f"{WRONG_CORE}-rotated"
        admin = redis.Redis(port=server.port, password=PASSWORD, socket_timeout=2)
        admin.config_set("requirepass", rotated)
        admin.close()
        server.password = rotated  # for the kit's own connections from now on
        secret.write_text(rotated)
        store._client.connection_pool.disconnect()  # as after a network blip
        assert store.set("p", "off", reason="after", by="t") == 2
        secret.unlink()
        store._client.connection_pool.disconnect()
        with pytest.raises(FlagStoreError, match="refused the credentials") as caught:
            store.read()
        seen.error("a connection without its password file", caught.value)
        seen.add("store", store)
    finally:
        store.close()
    seen.check(CORE, WRONG_CORE)


def test_the_simulator_reads_the_password_of_its_redis_from_a_file(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen: Seen
) -> None:
    scenario = tmp_path / "drill.yaml"
    scenario.write_text(
        "name: short\nduration: 10s\nworld: {users: 100, items: 200, candidates: 20, rate: 10}\n"
    )
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    run = ["simulate", "--scenario", str(scenario), "--redis", server.url, "--quiet"]
    out = tmp_path / "result.json"
    assert cli([*run, "--redis-password-file", str(secret), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["redis"]["sessions_written"] > 0 and result["failed"] == 0
    seen.add("result", out.read_text())
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    assert cli([*run, "--redis-password-env", PASSWORD_VARIABLE]) == 1
    assert f"{PASSWORD_VARIABLE} (password_env) is not set" in seen.output()[1]
    inline = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/0"
    assert cli([*run[:3], "--redis", inline, "--redis-password-file", str(secret)]) == 1
    assert "holds a password" in seen.output()[1]
    # Written unencoded, the password's "/" ends the host for a URL parser, whose view of the
    # URL then has no password to mask: the message must not echo the URL.
    misread = f"redis://:{CORE}/x@127.0.0.1:{server.port}/0"
    assert cli([*run[:3], "--redis", misread]) == 1
    seen.check()


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["file", "env"])
def test_a_wrong_password_is_refused_without_being_shown(
    how: str, server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen: Seen
) -> None:
    path = write_policy(tmp_path, policy(server.url, login(how, WRONG, tmp_path, monkeypatch)))
    engine = build(path, seen)  # a feed that cannot log in still lets the engine start
    try:
        with instrument(engine, seen.provider):
            decision = engine.decide(REQUEST)
        assert decision.trace.outcome_of("session") is Outcome.ERROR, decision.trace
        assert decision.trace.served == "unpersonalized"
        seen.add("trace", decision.trace)
        fleet = engine._generation.fleet
        assert fleet is not None
        fleet.sync_once()
        assert [e["error"] for e in seen.sink.of("resilience.fleet.unreachable")] == [
            "AuthenticationError"
        ]
        health = redis_health(engine)
        assert not health.healthy and "AuthenticationError" in health.error
        seen.engine(engine)
    finally:
        engine.close()
    policies = ["--policies", str(path)]
    assert cli(["flags", "set", "p", "off", "--reason", "r", "--by", "t", *policies]) == 1
    assert "refused the credentials" in seen.output()[1]
    seen.check(CORE, WRONG_CORE)


def test_a_stopped_server_fails_fast_without_showing_the_password(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen: Seen
) -> None:
    path = write_policy(
        tmp_path, policy(server.url, login("file", PASSWORD, tmp_path, monkeypatch))
    )
    engine = build(path, seen)
    try:
        assert engine.decide(REQUEST).trace.served == "session"
        server.kill()
        with instrument(engine, seen.provider):
            decision = engine.decide(REQUEST)
        assert decision.trace.outcome_of("session") is Outcome.ERROR, decision.trace
        engine._generation.fleet.sync_once()  # type: ignore[union-attr]
        assert seen.sink.of("resilience.fleet.unreachable")
        engine.flags.refresh()
        assert seen.sink.of("resilience.flag.source_stale")
        watch = watch_of(engine)
        watch.poll()
        seen.engine(engine)
    finally:
        engine.close()
    policies = ["--policies", str(path), "--timeout", "0.5"]
    assert cli(["flags", "list", *policies]) == 0
    assert "unreadable" in seen.output()[1]
    assert cli(["flags", "set", "p", "off", "--reason", "r", *policies]) == 1
    seen.check()


def test_unusable_login_settings_fail_the_build_naming_the_option(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen: Seen
) -> None:
    empty, folder = tmp_path / "empty", tmp_path / "a-folder"
    empty.write_text("\n")
    folder.mkdir()
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    monkeypatch.setenv(
        "TEST_SECRETS_URL_WITH_PASSWORD", f"redis://:{quote(PASSWORD, safe='')}@h:1/0"
    )
    # A password with an unencoded "/": it ends the host part, and Python's URL parser then
    # quotes the password's start as the port it cannot read.
    bad_url = f"redis://:{CORE}/x@127.0.0.1:1/0"
    monkeypatch.setenv("TEST_SECRETS_BAD_URL", bad_url)
    url = server.url
    # (policy, the error, whether the file alone shows it). What only the service's environment
    # resolves (a variable, a secret file) fails the service's build, never CI's offline
    # validate, which has neither; what the file itself shows fails both.
    cases = [
        (policy(url, f'password_file: "{tmp_path / "missing"}",'), "password_file '", False),
        (policy(url, f'password_file: "{empty}",'), "the file is empty", False),
        (policy(url, f'password_file: "{folder}",'), "cannot read it", False),
        (policy(url, f"password_env: {PASSWORD_VARIABLE},"), PASSWORD_VARIABLE, False),
        (
            policy(url, f'password_file: "{empty}",').replace(
                f'url: "{url}"', "url_env: TEST_SECRETS_URL_WITH_PASSWORD"
            ),
            "holds a password and password_file names another",
            False,
        ),
        (
            policy(url).replace(f'url: "{url}"', "url_env: TEST_SECRETS_BAD_URL"),
            "TEST_SECRETS_BAD_URL (url_env) is not a valid Redis URL",
            False,
        ),
        (policy(bad_url), "url is not a valid Redis URL", True),
    ]
    for text, expected, in_the_file in cases:
        path = write_policy(tmp_path, text)
        with pytest.raises(PolicyValidationError, match=re.escape(expected)) as caught:
            build(path, seen)
        seen.error(expected, caught.value)
        assert cli(["validate", str(path)]) == (1 if in_the_file else 0), expected
        assert (expected in seen.output()[1]) is in_the_file
    # Each kind of connection on its own, as code that makes one sees the error.
    for keys in (
        {"url": bad_url},
        {"url_env": "TEST_SECRETS_BAD_URL"},
        {"url": url, "password_file": str(empty)},
        {"url": url, "password_env": PASSWORD_VARIABLE},
    ):
        for kind in (RedisOptions, FleetOptions, RedisFlagOptions, RedisWatermark):
            with pytest.raises(ValueError, match=r"url|password") as failed:
                kind.model_validate(keys).client_settings()
            seen.error(f"{kind.__name__}.client_settings()", failed.value)
        for connect in (RedisFlagFeed, RedisFlagStore):
            with pytest.raises(ValueError, match=r"url|password") as failed:
                connect(RedisFlagOptions.model_validate(keys))
            seen.error(connect.__name__, failed.value)
    seen.check()


def test_validation_errors_never_echo_a_url(tmp_path: Path, seen: Seen) -> None:
    """pydantic puts a failed validator's input in its error's text, and the input of a
    cross-field check is a whole mapping; these are each built in code and from a file. The
    URL is short and last: pydantic elides the middle of a long input, which would hide it."""
    url = f"redis://:{CORE}@h"
    both = {"url_env": "X", "url": url}
    broken: list[Callable[[], object]] = [
        lambda: RedisOptions.model_validate(both),
        lambda: RedisOptions(password_env="X", url=url),
        lambda: RedisOptions(password_env="X", password_file="/f", url=url),
        lambda: FleetOptions.model_validate(both),
        lambda: RedisFlagOptions.model_validate(both),
        lambda: FlagSettings.model_validate({"redis": both}),
        lambda: SourceOptions.model_validate({"redis": both}),
        lambda: BreakerOptions.model_validate({"size": 5, "fleet": {"url": url}}),
        lambda: SourceOptions.model_validate({"breaker": {"size": 5, "fleet": {"url": url}}}),
        lambda: StreamLagParams.model_validate({"source": "w", "redis": {"url": url}}),
    ]
    for make in broken:
        with pytest.raises(ValidationError) as caught:
            make()
        seen.error("a validation error", caught.value)
    long_url = f"redis://:{quote(PASSWORD, safe='')}@h:1/0"
    for text in (
        policy(long_url).replace(f'url: "{long_url}"', f'url: "{long_url}", url_env: X'),
        policy(long_url).replace("size: 10", "size: 2"),
        policy(long_url).replace("poll_every: 1h", "poll_every: 1h\n        source: w"),
        policy(long_url, "password_env: X,"),
    ):
        path = write_policy(tmp_path, text)
        with pytest.raises(PolicyValidationError) as file_error:
            load_policies_file(path)
        seen.error("a policy file's errors", file_error.value)
        assert cli(["validate", "--format", "json", str(path)]) == 1
    seen.check()


def test_options_stores_and_helpers_show_no_password(tmp_path: Path, seen: Seen) -> None:
    inline = f"redis://user:{quote(PASSWORD, safe='')}@h:1/0?password={quote(PASSWORD, safe='')}"
    for options in (
        RedisOptions(url=inline),
        FleetOptions(url=inline),
        RedisFlagOptions(url=inline),
        SourceOptions.model_validate({"redis": {"url": inline}}),
        load_policies(policy(inline)),
    ):
        seen.add("options", options)
        seen.add("their dump", getattr(options, "model_dump_json", lambda: "")())
    assert redact_url(inline) == "redis://user:***@h:1/0?password=***"
    # A password with an unencoded "/" ends a URL parser's host part: still masked.
    assert redact_url(f"redis://:{PASSWORD}@h:1/0") == "redis://:***@h:1/0"
    feed = RedisFlagFeed(RedisFlagOptions(url=inline.partition("?")[0]))
    seen.add("feed", feed)
    feed.stop()
    secret = tmp_path / "password"
    secret.write_text(f"{PASSWORD}\r\n")
    assert read_secret_file(str(secret)) == PASSWORD  # one trailing newline dropped, CRLF too
    seen.add("credentials", FileCredentials(str(secret), "user"))
    seen.check()


def test_an_unused_login_key_leaves_the_dump_and_so_the_version_as_it_was() -> None:
    """Config versions hash the options' dump: keys added for secrets stay out of it unset,
    so a policy file that does not use them keeps the version it had."""
    assert "password_file" not in RedisOptions(url="redis://h").model_dump()
    assert "password_env" in RedisOptions(url="redis://h").model_dump()  # it was there before
    for kind in (FleetOptions, RedisFlagOptions, RedisWatermark):
        dumped = kind(url="redis://h").model_dump()
        assert "password_env" not in dumped and "password_file" not in dumped, kind
        assert kind(url="redis://h", password_env="P").model_dump()["password_env"] == "P"
    exposures = {"path": "x.jsonl", "user_salt_env": "S"}
    assert "user_salt_file" not in ExposureSettings.model_validate(exposures).model_dump()


def test_the_exposure_logs_salt_is_a_secret_too(tmp_path: Path, seen: Seen) -> None:
    """Whoever has the salt can hash guessed user ids and find them in the exposure log."""
    salt_core = "SaltC0re9d1f"
    inline = f"""version: 1
settings:
  exposures: {{path: exposures.jsonl, user_salt: "{salt_core}-x"}}
default_policy: p
policies:
  p:
    chain: [unpersonalized]
"""
    path = write_policy(tmp_path, inline)
    loaded = load_policies_file(path)
    seen.add("the policies", loaded)
    seen.add("their settings' dump", loaded.settings.model_dump_json())
    assert cli(["validate", str(path)]) == 0
    err = seen.output()[1]
    assert "policies.yaml:3:38: settings.exposures: user_salt is in the policy file" in err
    (tmp_path / "other").mkdir()
    changed = write_policy(tmp_path / "other", inline.replace("-x", "-y"))
    assert load_policies_file(changed).version == loaded.version  # not a function of the salt
    salt_file = tmp_path / "salt"
    salt_file.write_text(f"{salt_core}-file\n")
    from_file = inline.replace(f'user_salt: "{salt_core}-x"', f'user_salt_file: "{salt_file}"')
    records: list[Any] = []

    class Keep:
        def write(self, record: Any) -> None:
            records.append(record)

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    engine = Engine(load_policies(from_file), {}, events=seen.sink, exposure_sink=Keep())
    engine.decide(RequestContext(user_id="u1", request_id="r1"))
    engine.close()
    assert records[0]["user"] == user_hash(f"{salt_core}-file", "u1")  # the newline dropped
    seen.add("records", records)
    salt_file.unlink()
    with pytest.raises(PolicyValidationError, match="user_salt_file '") as missing:
        Engine(load_policies(from_file), {}, events=seen.sink)
    seen.error("a missing salt file", missing.value)
    with pytest.raises(ValidationError) as twice:
        ExposureSettings(path="x", user_salt_env="S", user_salt=salt_core)
    seen.error("the salt given twice", twice.value)
    seen.check(salt_core)


def test_the_kit_server_requires_its_password_and_keeps_it_off_its_url() -> None:
    with private_redis(password=PASSWORD) as server:
        assert CORE not in server.url and CORE not in repr(server)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(server.url, socket_timeout=2).ping()
        server.set("k", "v")  # the kit logs in itself
        server.kill()
        server.start()  # the password holds across a restart
        client = redis.Redis.from_url(server.url, password=PASSWORD, socket_timeout=2)
        assert client.get("k") is None  # no persistence
        assert client.ping()
        client.close()
    with pytest.raises(ValueError, match="empty"):
        RedisServer(password="")
