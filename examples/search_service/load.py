"""Drive the example service on loopback and report latency with Redis healthy and stopped.

    .venv/bin/python -m examples.search_service.load            # about 35 s
    .venv/bin/python -m examples.search_service.load --quick    # a few seconds
    .venv/bin/python -m examples.search_service.load --json report.json

It starts everything itself and stops everything, also on an error or Ctrl-C: a private
``redis-server`` on a free port (never the shared one), with a password and the sessions
seeded; the service under uvicorn on a free loopback port (a subprocess, configured through
secret files); then an open-loop load at a fixed rate, phase by phase:

1. ``redis healthy``;
2. ``redis stopped``: the redis-server is frozen with SIGSTOP (connections stay open, nothing
   answers: the worst kind of outage for a client);
3. ``redis resumed``: SIGCONT, and the engine's breaker lets the store back in.

Latency is measured from the moment each request was due to be sent (so a slow server cannot
hide its queueing by slowing the generator down), on the client, and includes HTTP. The
``decide`` columns are the engine's own time per decision, from the ``Server-Timing`` header.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from resilience.events import ENGINE_CLOSED
from resilience.testing import RedisServer

from .catalog import CATEGORIES, COLOURS, SEGMENTS, SESSIONS, USERS, session_value

ROOT = Path(__file__).resolve().parents[2]
APP = "examples.search_service.app:create_app"
CLIENT_TIMEOUT = 5.0


@dataclass
class Phase:
    """What one phase of load measured."""

    name: str
    rate: float
    latencies_ms: list[float] = field(default_factory=list)
    decide_ms: list[float] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    session_outcomes: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        """The phase as plain data."""
        ok = len(self.latencies_ms)
        return {
            "phase": self.name,
            "target_rps": self.rate,
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "throughput_rps": round(self.requests / self.elapsed, 1) if self.elapsed else 0.0,
            "latency_ms": _quantiles(self.latencies_ms),
            "decide_ms": _quantiles(self.decide_ms),
            "served_by": {k: round(v / ok, 4) for k, v in self.served.most_common()} if ok else {},
            "session_outcomes": self.session_outcomes,
        }


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 3)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    return path


def start_redis(password: str) -> RedisServer:
    """A private redis-server with ``password`` and the sessions seeded.

    The password is set with CONFIG SET, so that it never shows on a command line (``ps``).
    """
    server = RedisServer().start()
    try:
        client = redis.Redis(port=server.port, socket_timeout=2)
        client.config_set("requirepass", password)
        client.close()
        client = redis.Redis(port=server.port, password=password, socket_timeout=2)
        now = time.time()
        with client.pipeline(transaction=False) as pipe:
            for n in range(SESSIONS):
                pipe.set(f"session:s-{n}", session_value(n, now))
            pipe.execute()
        client.close()
    except BaseException:
        server.stop()
        raise
    return server


def start_service(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """uvicorn with the app, on ``127.0.0.1:port``, its output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                APP,
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this script, which stops it in order
        )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn's graceful shutdown: the app's lifespan closes the engine), then
    SIGKILL if it is still there after 10 s. Idempotent."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


async def wait_ready(
    client: httpx.AsyncClient, process: subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode} at start")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/metrics")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the service did not answer within {timeout:.0f} s")


def _params(rng: random.Random) -> dict[str, str]:
    """One user's search: most carry a seeded session, some none; queries vary."""
    params = {
        "q": rng.choice((*COLOURS, *CATEGORIES, "")),
        "user": f"u-{rng.randrange(USERS)}",
        "segment": rng.choice(SEGMENTS),
        "n": "10",
    }
    if rng.random() < 0.9:
        params["session"] = f"s-{rng.randrange(SESSIONS)}"
    return params


