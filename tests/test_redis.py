"""The Redis session store against a real redis-server this test starts (never the shared one)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from resilience import (
    Engine,
    Outcome,
    PolicyValidationError,
    RequestContext,
    SourceBindingError,
    load_policies,
)
from resilience.testing import RecordingSink, RedisClusterNodes, RedisServer, wait_for

from .conftest import in_ci

# On the real clock: run alone, after the parallel run (see the Makefile).
pytestmark = pytest.mark.serial


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    return redis_server


def policy(url: str, extra: str = "") -> str:
    return f"""
version: 1
default_policy: p
sources:
  session_store:
    redis:
      url: {url}
      key: "sess:{{key}}"
      max_connections: 4
{extra}
policies:
  p:
    budget: 500ms
    chain:
      # 100 ms, not 10: a healthy read must succeed on a loaded host; a hung one is still cut
      - {{type: session, timeout: 100ms, profile_source: null}}
      - unpersonalized
"""


SESSION = {
    "clicks": [
        {"item": "i1", "category": "shoes", "ts": 1_700_000_000.0},
        {"item": "i2", "category": "bags", "ts": 1_700_000_001.0},
    ],
    "event_time": 1_700_000_002.0,
}
REQUEST = RequestContext(session_id="s1", user_id="u1")


def engine_for(text: str) -> Engine:
    return Engine(load_policies(text), {}, events=RecordingSink())


def test_sync_and_async_read_a_session(server: RedisServer) -> None:
    server.set("sess:s1", json.dumps(SESSION))
    with engine_for(policy(server.url)) as engine:
        decision = engine.decide(REQUEST)
        assert decision.trace.served == "session", decision.trace
        assert decision.signals is not None
        assert decision.signals.categories == {"shoes": 0.5, "bags": 0.5}
        assert decision.signals.observed_at == 1_700_000_002.0
        assert asyncio.run(engine.adecide(REQUEST)).trace.served == "session"


def test_a_missing_key_is_a_miss(server: RedisServer) -> None:
    with engine_for(policy(server.url)) as engine:
        assert engine.decide(REQUEST).trace.outcome_of("session") is Outcome.MISS


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe not json",
        b"[1, 2]",
        json.dumps({"clicks": [{"item": 5}]}).encode(),
        json.dumps({"clicks": "no"}).encode(),
        json.dumps({**SESSION, "event_time": "x"}).encode(),
        b"{" + b" " * 70_000 + b"}",
    ],
    ids=["binary", "list", "bad-click", "bad-clicks", "bad-event-time", "oversized"],
)
def test_malformed_or_oversized_values_are_garbage(server: RedisServer, value: bytes) -> None:
    server.set("sess:s1", value)
    with engine_for(policy(server.url)) as engine:
        decision = engine.decide(REQUEST)
        assert decision.trace.outcome_of("session") is Outcome.GARBAGE, decision.trace
        assert asyncio.run(engine.adecide(REQUEST)).trace.outcome_of("session") is (Outcome.GARBAGE)


def test_a_hung_server_is_cut_at_the_deadline_and_its_connection_discarded(
    server: RedisServer,
) -> None:
    server.set("sess:s1", json.dumps(SESSION))
    with engine_for(policy(server.url)) as engine:
        assert engine.decide(REQUEST).trace.served == "session"  # a pooled connection exists
        server.pause()
        try:
            for _ in range(6):  # more than the pool holds: each cut connection was discarded
                decision = engine.decide(REQUEST)
                assert decision.trace.outcome_of("session") is Outcome.TIMEOUT, decision.trace
            cut = asyncio.run(engine.adecide(REQUEST))
            assert cut.trace.outcome_of("session") is Outcome.TIMEOUT
        finally:
            server.resume()
        assert engine.decide(REQUEST).trace.served == "session"  # fresh connections work


def test_a_stopped_server_fails_fast(server: RedisServer) -> None:
    with engine_for(policy(server.url)) as engine:
        server.kill()
        decision = engine.decide(REQUEST)
        assert decision.trace.outcome_of("session") is Outcome.ERROR, decision.trace
        async_decision = asyncio.run(engine.adecide(REQUEST))
        assert async_decision.trace.outcome_of("session") is Outcome.ERROR


def test_the_url_can_come_from_the_environment(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.set("sess:s1", json.dumps(SESSION))
    monkeypatch.setenv("SESSION_REDIS_URL", server.url)
    text = policy(server.url).replace(f"url: {server.url}", "url_env: SESSION_REDIS_URL")
    with engine_for(text) as engine:
        assert engine.decide(REQUEST).trace.served == "session"


def test_a_missing_environment_variable_is_a_clear_build_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_SUCH_URL", raising=False)
    text = policy("x").replace("url: x", "url_env: NO_SUCH_URL")
    with pytest.raises(SourceBindingError, match="NO_SUCH_URL"):
        engine_for(text)


def test_url_and_url_env_are_exclusive() -> None:
    text = policy("redis://h").replace("key:", "url_env: X\n      key:")
    with pytest.raises(PolicyValidationError, match="exactly one of url and url_env"):
        load_policies(text)


def test_a_redis_source_must_not_also_be_bound_in_code(server: RedisServer) -> None:
    with pytest.raises(SourceBindingError, match="also bound in code"):
        Engine(load_policies(policy(server.url)), {"session_store": {}.get})


def test_millisecond_times_and_other_field_names(server: RedisServer) -> None:
    server.set(
        "sess:s1", json.dumps({"events": [{"sku": "i1", "cat": "c", "t": 5_000}], "wm": 6_000})
    )
    fmt = """      format:
        clicks: events
        item: sku
        category: cat
        time: t
        event_time: wm
        time_unit: ms
