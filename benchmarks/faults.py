"""The fault drill: the reference policy against a real redis-server under real faults.

``python -m benchmarks faults [--quick] [--json PATH]``. For each mode (sync ``decide``, asyncio
``adecide``) and each fault, a private ``redis-server`` is started on a free port (never the
shared one), the reference ``policies.yaml`` is run with its session store read from that server
(``sources.session_store.redis``), and a paced stream of decisions is measured while the fault
acts:

- ``healthy``: nothing wrong;
- ``latency_50ms``: every reply delayed 50 ms by a loopback proxy;
- ``hang``: the server frozen with SIGSTOP (connections stay open, nothing answers);
- ``refused``: the server killed (connections refused);
- ``flapping``: the server killed and restarted every second;
- ``malformed``: every stored session value is garbage;
- ``profile_failing``: the server killed and the profile store raising too.

A row: ``decisions``; ``failed`` (decisions that raised or returned no usable result); ``late``
(over budget + 2 ms); ``p50_ms`` ... ``max_ms`` of each decision's own wall time; ``served_by``
(share per tier); ``breaker_transitions``; and ``breaker_open_p99_ms``, the p99 of decisions taken
while the session breaker refused the call (the cost of a decision once it is open). Beside the
rows, ``jitter_probe_max_ms``: the worst lateness of a plain 1 ms sleep in the same run, so that
a reader can tell the machine's stalls from the engine's. The garbage collector is paused while a
row is measured, as ``timeit`` does.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resilience import (
    Affinities,
    Decision,
    Engine,
    MemorySource,
    Outcome,
    RequestContext,
    load_policies,
)
from resilience.testing import LatencyProxy, RecordingSink, RedisServer

__all__ = ["FAULTS", "run"]

ROOT = Path(__file__).resolve().parent.parent
FAULTS = (
    "healthy",
    "latency_50ms",
    "hang",
    "refused",
    "flapping",
    "malformed",
    "profile_failing",
)
SESSIONS = 50
LATE_SLACK = 0.002


def _policy_text(url: str) -> str:
    text = (ROOT / "policies.yaml").read_text()
    marker = "  session_store:\n"
    assert marker in text, "the reference policy declares session_store under sources:"
    return text.replace(
        marker, f'{marker}    redis:\n      url: "{url}"\n      key: "s:{{key}}"\n', 1
    )


def _session_value(n: int) -> bytes:
    now = time.time()
    clicks = [
        {"item": f"i{n}-{k}", "category": ("shoes", "books", "toys")[k % 3], "ts": now - 60 + k}
        for k in range(5)
    ]
    return json.dumps({"clicks": clicks, "event_time": now}).encode()


def _requests() -> list[RequestContext]:
    return [
        RequestContext(user_id=f"u{n}", session_id=f"s{n}", segment="young", request_id=f"r{n}")
        for n in range(SESSIONS)
    ]


class _Flapper:
    """Kills and restarts a server every ``period`` seconds until stopped."""

    def __init__(self, server: RedisServer, period: float) -> None:
        self._server = server
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flapper", daemon=True)

    def _run(self) -> None:
        up = True
        while not self._stop.wait(self._period):
            if up:
                self._server.kill()
            else:
                self._server.start()
                for n in range(SESSIONS):
                    self._server.set(f"s:s{n}", _session_value(n))
            up = not up

    def start(self) -> _Flapper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _summary(
    fault: str,
    mode: str,
    budget: float,
    walls: list[float],
    decisions: list[Decision | None],
    failed: int,
    sink: RecordingSink,
) -> dict[str, Any]:
    ordered = sorted(walls)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    served = Counter(d.trace.served for d in decisions if d is not None)
    open_walls = sorted(
        w
        for w, d in zip(walls, decisions, strict=True)
        if d is not None and d.trace.outcome_of("session") is Outcome.BREAKER_OPEN
    )
    transitions = [n for n in sink.names() if n.startswith("resilience.breaker.")]
    return {
        "fault": fault,
        "mode": mode,
        "decisions": len(walls),
        "failed": failed,
        "late": sum(1 for w in walls if w > budget + LATE_SLACK),
        "p50_ms": round(statistics.median(walls) * 1e3, 3),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": round(ordered[-1] * 1e3, 3),
        "served_by": {k: round(v / len(walls), 4) for k, v in sorted(served.items())},
        "breaker_transitions": len(transitions),
        "breaker_open_decisions": len(open_walls),
        "breaker_open_p99_ms": (
            round(open_walls[min(len(open_walls) - 1, int(0.99 * len(open_walls)))] * 1e3, 3)
            if open_walls
            else None
        ),
    }


def _usable(decision: Decision | None) -> bool:
    return decision is not None and decision.trace.served != ""


def _row(fault: str, mode: str, decisions: int, pace: float) -> dict[str, Any]:
    with RedisServer() as server:
        for n in range(SESSIONS):
            server.set(f"s:s{n}", _session_value(n))
        # Through a proxy that adds no delay until the fault starts, so the warm-up is healthy.
        proxy = LatencyProxy(server.port, 0.0) if fault == "latency_50ms" else None
        url = proxy.url if proxy is not None else server.url
        profiles_ok = MemorySource(
            {f"u{n}": Affinities({"books": 2.0, "toys": 1.0}) for n in range(SESSIONS)}
        )

        def failing_profile(key: str) -> Affinities:
            raise ConnectionError("profile store down")

        sink = RecordingSink()
        policies = load_policies(_policy_text(url))
        sources: dict[str, Callable[..., Any]] = {
            "profile_store": failing_profile if fault == "profile_failing" else profiles_ok,
            "segment_store": MemorySource({"young": Affinities({"electronics": 1.0})}),
        }
        requests = _requests()
        engine = Engine(policies, sources, events=sink, seed=1)

        def inject() -> _Flapper | None:
            sink.events.clear()  # transitions during the fault only
            if proxy is not None:
                proxy.delay = 0.050
            if fault == "hang":
                server.pause()
            elif fault in ("refused", "profile_failing"):
                server.kill()
            elif fault == "malformed":
                for n in range(SESSIONS):
                    server.set(f"s:s{n}", b"\x00\x01 not json")
            return _Flapper(server, 1.0).start() if fault == "flapping" else None

        try:
            if mode == "sync":
                for request in requests * 2:  # warm: pooled connections, a filled stale cache
                    engine.decide(request)
                flapper = inject()
                with _gc_paused():
                    walls, results, failed = _drive_sync(engine, requests, decisions, pace)
            else:
                walls, results, failed, flapper = asyncio.run(
                    _async_row(engine, requests, decisions, pace, inject)
                )
            if flapper is not None:
                flapper.stop()
            if fault == "hang":
                server.resume()
        finally:
            engine.close()
            if proxy is not None:
                proxy.close()
        budget = policies.policies["search"].budget
        return _summary(fault, mode, budget, walls, results, failed, sink)


async def _async_row(
    engine: Engine,
    requests: list[RequestContext],
    count: int,
    pace: float,
    inject: Callable[[], _Flapper | None],
) -> tuple[list[float], list[Decision | None], int, _Flapper | None]:
    # One loop for warm-up, the fault and the drive: asyncio connections belong to their loop.
    for request in requests * 2:  # the first pass also opens the connections
        await engine.adecide(request)
    flapper = inject()
    with _gc_paused():
        walls, results, failed = await _drive_async(engine, requests, count, pace)
    await engine.aclose()
    return walls, results, failed, flapper


def _drive_sync(
    engine: Engine, requests: list[RequestContext], count: int, pace: float
) -> tuple[list[float], list[Decision | None], int]:
    walls: list[float] = []
    results: list[Decision | None] = []
    failed = 0
    for i in range(count):
        request = requests[i % len(requests)]
        start = time.perf_counter()
        try:
            decision: Decision | None = engine.decide(request)
        except Exception:
            decision = None
        walls.append(time.perf_counter() - start)
        results.append(decision)
        failed += not _usable(decision)
        time.sleep(pace)
    return walls, results, failed


async def _drive_async(
    engine: Engine, requests: list[RequestContext], count: int, pace: float
) -> tuple[list[float], list[Decision | None], int]:
    walls: list[float] = []
    results: list[Decision | None] = []
    failed = 0
    for i in range(count):
        request = requests[i % len(requests)]
        start = time.perf_counter()
        try:
            decision: Decision | None = await engine.adecide(request)
        except Exception:
            decision = None
        walls.append(time.perf_counter() - start)
        results.append(decision)
        failed += not _usable(decision)
        await asyncio.sleep(pace)
    return walls, results, failed


def _jitter_probe(samples: int = 200) -> float:
    """The worst lateness, in ms, of a plain 1 ms sleep."""
    worst = 0.0
    for _ in range(samples):
        start = time.perf_counter()
        time.sleep(0.001)
        worst = max(worst, time.perf_counter() - start - 0.001)
    return round(worst * 1e3, 3)


def run(
    *, quick: bool, decisions: int | None = None, faults: tuple[str, ...] = FAULTS
) -> dict[str, Any]:
    """Run the drill; returns ``{"budget_ms", "rows", "jitter_probe_max_ms"}``."""
    # Rows outlast the breaker's open time (5 s) so that half-open probes happen in them; at
    # 2 ms apart, 4,000 decisions take about 9 s, and flapping's 6,000 cover several periods.
    count = decisions if decisions is not None else (1000 if quick else 4000)
    rows = []
    jitter = 0.0
    for mode in ("sync", "async"):
        for fault in faults:
            n = count * 3 // 2 if fault == "flapping" and decisions is None else count
            rows.append(_row(fault, mode, n, pace=0.002))
            jitter = max(jitter, _jitter_probe(50 if quick else 200))
    budget = load_policies((ROOT / "policies.yaml").read_text()).policies["search"].budget
    return {"budget_ms": budget * 1e3, "rows": rows, "jitter_probe_max_ms": jitter}