async def _one(client: httpx.AsyncClient, due: float, params: dict[str, str], phase: Phase) -> None:
    loop = asyncio.get_running_loop()
    try:
        response = await client.get("/search", params=params)
    except httpx.HTTPError as exc:
        phase.errors[type(exc).__name__] += 1
        return
    if response.status_code != 200:
        phase.errors[f"http {response.status_code}"] += 1
        return
    phase.latencies_ms.append((loop.time() - due) * 1000)
    phase.served[response.json()["served"]] += 1
    timing = response.headers.get("server-timing", "")
    if "dur=" in timing:
        phase.decide_ms.append(float(timing.rsplit("dur=", 1)[1]))


async def run_phase(
    client: httpx.AsyncClient, phase: Phase, duration: float, rng: random.Random
) -> Phase:
    """Send ``phase.rate`` requests a second for ``duration`` seconds, each at its due time
    whatever the earlier ones are doing (open loop), and wait for all of them."""
    loop = asyncio.get_running_loop()
    before = await session_outcomes(client)
    start = loop.time()
    tasks = []
    for n in range(int(phase.rate * duration)):
        due = start + n / phase.rate
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(_one(client, due, _params(rng), phase)))
    await asyncio.gather(*tasks)
    phase.elapsed = loop.time() - start
    after = await session_outcomes(client)
    phase.session_outcomes = {
        k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)
    }
    return phase


async def session_outcomes(client: httpx.AsyncClient) -> dict[str, int]:
    """The session tier's outcome counters, from /metrics."""
    counts: dict[str, int] = {}
    for sample in await _samples(client, "resilience_step_outcomes_total"):
        if sample.labels.get("step") == "session":
            counts[sample.labels["outcome"]] = int(sample.value)
    return counts


async def _samples(client: httpx.AsyncClient, name: str) -> list[Any]:
    text = (await client.get("/metrics")).text
    families = text_string_to_metric_families(text)
    return [sample for family in families for sample in family.samples if sample.name == name]


async def drive(
    base_url: str,
    process: subprocess.Popen[bytes],
    server: RedisServer,
    *,
    rate: float,
    duration: float,
    warmup: float,
    admin_token: str,
) -> dict[str, Any]:
    """Run the phases against the started service; return the report."""
    rng = random.Random(42)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT, limits=limits
    ) as client:
        await wait_ready(client, process)
        budget = await _samples(client, "resilience_policy_budget_seconds")
        admin = {
            "no_token": (await client.get("/admin/flags")).status_code,
            "wrong_token": (
                await client.get("/admin/flags", headers={"Authorization": "Bearer wrong"})
            ).status_code,
        }
        await run_phase(client, Phase("warm-up", rate), warmup, rng)
        # This process's own garbage collections would pause its clock-keeping: keep what
        # exists now out of them (the server does the same, app.py).
        gc.collect()
        gc.freeze()
        phases = [await run_phase(client, Phase("redis healthy", rate), duration, rng)]
        server.pause()
        try:
            phases.append(await run_phase(client, Phase("redis stopped", rate), duration, rng))
            flags = await _flag_sources(client, admin_token)
        finally:
            server.resume()
        phases.append(await run_phase(client, Phase("redis resumed", rate), duration, rng))
    return {
        "rate_rps": rate,
        "phase_seconds": duration,
        "budget_ms": round(budget[0].value * 1000, 3) if budget else float("nan"),
        "admin_without_token": admin["no_token"],
        "admin_with_wrong_token": admin["wrong_token"],
        "flag_sources_while_stopped": flags,
        "phases": [p.summary() for p in phases],
    }


