"""Test kit: a controllable clock, fault-injecting sources and a recording event sink.

Importable without pytest. The pytest fixtures built on these live in
:mod:`resilience.testing.pytest_plugin`, which pytest loads automatically once this package is
installed (entry point ``pytest11``). See ``docs/testing.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from resilience._flag_feed import FeedSnapshot, FlagRecord

from .contract import assert_plugin, plugin_problems
from .traces import assert_trace, trace_problems

__all__ = [
    "FakeClock",
    "FaultySource",
    "HandFlags",
    "LatencyProxy",
    "RecordingSink",
    "RedisClusterNodes",
    "RedisServer",
    "assert_plugin",
    "assert_trace",
    "plugin_problems",
    "trace_problems",
    "wait_for",
    "wait_for_child",
]


class FakeClock:
    """Both clocks of :class:`resilience.Clock`, moved only by :meth:`advance`.

    Args:
        wall: the wall-clock reading to start at (seconds since the epoch).
        monotonic: the monotonic reading to start at.
    """

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1_000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock does not go back; advance by a non-negative amount")
        with self._lock:
            self._monotonic += seconds
            self._wall += seconds

    def sleep(self, seconds: float) -> None:
        """Sleep on this clock: advance it (retry backoffs use it)."""
        self.advance(seconds)

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock alone (as NTP may); the monotonic clock is unaffected."""
        self._wall = wall