"""
    text = policy(server.url).replace(
        "      max_connections: 4\n", "      max_connections: 4\n" + fmt
    )
    with engine_for(text) as engine:
        decision = engine.decide(REQUEST)
        assert decision.signals is not None, decision.trace
        assert decision.signals.observed_at == 6.0


def test_client_retries_are_off_and_failed_connects_free_their_slot(server: RedisServer) -> None:
    with engine_for(policy(server.url)) as engine:
        store = engine._generation.sources["session_store"].target
        retry = store._pool.connection_kwargs["retry"]
        assert retry._retries == 0  # redis-py's default would back off and retry for seconds
        server.kill()
        outcomes = {engine.decide(REQUEST).trace.outcome_of("session") for _ in range(10)}
        assert outcomes == {Outcome.ERROR}  # 10 refusals through a pool of 4: no slot leaked


def test_async_hangs_are_cancelled_and_their_connections_discarded(server: RedisServer) -> None:
    server.set("sess:s1", json.dumps(SESSION))
    with engine_for(policy(server.url)) as engine:

        async def scenario() -> list[Outcome | None]:
            assert (await engine.adecide(REQUEST)).trace.served == "session"
            server.pause()
            try:
                cut = [
                    (await engine.adecide(REQUEST)).trace.outcome_of("session") for _ in range(6)
                ]
            finally:
                server.resume()
            return [*cut, (await engine.adecide(REQUEST)).trace.outcome_of("session")]

        outcomes = asyncio.run(scenario())
        assert outcomes == [Outcome.TIMEOUT] * 6 + [Outcome.OK]


# --- Redis Cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    try:
        nodes = RedisClusterNodes()
    except FileNotFoundError:
        if in_ci():
            pytest.fail("redis-server/redis-cli are missing; CI must have them")
        pytest.skip("redis-server or redis-cli is not installed")
    with nodes:
        for n in range(20):  # keys spread over the three nodes' slots
            nodes.set(f"sess:c{n}", json.dumps(SESSION))
        yield nodes


def cluster_policy(url: str) -> str:
    return policy(url).replace(
        "      max_connections: 4\n", "      max_connections: 4\n      cluster: true\n"
    )


def test_a_cluster_serves_sessions_from_every_node(cluster: RedisClusterNodes) -> None:
    requests = [RequestContext(session_id=f"c{n}") for n in range(20)]
    with engine_for(cluster_policy(cluster.url)) as engine:
        # The slots, and a connection to each node, are made in the background and on first
        # use; until then calls fail fast. Then every key, whatever its node, is served.
        assert wait_for(
            lambda: {engine.decide(r).trace.served for r in requests} == {"session"}, 5.0
        )

        async def served() -> set[str]:
            for request in requests:  # one loop: asyncio connections belong to their loop
                await engine.adecide(request)
            return {(await engine.adecide(r)).trace.served for r in requests}

        assert asyncio.run(served()) == {"session"}
        missing = engine.decide(RequestContext(session_id="nobody"))
        assert missing.trace.outcome_of("session") is Outcome.MISS


def test_a_cluster_node_that_hangs_costs_its_keys_the_deadline_only(
    cluster: RedisClusterNodes,
) -> None:
    with engine_for(cluster_policy(cluster.url)) as engine:
        first = RequestContext(session_id="c0")
        assert wait_for(lambda: engine.decide(first).trace.served == "session", 5.0)
        for n in range(20):
            engine.decide(RequestContext(session_id=f"c{n}"))  # connections to every node
        frozen = cluster.servers[1]
        frozen.pause()
        try:
            outcomes = {
                engine.decide(RequestContext(session_id=f"c{n}")).trace.outcome_of("session")
                for n in range(20)
            }
        finally:
            frozen.resume()
        assert outcomes == {Outcome.OK, Outcome.TIMEOUT}  # the other nodes' keys still serve


def test_an_unreachable_cluster_is_an_error_not_a_crash() -> None:
    with engine_for(cluster_policy("redis://127.0.0.1:1/0")) as engine:
        decision = engine.decide(REQUEST)
        assert decision.trace.outcome_of("session") is Outcome.ERROR
        assert asyncio.run(engine.adecide(REQUEST)).trace.outcome_of("session") is Outcome.ERROR


@pytest.mark.parametrize(
    "value",
    [b"[" * 60_000, json.dumps({"clicks": [{"item": "i", "ts": 10**400}]}).encode()],
    ids=["deep-nesting", "huge-number"],
)
def test_values_that_break_the_json_parser_are_garbage(value: bytes) -> None:
    from resilience import GarbageData, SessionFormat, decode_session

    with pytest.raises(GarbageData):
        decode_session(value, SessionFormat(), 1_000_000)


def test_url_query_parameters_are_refused(server: RedisServer) -> None:
    text = policy(f"{server.url}?max_connections=1")
    with pytest.raises(SourceBindingError, match="query parameters"):
        engine_for(text)


def test_an_async_read_timeout_never_passes_a_late_reply_to_the_next_caller(
    server: RedisServer,
) -> None:
    from resilience import RedisOptions, RedisSessionStore
    from resilience.testing import LatencyProxy

    for name in ("B", "C"):
        server.set(f"sess:{name}", json.dumps({"clicks": [{"item": name, "ts": 1.0}]}))
    with LatencyProxy(server.port, 0.0) as proxy:
        store = RedisSessionStore(
            "s", RedisOptions(url=proxy.url, key="sess:{key}", max_connections=1)
        )

        async def scenario() -> tuple[object, object]:
            await store.aget("warm", 1.0)  # one pooled connection
            proxy.delay = 0.030
            try:
                first: object = await store.aget("B", 0.010)
            except TimeoutError as exc:
                first = exc
            proxy.delay = 0.0
            second = await store.aget("C", 1.0)
            await store.aclose()
            return first, second

        first, second = asyncio.run(scenario())
    assert isinstance(first, TimeoutError)  # not None: a cut read is no miss
    assert second is not None
    assert second.clicks[0].item_id == "C"  # C's own reply, not B's late one


def test_a_reload_that_drops_a_redis_source_closes_its_asyncio_connections(
    server: RedisServer,
) -> None:
    import redis

    server.set("sess:s1", json.dumps(SESSION))
    engine = Engine(load_policies(policy(server.url)), {}, events=RecordingSink(), retire_after=0.0)
    watcher = redis.Redis.from_url(server.url)

    def clients() -> int:
        return len(watcher.client_list()) - 1  # without the watcher itself

    async def serve_then_reload() -> None:
        assert (await engine.adecide(REQUEST)).trace.served == "session"
        assert clients() >= 1  # the asyncio pool's connection
        changed = policy(server.url).replace("max_connections: 4", "max_connections: 5")
        result = await asyncio.to_thread(engine.reload, changed)
        assert result.ok
        # The old source retires on a timer thread; its loop (this one) closes the connection.
        for _ in range(500):
            if clients() == 0:
                break
            await asyncio.sleep(0.01)
        assert clients() == 0

    try:
        asyncio.run(serve_then_reload())
    finally:
        watcher.close()
        engine.close()