async def _flag_sources(client: httpx.AsyncClient, token: str) -> dict[str, bool]:
    """Which flag sources the service could read, as its admin route says."""
    response = await client.get("/admin/flags", headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return {s["source"]: s["healthy"] for s in response.json()["sources"]}


def render(report: dict[str, Any]) -> str:
    """The report as a table."""
    head = (
        f"{'phase':<14} {'requests':>8} {'errors':>6} {'rps':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'decide p50/p99 ms':>18}  served by"
    )
    lines = [
        f"{report['rate_rps']:g} requests/s for {report['phase_seconds']:g} s a phase, "
        f"budget {report['budget_ms']:g} ms; latency measured on the client, from each "
        f"request's due time",
        head,
        "-" * len(head),
    ]
    for p in report["phases"]:
        lat, dec = p["latency_ms"], p["decide_ms"]
        served = ", ".join(f"{k} {v:.0%}" for k, v in p["served_by"].items())
        lines.append(
            f"{p['phase']:<14} {p['requests']:>8} {p['errors']:>6} {p['throughput_rps']:>6.0f} "
            f"{lat['p50']:>7.2f} {lat['p99']:>7.2f} {lat['max']:>7.2f} "
            f"{dec['p50']:>8.2f} / {dec['p99']:<7.2f}  {served}"
        )
    lines.append("")
    for p in report["phases"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in p["session_outcomes"].items())
        lines.append(f"session tier, {p['phase']}: {outcomes}")
    lines.append(
        f"admin route: no token {report['admin_without_token']}, wrong token "
        f"{report['admin_with_wrong_token']}; flag sources readable while Redis was stopped: "
        f"{report['flag_sources_while_stopped']}"
    )
    lines.append(
        f"secrets in the service's log: {report['secrets_in_log']}; "
        f"service shutdown: {report['service_shutdown']}"
    )
    return "\n".join(lines)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: everything started is stopped


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m examples.search_service.load``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds in all")
    parser.add_argument("--rate", type=float, help="requests per second (default 200, quick 100)")
    parser.add_argument("--duration", type=float, help="seconds a phase (default 10, quick 1.5)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rate = args.rate or (100.0 if args.quick else 200.0)
    duration = args.duration or (1.5 if args.quick else 10.0)
    warmup = 0.5 if args.quick else 2.0

    signal.signal(signal.SIGTERM, _terminate)
    try:
        report = run(rate=rate, duration=duration, warmup=warmup)
    except KeyboardInterrupt:
        print("interrupted: everything this script started is stopped", file=sys.stderr)
        return 130
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    failed = (
        report["secrets_in_log"]
        or report["service_shutdown"] != "clean"
        or any(p["errors"] for p in report["phases"])
    )
    return 1 if failed else 0


def run(*, rate: float, duration: float, warmup: float) -> dict[str, Any]:
    """Start Redis and the service, drive them, stop everything; return the report."""
    password, token = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="search-load-")))
        server = start_redis(password)
        stack.callback(server.stop)
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SEARCH_")},
            "SEARCH_REDIS_URL": server.url,
            "SEARCH_REDIS_PASSWORD_FILE": str(_secret_file(directory, "redis-password", password)),
            "SEARCH_ADMIN_TOKEN_FILE": str(_secret_file(directory, "admin-token", token)),
        }
        log = directory / "service.log"
        process = start_service(port, env, log)
        stack.callback(stop_process, process)
        stack.callback(server.resume)  # runs first: a frozen Redis must not stall the shutdown
        try:
            report = asyncio.run(
                drive(
                    f"http://127.0.0.1:{port}",
                    process,
                    server,
                    rate=rate,
                    duration=duration,
                    warmup=warmup,
                    admin_token=token,
                )
            )
        except BaseException as exc:
            server.resume()
            stop_process(process)
            if not isinstance(exc, KeyboardInterrupt):
                sys.stderr.write(f"the service's log:\n{_redacted(log, password, token)}\n")
            raise
        stop_process(process)  # the whole log, shutdown included, is checked for secrets
        text = log.read_text(errors="replace")
        report["secrets_in_log"] = password in text or token in text
        # uvicorn exits by re-raising the SIGTERM it handled; the engine says it closed
        graceful = process.returncode in {0, -signal.SIGTERM} and ENGINE_CLOSED in text
        report["service_shutdown"] = "clean" if graceful else f"exit {process.returncode}"
    return report


def _redacted(log: Path, *secret_values: str) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    for value in secret_values:
        text = text.replace(value, "<redacted>")
    return text[-4000:]


if __name__ == "__main__":
    sys.exit(main())
