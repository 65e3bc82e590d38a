"""Fleet breakers across real processes: how fast an outage spreads, and what Redis down costs.

``python -m benchmarks fleet [--quick] [--json PATH]``:

- ``propagation_s``: a second *process* (a child Python) runs an engine whose own store is
  healthy; this process's store fails, its breaker opens; the time until the child's breaker
  opens too (both read the wall clock), over several trials, with the default ``sync_every``
  of 250 ms.
- ``redis_down_ratio`` / ``redis_killed_ratio``: decisions of an engine whose fleet Redis is
  frozen (SIGSTOP), then killed, against an engine with its fleet Redis up, interleaved (the
  request path touches only memory: goal ~1.0).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any

from resilience import Affinities, Engine, NullSink, RequestContext, load_policies
from resilience.testing import RedisServer, wait_for

from .interleaved import compare

__all__ = ["run"]


def _policy(url: str, sync_every: str = "250ms") -> str:
    return f"""
version: 1
default_policy: p
sources:
  profile_store:
    breaker:
      minimum_calls: 10
      size: 50
      failure_rate: 0.5
      open_for: 60s
      fleet: {{url: "{url}", sync_every: {sync_every}, window: 10s}}
policies:
  p:
    chain: [profile_only, unpersonalized]
"""


_CHILD = textwrap.dedent(
    """
    import sys, time
    from resilience import Affinities, Engine, NullSink, RequestContext, load_policies
    healthy = {"profile_store": lambda k: Affinities({"a": 1.0})}
    engine = Engine(load_policies(sys.stdin.read()), healthy, events=NullSink())
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        engine.decide(RequestContext(user_id="u"))
        if engine.breaker("profile_store").state == "open":
            print(repr(time.time()), flush=True)
            break
        time.sleep(0.001)
    engine.close()
    """
)


def _propagation(server: RedisServer, trial: int) -> float:
    text = _policy(server.url).replace("resilience:breaker", f"trial{trial}")
    text = text.replace("fleet: {", f'fleet: {{key_prefix: "t{trial}", ')
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write(text)
    child.stdin.close()
    assert child.stdout.readline().strip() == "ready"

    def down(key: str) -> Affinities:
        raise ConnectionError("profile store down")

    with Engine(load_policies(text), {"profile_store": down}, events=NullSink()) as engine:
        while engine.breaker("profile_store").state != "open":
            engine.decide(RequestContext(user_id="u"))
        opened_here = time.time()
        line = child.stdout.readline().strip()
    child.wait(30)
    if not line:
        raise RuntimeError("the child's breaker never opened")
    return float(line) - opened_here


def run(*, quick: bool) -> dict[str, Any]:
    """Measure propagation across processes and the cost of a stopped fleet Redis."""
    trials = 3 if quick else 7
    with RedisServer() as server:
        delays = [_propagation(server, t) for t in range(trials)]
        healthy = Engine(
            load_policies(_policy(server.url)),
            {"profile_store": lambda k: Affinities({"a": 1.0})},
            events=NullSink(),
        )
        frozen_server = RedisServer().start()
        frozen = Engine(
            load_policies(_policy(frozen_server.url)),
            {"profile_store": lambda k: Affinities({"a": 1.0})},
            events=NullSink(),
        )
        frozen_server.pause()
        try:
            assert frozen.fleet is not None
            wait_for(lambda: frozen.fleet is not None and frozen.fleet._unreachable, 5.0)
            request = RequestContext(user_id="u")

            def loop(engine: Engine) -> Any:
                def many(calls: int) -> None:
                    for _ in range(calls):
                        engine.decide(request)

                return many

            calls, repeats = (2_000, 9) if quick else (10_000, 15)
            comparison = compare(loop(frozen), loop(healthy), calls=calls, repeats=repeats)
            frozen_server.kill()  # now down: connections refused
            killed = compare(loop(frozen), loop(healthy), calls=calls, repeats=repeats)
        finally:
            frozen.close()
            healthy.close()
            frozen_server.stop()  # resumes a frozen server before killing it
    return {
        "sync_every_ms": 250.0,
        "propagation_s": {
            "median": round(statistics.median(delays), 3),
            "max": round(max(delays), 3),
            "trials": [round(d, 3) for d in delays],
        },
        "redis_down_ratio": comparison.as_dict(),
        "redis_killed_ratio": killed.as_dict(),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
