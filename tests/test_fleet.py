"""Fleet-wide breakers: two engines (as two processes would) sharing one private Redis."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from resilience import Affinities, Engine, Outcome, RequestContext, load_policies
from resilience.testing import RecordingSink, RedisServer, wait_for


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    return redis_server


def policy(url: str, minimum: int = 10) -> str:
    return f"""
version: 1
default_policy: p
sources:
  profile_store:
    breaker:
      minimum_calls: {minimum}
      size: 50
      failure_rate: 0.5
      open_for: 30s
      fleet:
        url: "{url}"
        sync_every: 20ms
        window: 10s
policies:
  p:
    chain: [profile_only, unpersonalized]
"""


class Store:
    def __init__(self) -> None:
        self.down = False

    def __call__(self, key: str) -> Any:
        if self.down:
            raise ConnectionError("profile store down")
        return Affinities({"books": 1.0})


USER = RequestContext(user_id="u")


def engines(text: str) -> tuple[Engine, Engine, Store, Store, RecordingSink]:
    sink = RecordingSink()
    first_store, second_store = Store(), Store()
    first = Engine(load_policies(text), {"profile_store": first_store}, events=sink)
    second = Engine(load_policies(text), {"profile_store": second_store}, events=RecordingSink())
    return first, second, first_store, second_store, sink


def state(engine: Engine) -> str:
    return engine.breaker("profile_store").state


def test_an_outage_seen_by_one_opens_the_breaker_in_the_other(server: RedisServer) -> None:
    first, second, first_store, _, _ = engines(policy(server.url))
    with first, second:
        first_store.down = True
        for _ in range(10):
            first.decide(USER)
        assert state(first) == "open"
        assert wait_for(lambda: state(second) == "open", timeout=5.0)
        decision = second.decide(USER)  # its own store is fine: the fleet knew better
        assert decision.trace.outcome_of("profile_only") is Outcome.BREAKER_OPEN


def test_the_fleet_rate_opens_breakers_no_process_could_open_alone(server: RedisServer) -> None:
    first, second, first_store, second_store, _ = engines(policy(server.url, minimum=20))
    with first, second:
        first_store.down = second_store.down = True
        for _ in range(12):  # 12 failures each: below each one's minimum of 20
            first.decide(USER)
            second.decide(USER)
        assert wait_for(lambda: state(first) == "open" and state(second) == "open", 5.0)


def test_with_the_fleets_redis_stopped_each_keeps_its_local_rules(server: RedisServer) -> None:
    first, second, first_store, _, sink = engines(policy(server.url))
    with first, second:
        fleet = first.fleet
        assert fleet is not None
        server.pause()
        try:
            assert wait_for(lambda: "resilience.fleet.unreachable" in sink.names(), 5.0)
            assert first.decide(USER).trace.served == "profile_only"  # decisions go on
            first_store.down = True
            for _ in range(10):
                first.decide(USER)
            assert state(first) == "open"  # the local rule still works
            assert state(second) == "closed"  # nothing reached the other
        finally:
            server.resume()
        assert wait_for(lambda: "resilience.fleet.recovered" in sink.names(), 5.0)


def test_closing_the_engine_stops_the_exchange(server: RedisServer) -> None:
    engine = Engine(
        load_policies(policy(server.url)), {"profile_store": Store()}, events=RecordingSink()
    )
    fleet = engine.fleet
    assert fleet is not None
    engine.close()
    assert not fleet._thread.is_alive()


def test_a_forked_child_exchanges_with_the_fleet_again(server: RedisServer) -> None:
    engine = Engine(
        load_policies(policy(server.url)), {"profile_store": Store()}, events=RecordingSink()
    )
    fleet = engine.fleet
    assert fleet is not None
    pid = os.fork()
    if pid == 0:  # the child: its copy of the exchange must run rounds of its own
        code = 1
        try:
            fleet.last_round = None
            code = 0 if wait_for(lambda: fleet.last_round is not None, 10) else 2
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        engine.close()


def test_a_fleet_without_its_url_is_a_clear_build_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resilience import PolicyValidationError

    monkeypatch.delenv("NO_FLEET_URL", raising=False)
    text = policy("x").replace('url: "x"', "url_env: NO_FLEET_URL")
    make: Callable[[], Engine] = lambda: Engine(  # noqa: E731
        load_policies(text), {"profile_store": Store()}, events=RecordingSink()
    )
    with pytest.raises(PolicyValidationError, match="NO_FLEET_URL"):
        make()


def test_a_recovered_breaker_is_not_reopened_by_failures_it_already_served(
    server: RedisServer,
) -> None:
    import time

    text = policy(server.url).replace("open_for: 30s", "open_for: 200ms")
    text = text.replace("    breaker:\n", "    breaker:\n      half_open_probes: 1\n")
    store = Store()
    with Engine(load_policies(text), {"profile_store": store}, events=RecordingSink()) as engine:
        store.down = True
        for _ in range(10):
            engine.decide(USER)
        assert state(engine) == "open"
        store.down = False
        time.sleep(0.25)
        engine.decide(USER)  # the probe succeeds: closed, with a fresh window
        assert state(engine) == "closed"
        deadline = time.monotonic() + 0.6  # a few fleet rounds, within the 10 s fleet window
        while time.monotonic() < deadline:
            engine.decide(USER)
            assert state(engine) == "closed"
            time.sleep(0.01)