class RecordingSink:
    """An event sink that keeps every event, for assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))

    def names(self) -> list[str]:
        """The names of the events recorded, in order."""
        return [name for name, _ in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        """The fields of every event called ``name``."""
        return [fields for event, fields in self.events if event == name]


class HandFlags:
    """A flag source the test drives by hand: pass it as ``Engine(..., flag_feeds=[...])``.

    It stands for any source (``name`` is ``redis``, ``file``, ``openfeature`` or ``env``), so a
    test can check precedence between sources, or what the engine does when one goes stale::

        redis = HandFlags("redis", {"search": "off"})
        engine = make_engine(text, sources, flag_feeds=[redis])
        redis.unreachable()          # the last values hold, reported stale
        redis.set("search", "on")    # back, with a new value

    Args:
        name: the source it plays.
        flags: what it holds at start, flag key -> value.
    """

    def __init__(self, name: str, flags: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.flags: dict[str, str] = dict(flags or {})
        self.refreshes = 0
        self.stopped = False
        self._deliver: Callable[[FeedSnapshot], None] | None = None
        self._readable = True
        self._error = ""

    def start(
        self, deliver: Callable[[FeedSnapshot], None], keys: Callable[[], Sequence[str]]
    ) -> None:
        self._deliver = deliver
        if self._readable:
            self._send()
        else:
            deliver(FeedSnapshot(self.name, None, self._error))

    def set(self, key: str, value: str) -> None:
        """Hold ``value`` for ``key`` and deliver the whole snapshot (the source is readable)."""
        self.flags[key] = value
        self._readable = True
        self._send()

    def clear(self, key: str) -> None:
        """Stop holding ``key`` and deliver the snapshot."""
        self.flags.pop(key, None)
        self._readable = True
        self._send()

    def unreachable(self, error: str = "connection refused") -> None:
        """Become unreadable: deliver ``None`` with ``error`` (the board keeps the last values).
        Before the engine starts, the source starts unreadable."""
        self._readable = False
        self._error = error
        if self._deliver is not None:
            self._deliver(FeedSnapshot(self.name, None, error))

    def refresh(self) -> None:
        self.refreshes += 1
        if self._readable:
            self._send()

    def stop(self) -> None:
        self.stopped = True
        self._deliver = None

    def _send(self) -> None:
        if self._deliver is not None:
            records = {key: FlagRecord(value) for key, value in self.flags.items()}
            self._deliver(FeedSnapshot(self.name, records))


class FaultySource:
    """A source that serves ``data`` until told to fail, and counts its calls.

    Modes (each returns ``self``, so they chain): :meth:`healthy`, :meth:`misses`, :meth:`raises`,
    :meth:`slow`, :meth:`hangs`, :meth:`garbage`. Use the instance as a sync source, or
    :attr:`async_` as an async one; both share the mode and the counters.

    With a :class:`FakeClock`, latency and sync hangs advance the clock instead of sleeping, so
    the engine sees the overrun and the test runs in no time. An async hang waits until the
    engine cancels it at its deadline.

    Args:
        data: key -> value served while healthy; an unknown key is a miss.
        clock: the fake clock to advance; ``None`` sleeps for real.
    """

    #: How far a sync hang moves a fake clock (or how long it blocks a real one at most).
    HANG_SECONDS = 3.0

    def __init__(self, data: Mapping[str, Any] | None = None, clock: FakeClock | None = None):
        self.data: dict[str, Any] = dict(data or {})
        self.clock = clock
        self.calls = 0
        self.cancelled = 0
        self._mode = "healthy"
        self._latency = 0.0
        self._error: BaseException = ConnectionError("injected fault")
        self._garbage: Any = b"\x00not-a-record"
        self._release = threading.Event()

    # --- modes --------------------------------------------------------------------------------

    def healthy(self) -> FaultySource:
        """Serve ``data`` again, at once."""
        self._mode, self._latency = "healthy", 0.0
        self._release.set()
        self._release = threading.Event()
        return self

    def misses(self) -> FaultySource:
        """Return ``None`` for every key."""
        self._mode = "miss"
        return self

    def raises(self, error: BaseException | None = None) -> FaultySource:
        """Raise ``error`` (a :class:`ConnectionError` by default) on every call."""
        self._mode = "error"
        if error is not None:
            self._error = error
        return self

    def slow(self, seconds: float) -> FaultySource:
        """Serve ``data`` after ``seconds``."""
        self._mode, self._latency = "healthy", seconds
        return self

    def hangs(self) -> FaultySource:
        """Never answer in time: sync calls block for :attr:`HANG_SECONDS` (advancing a fake
        clock instead); async calls wait until cancelled."""
        self._mode = "hang"
        return self

    def garbage(self, value: Any = None) -> FaultySource:
        """Return ``value`` (bytes by default): something that is not a valid record."""
        self._mode = "garbage"
        if value is not None:
            self._garbage = value
        return self

    # --- the source ---------------------------------------------------------------------------

    def __call__(self, key: str) -> Any:
        self.calls += 1
        mode = self._mode
        if mode == "hang":
            self._wait(self.HANG_SECONDS)
            return self.data.get(key)
        if self._latency:
            self._wait(self._latency)
        return self._answer(key, mode)

    async def async_(self, key: str) -> Any:
        """The same source, as a coroutine function."""
        self.calls += 1
        mode = self._mode
        try:
            if mode == "hang":
                await asyncio.Event().wait()
            if self._latency:
                if self.clock is not None:
                    self.clock.advance(self._latency)
                    await asyncio.sleep(0)
                else:
                    await asyncio.sleep(self._latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self._answer(key, mode)

    def _answer(self, key: str, mode: str) -> Any:
        if mode == "error":
            raise self._error
        if mode == "miss":
            return None
        if mode == "garbage":
            return self._garbage
        return self.data.get(key)

    def _wait(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            self._release.wait(seconds)  # healthy() releases a blocked call early


class RedisServer:
    """A private ``redis-server`` on a free loopback port, for tests and drills.

    Never touches a shared server: it starts its own process (no persistence) and stops it.
    Faults: :meth:`pause` (SIGSTOP: the server hangs, connections stay open), :meth:`resume`,
    :meth:`kill` (connection refused) and :meth:`start` again on the same port.

    Args:
        executable: the ``redis-server`` binary.
        password: require this password (``requirepass``), also after a restart. It reaches
            the server on its standard input, never on its command line (``ps`` shows that),
            and is not in :attr:`url`.

    Raises:
        FileNotFoundError: ``redis-server`` is not installed.
    """

    def __init__(
        self,
        executable: str = "redis-server",
        *,
        cluster_dir: str | None = None,
        password: str | None = None,
    ) -> None:
        found = shutil.which(executable)
        if found is None:
            raise FileNotFoundError(f"{executable} is not installed (apt-get install redis-server)")
        if password is not None and not password:
            raise ValueError("a password cannot be empty (leave it out for none)")
        self.executable = found
        # A cluster node also listens on port + 10000 for its bus, so its port stays below 55536.
        self.port = _free_port() if cluster_dir is None else _free_cluster_port()
        self.process: Any = None
        self.password = password
        self._cluster_dir = cluster_dir  # a cluster node keeps its nodes.conf here

    def __repr__(self) -> str:
        guarded = ", password=***" if self.password is not None else ""
        return f"RedisServer(port={self.port}{guarded})"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.process is not None:
            raise RuntimeError(f"the redis-server on port {self.port} is already running")
        # "-" first: the configuration (the password) comes on standard input.
        arguments = [
            self.executable,
            "-",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]
        if self._cluster_dir is not None:
            arguments += [
                "--cluster-enabled",
                "yes",
                "--dir",
                self._cluster_dir,
                "--cluster-config-file",
                f"nodes-{self.port}.conf",
            ]
        self.process = subprocess.Popen(
            arguments,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        config = b""
        if self.password is not None:
            config = b'requirepass "%s"\n' % _config_escaped(self.password.encode())
        self.process.stdin.write(config)
        self.process.stdin.close()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                        if self._command(sock, b"PING") == b"+PONG":
                            return self
                except OSError:
                    time.sleep(0.02)
            raise RuntimeError(f"redis-server did not answer on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _command(self, sock: socket.socket, *words: bytes) -> bytes:
        """Send one command on ``sock`` (logged in first if the server has a password) and
        return the first line of its reply."""
        commands = [words]
        if self.password is not None:
            commands.insert(0, (b"AUTH", self.password.encode()))
        sock.sendall(b"".join(_resp(*command) for command in commands))
        reply = b""
        while reply.count(b"\r\n") < len(commands):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        lines = reply.split(b"\r\n")
        if self.password is not None and lines[0] != b"+OK":
            raise RuntimeError(f"redis-server on port {self.port} refused the password")
        return lines[len(commands) - 1]

    def set(self, key: str, value: bytes | str) -> None:
        """Store ``value`` under ``key`` (a plain SET over a fresh connection)."""
        data = value.encode() if isinstance(value, str) else value
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            if self._command(sock, b"SET", key.encode(), data) != b"+OK":
                raise RuntimeError(f"SET {key} failed")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Stop the server at once: later connections are refused."""
        if self.process is not None:
            self.resume()
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        self.kill()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _resp(*words: bytes) -> bytes:
    """One command in Redis's wire protocol."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def _config_escaped(value: bytes) -> bytes:
    """``value`` for a double-quoted string of redis.conf: every byte as ``\\xHH``, so that
    quotes, backslashes, spaces and newlines in it cannot end the string."""
    return b"".join(b"\\x%02x" % byte for byte in value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LatencyProxy:
    """A loopback TCP proxy that delays every reply chunk by ``delay`` seconds.

    Put it between a client and a real server to inject latency without touching either.
    Threads are daemons and stop with :meth:`close`.

    Args:
        target_port: the port of the real server on 127.0.0.1.
        delay: seconds added before each chunk from the server reaches the client; may be
            changed while it runs.
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="latency-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` for the proxy's port."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            self._pump_both(client, upstream)

    def _pump_both(self, client: socket.socket, upstream: socket.socket) -> None:
        """Carry bytes both ways between a client and its upstream, replies delayed."""
        for source, sink, delayed in ((client, upstream, False), (upstream, client, True)):
            threading.Thread(
                target=self._pump,
                args=(source, sink, delayed),
                name=f"{type(self).__name__.lower()}-pump",
                daemon=True,
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, delayed: bool) -> None:
        try:
            source.settimeout(None)
            while not self._closed.is_set():
                chunk = source.recv(65536)
                if not chunk:
                    break
                if delayed and self.delay:  # read each time: the delay may change mid-run
                    time.sleep(self.delay)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and cut every proxied connection; the proxy's threads then end."""
        self._closed.set()
        # shutdown() before close(): closing a socket does not wake a thread blocked in its
        # accept() or recv(), which would otherwise outlive the proxy.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for end in self._sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    end.close()
            self._sockets.clear()

    def __enter__(self) -> LatencyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisClusterNodes:
    """A private Redis Cluster of three primaries (no replicas) on free loopback ports.

    Args:
        nodes: how many primaries (three at least, as ``redis-cli --cluster create`` requires).

    Raises:
        FileNotFoundError: ``redis-server`` or ``redis-cli`` is not installed.
    """

    def __init__(self, nodes: int = 3) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed (apt-get install redis-tools)")
        self._cli = cli
        self._dir = tempfile.TemporaryDirectory(prefix="resilience-cluster-")
        self.servers = [RedisServer(cluster_dir=self._dir.name) for _ in range(nodes)]

    @property
    def url(self) -> str:
        """A URL of one node; the cluster client discovers the others."""
        return self.servers[0].url

    def start(self, timeout: float = 20.0) -> RedisClusterNodes:
        """Start the nodes, join them into a cluster and wait until it serves every slot."""
        for server in self.servers:
            server.start()
        addresses = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run(
            [
                self._cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [self._cli, "-p", str(s.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                ).stdout
                for s in self.servers
            ]
            if all("cluster_state:ok" in state for state in states):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def set(self, key: str, value: bytes | str) -> None:
        """Store ``value`` under ``key`` on the node that owns its slot."""
        data = value.decode() if isinstance(value, bytes) else value
        subprocess.run(
            [self._cli, "-c", "-p", str(self.servers[0].port), "-x", "set", key],
            input=data,
            text=True,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=5,
        )

    def stop(self) -> None:
        """Stop every node and remove their files."""
        for server in self.servers:
            server.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisClusterNodes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_cluster_port() -> int:

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 55_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; returns whether it held.

    For tests of background work (a fleet exchange, a cluster's slot discovery): bounded, so a
    test that waits on something that never happens fails instead of hanging.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def wait_for_child(pid: int, timeout: float) -> int | None:
    """Wait for the forked child ``pid`` to exit; its exit code, or ``None`` if it did not
    exit within ``timeout`` seconds (then it is killed, so that no test leaves it behind)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        return None
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
