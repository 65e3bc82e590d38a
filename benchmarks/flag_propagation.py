"""Kill switches across real processes: how fast a flag flipped in Redis reaches a fleet.

``python -m benchmarks flags [--quick] [--json PATH]``: two worker processes
(:mod:`benchmarks.flag_worker`) run engines that read their flags from one private
redis-server. This process flips the policy's kill switch through :class:`RedisFlagStore`
(what ``resilience flags set`` does) and records, per flip and per worker, the time from the
write to the first decision that obeys it (all on one machine's wall clock).

The baseline, measured in the same run against the same server, is Redis itself: a PUBLISH
and its receipt by a subscriber in this process. The flag path adds the write script, the
feed's version read, the re-plan and the worker's decision loop (0.5 ms) on top.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from resilience._flags_redis import RedisFlagStore
from resilience.testing import RedisServer

__all__ = ["policy_text", "run", "start_worker"]


def policy_text(url: str) -> str:
    """A small policy whose flags come from the Redis at ``url``."""
    return f"""
version: 1
default_policy: search
settings:
  flags:
    env_prefix: null
    redis:
      url: "{url}"
      reread_every: 1s
policies:
  search:
    chain:
      - type: profile_only
        source: profile_store
      - unpersonalized
"""


class Worker:
    """A worker process and the lines it printed, read by a thread of ours."""

    def __init__(self, path: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.flag_worker", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.lines: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(json.loads(line))
                self._changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float, after: int = 0) -> dict[str, Any] | None:
        """The first line from index ``after`` on that satisfies ``predicate``, or ``None``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_worker(path: str) -> Worker:
    """Start a worker on the policy file at ``path`` and wait until it decides."""
    worker = Worker(path)
    if worker.wait_for(lambda line: line.get("ready"), 60) is None:
        worker.stop()
        raise RuntimeError("the flag worker did not start")
    return worker


def _pubsub_floor(server: RedisServer, samples: int) -> list[float]:
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(server.url)
    pubsub = client.pubsub()
    pubsub.subscribe("floor")
    pubsub.get_message(timeout=1.0)  # the subscription confirmation
    delays = []
    for _ in range(samples):
        sent = time.time()
        client.publish("floor", "x")
        message = None
        while message is None or message.get("type") != "message":
            message = pubsub.get_message(timeout=1.0)
        delays.append(time.time() - sent)
    pubsub.close()
    client.close()
    return delays


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 2),
        "max_ms": round(ordered[-1] * 1e3, 2),
    }


def run(*, quick: bool) -> dict[str, Any]:
    """Flip the kill switch repeatedly; measure propagation to two processes."""
    flips = 10 if quick else 50
    with RedisServer() as server, tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "policies.yaml")
        Path(path).write_text(policy_text(server.url))
        workers = [start_worker(path) for _ in range(2)]
        store = RedisFlagStore.from_url(server.url, timeout=1.0)
        delays: list[float] = []
        try:
            for flip in range(flips):
                value, expect = ("off", "switched_off") if flip % 2 == 0 else ("on", "primary")
                marks = [len(w.lines) for w in workers]
                sent = time.time()
                store.set("search", value, reason=f"benchmark flip {flip}", by="benchmark")
                for worker, mark in zip(workers, marks, strict=True):
                    line = worker.wait_for(
                        lambda seen, want=expect: seen.get("reason") == want, 10, mark
                    )
                    if line is None:
                        raise RuntimeError(f"flip {flip} never reached a worker")
                    delays.append(line["t"] - sent)
            floor = _pubsub_floor(server, flips * 2)
        finally:
            store.close()
            for worker in workers:
                worker.stop()
    propagation = _spread(delays)
    baseline = _spread(floor)
    return {
        "processes": 2,
        "flips": flips,
        "propagation": propagation,
        "pubsub_floor": baseline,
        "ratio_p50": round(propagation["p50_ms"] / max(baseline["p50_ms"], 1e-3), 1),
        "goal_p99_ms": 1000.0,
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
