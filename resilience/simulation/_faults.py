"""Faults injected into the world's stores and stream, and the stores that suffer them.

Faults act on *sources* only: a store answers late, raises, hangs or flaps; the stream
processor falls behind. What the engine's breakers and guards make of that is theirs to decide;
the simulator never forces their state.

Latency is virtual: a read advances the world's :class:`~resilience.testing.FakeClock` by its
latency, inside the call, as a network read would take that long. Reads take the ``timeout``
keyword the engine passes (the seconds the step has left), as a client with its socket timeout
set from the budget would: a read slower than that advances the clock by ``timeout`` only and
raises :class:`TimeoutError`.

With ``--redis``, the session store is a real Redis instead (:class:`RedisSessions`): its faults
are injected on the wire by a :class:`FaultProxy`, its reads take real time, and the run's
clock is a :class:`SkipClock` (real elapsed time plus the virtual time skipped).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from resilience._model import SessionState
from resilience._redis import RedisOptions, RedisSessionStore, SessionFormat, no_handshake
from resilience._secrets import redact_url
from resilience.testing import LatencyProxy

from ._scenario import Flapping, Hang, Latency, Outage, StreamLag

__all__ = [
    "HANG_SECONDS",
    "FaultProxy",
    "RedisLostError",
    "RedisSessions",
    "SimClock",
    "SimStore",
    "SkipClock",
    "StoreFaults",
    "StreamFaults",
    "encode_session",
]

#: How long a hung read would take: far beyond any budget, so it always ends at the timeout.
HANG_SECONDS = 3.0

#: Spread of healthy latency: log-normal with this sigma around the store's median.
LATENCY_SIGMA = 0.5


class SimClock(Protocol):
    """The clock a run drives: :class:`~resilience.testing.FakeClock` (virtual) or
    :class:`SkipClock` (``--redis``)."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


class StoreFaults:
    """The faults scheduled on one store, asked for the state at a virtual time."""

    def __init__(self, events: Sequence[Latency | Outage | Hang | Flapping], base: float) -> None:
        self.events = sorted(events, key=lambda e: e.at)
        self.base = base

    def state(self, t: float) -> tuple[str, float]:
        """``("down", 0)``, ``("hang", 0)`` or ``("up", median latency)`` at ``t`` seconds."""
        down = hang = False
        latency = self.base
        for event in self.events:
            if event.at > t:
                break
            if t >= event.end:
                continue
            if isinstance(event, Outage):
                down = True
            elif isinstance(event, Hang):
                hang = True
            elif isinstance(event, Flapping):
                if (t - event.at) % (event.down + event.up) < event.down:
                    down = True
            else:
                latency = max(latency, event.latency)
        if down:
            return "down", 0.0
        if hang:
            return "hang", 0.0
        return "up", latency


class StreamFaults:
    """The stream processor's lag over time: ``delay`` normally, more while a ``stream_lag``
    event holds it back (overlapping events: the largest lag)."""

    def __init__(self, events: Sequence[StreamLag], delay: float) -> None:
        self.events = sorted(events, key=lambda e: e.at)
        self.delay = delay

    def lag(self, t: float) -> float:
        """Seconds the processor is behind at ``t``."""
        lag = self.delay
        for event in self.events:
            if event.at > t:
                break
            if t >= event.end:
                continue
            behind_until = event.at + event.lasting
            if t < behind_until:
                value = min(self.delay + (t - event.at), event.lag)
            else:
                peak = min(self.delay + event.lasting, event.lag)
                done = (t - behind_until) / event.catch_up
                value = peak + (self.delay - peak) * done
            lag = max(lag, value)
        return lag


class SimStore:
    """A store of the world: a lookup with latency and faults on the virtual clock.

    Args:
        name: the source name it is bound under.
        lookup: key -> record or ``None``.
        faults: what happens to it, and when.
        clock: the world's clock (advanced by each read's latency).
        start: the monotonic reading at virtual time 0.
        rng: its own random stream (latency jitter), so one store's reads never shift
            another's draws.
    """

    def __init__(
        self,
        name: str,
        lookup: Callable[[str], Any],
        faults: StoreFaults,
        clock: SimClock,
        start: float,
        rng: random.Random,
    ) -> None:
        self.name = name
        self._lookup = lookup
        self._faults = faults
        self._clock = clock
        self._start = start
        self._rng = rng
        self.calls = 0
        self.failures = 0

    def __call__(self, key: str, timeout: float | None = None) -> Any:
        self.calls += 1
        clock = self._clock
        state, median = self._faults.state(clock.monotonic() - self._start)
        if state == "down":
            self.failures += 1
            raise ConnectionError(f"{self.name} is down (injected outage)")
        latency = (
            HANG_SECONDS
            if state == "hang"
            else median * math.exp(self._rng.gauss(0.0, LATENCY_SIGMA))
        )
        if timeout is not None and latency > timeout:
            clock.advance(max(timeout, 0.0))
            self.failures += 1
            raise TimeoutError(f"{self.name} did not answer within {timeout * 1e3:.1f}ms")
        clock.advance(latency)
        return self._lookup(key)


# --- runs against a real Redis (--redis URL) -----------------------------------------------------


class SkipClock:
    """The clock of a ``--redis`` run: real elapsed time plus the virtual time skipped.

    Real I/O (a read from Redis) takes the real time it takes, and the clock sees it; the gaps
    between searches, and the injected latency of the stores that stay simulated, are skipped
    (:meth:`advance`) rather than waited for. So the scenario's timeline, in virtual seconds,
    still decides when faults happen, while a decision's latency on this clock is real time
    plus the simulated stores' latency, and the engine's deadlines hold against both.

    Args:
        wall: the wall-clock reading at the start.
        monotonic: the monotonic reading at the start.
    """

    def __init__(self, wall: float, monotonic: float) -> None:
        self._origin: float | None = None
        self._wall = wall
        self._monotonic = monotonic
        self._skipped = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start counting real time. Until then the clock stands still (but for skips): the
        run's set-up (world, engine) takes no time on the scenario's timeline."""
        if self._origin is None:
            self._origin = time.perf_counter()

    def real(self) -> float:
        """Real seconds since :meth:`start`."""
        origin = self._origin
        return 0.0 if origin is None else time.perf_counter() - origin

    @property
    def skipped(self) -> float:
        """Virtual seconds skipped so far."""
        return self._skipped

    def monotonic(self) -> float:
        return self._monotonic + self.real() + self._skipped

    def wall(self) -> float:
        return self._wall + self.real() + self._skipped

    def advance(self, seconds: float) -> None:
        """Skip ``seconds`` of virtual time (the clock jumps; nothing waits)."""
        if seconds < 0:
            raise ValueError("a clock does not go back; advance by a non-negative amount")
        with self._lock:
            self._skipped += seconds

    def sleep(self, seconds: float) -> None:
        """A retry's backoff: skipped, as any wait on the scenario's timeline is."""
        self.advance(seconds)


class FaultProxy(LatencyProxy):
    """A :class:`~resilience.testing.LatencyProxy` to any host that can also be *down*.

    ``delay`` holds each reply chunk (latency; a hang is a delay far beyond any timeout). While
    :attr:`down`, connections it accepts are reset at once and those it carried are cut: a
    client sees the connection refused or reset, as it would with the server gone.

    Args:
        host: the real server's host.
        port: the real server's port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host  # set before the accept thread starts (in LatencyProxy.__init__)
        self.down = False
        super().__init__(port, 0.0)

    def set_down(self, down: bool) -> None:
        """Go down (reset new connections, cut open ones) or come back up."""
        with self._lock:
            if down == self.down:
                return
            self.down = down
            if not down:
                return
            cut, self._sockets = self._sockets, []
        for end in cut:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                end.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=2)
            except OSError:
                _reset(client)
                continue
            for end in (client, upstream):
                with contextlib.suppress(OSError):
                    end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self.down:  # it went down while this one was connecting
                    _reset(client)
                    upstream.close()
                    continue
                self._sockets += [client, upstream]
            self._pump_both(client, upstream)


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (RST), as a refused or dropped connection looks."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def encode_session(state: SessionState, fmt: SessionFormat) -> bytes:
    """``state`` as the stream processor writes it for :class:`RedisSessionStore` (the layout
    :func:`~resilience._redis.decode_session` reads)."""
    scale = 1e3 if fmt.time_unit == "ms" else 1.0
    data: dict[str, Any] = {
        fmt.clicks: [
            {fmt.item: c.item_id, fmt.category: c.category, fmt.time: c.at * scale}
            for c in state.clicks
        ]
    }
    if state.event_time is not None:
        data[fmt.event_time] = state.event_time * scale
    return json.dumps(data, separators=(",", ":")).encode()


def _masked(url: str) -> str:
    """``url`` without its password, for messages; also one a URL parser misreads (a ``/``,
    ``?`` or ``#`` in the password), which ``urlsplit`` would have echoed whole."""
    return redact_url(url)


class RedisLostError(Exception):
    """The real Redis failed a write of the stream processor (no injected fault does that)."""


class RedisSessions:
    """The session store of a ``--redis`` run: a real Redis behind a :class:`FaultProxy`.

    - The engine reads through the project's :class:`RedisSessionStore` (its
      :class:`RedisOptions`: no client retries, the step's time left as the socket timeout, a
      connection discarded after any timeout or error) pointed at the proxy.
    - The world's stream processor writes each session it updates straight to Redis (not
      through the proxy: the faults are on the search service's path), as JSON in the store's
      default layout, under a key prefix of this run's own, with a TTL of :attr:`TTL` seconds
      in case the run dies; :meth:`close` deletes the keys it wrote, and nothing else.
    - :meth:`prepare` sets the proxy for the next read from the scenario's faults at virtual
      time ``t``: a latency drawn as the simulated stores draw theirs, a hang, or down.

    Use :meth:`connect`, which turns every set-up failure into one line.
    """

    TTL = 3600
    NAME = "session_store"

    def __init__(
        self,
        url: str,
        client: Any,
        proxy: FaultProxy,
        store: RedisSessionStore,
        prefix: str,
        faults: StoreFaults,
        rng: random.Random,
    ) -> None:
        self.url = _masked(url)
        self._client = client
        self.proxy = proxy
        self.store = store
        self.prefix = prefix
        self._faults = faults
        self._rng = rng
        self._format = store.options.format
        self._template = store.options.key
        self._written: set[str] = set()
        self.writes = 0
        self.deleted = 0

    @classmethod
    def connect(
        cls,
        url: str,
        faults: StoreFaults,
        rng: random.Random,
        run_id: str,
        *,
        password_env: str | None = None,
        password_file: str | None = None,
    ) -> RedisSessions:
        """Check ``url``, reach the server, start the proxy and make the store. The password
        is in ``url``, or in the environment variable ``password_env`` or the file
        ``password_file``.

        Raises:
            ValueError: one line: a bad URL, the redis extra missing, an unusable password
                setting, the server unreachable.
        """
        shown = _masked(url)
        parts = urlsplit(url)
        usage = "give redis://[[user]:password@]host:port/db"
        if parts.scheme == "rediss":
            raise ValueError(
                f"--redis {shown}: TLS (rediss://) is not supported: the fault proxy sits in "
                "the TCP path and the certificate would not match it; use redis://"
            )
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"--redis {shown}: the port is not a number; {usage}") from None
        db = parts.path.lstrip("/") or "0"
        if parts.scheme != "redis" or not parts.hostname or not db.isdigit():
            raise ValueError(f"--redis {shown}: not a Redis URL; {usage}")
        if parts.query or parts.fragment:
            raise ValueError(
                f"--redis {shown}: drop the query; the store's settings come from its "
                f"RedisOptions; {usage}"
            )
        try:
            import redis  # noqa: PLC0415 - the optional extra
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.retry import Retry  # noqa: PLC0415
        except ImportError:
            raise ValueError(
                "--redis needs the redis extra: pip install 'search-resilience[redis]'"
            ) from None
        try:
            direct, credentials = RedisOptions(
                url=url, password_env=password_env, password_file=password_file
            ).client_settings()
        except ValidationError as exc:  # the password given twice
            problem = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ValueError(f"--redis {shown}: {problem}") from None
        except ValueError as exc:  # its message names the option, never a value
            raise ValueError(f"--redis {shown}: {exc}") from None
        client = redis.Redis.from_url(
            direct,
            retry=Retry(NoBackoff(), 0),  # never the client's default retries (field notes)
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            **no_handshake(),
            **credentials,
        )
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            client.close()
            raise ValueError(f"--redis {shown}: Redis refused the credentials ({exc})") from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            client.close()
            raise ValueError(
                f"--redis {shown}: cannot reach Redis ({exc}); start it or fix the URL"
            ) from None
        except redis.RedisError as exc:
            client.close()
            raise ValueError(f"--redis {shown}: Redis answered PING with an error: {exc}") from None
        proxy = FaultProxy(parts.hostname, port)
        userinfo = parts.netloc.rpartition("@")[0]
        through = urlunsplit(
            (
                "redis",
                f"{userinfo + '@' if userinfo else ''}127.0.0.1:{proxy.port}",
                f"/{db}",
                "",
                "",
            )
        )
        prefix = f"resilience-sim:{run_id}:"
        try:
            store = RedisSessionStore(
                cls.NAME,
                RedisOptions(
                    url=through,
                    key=prefix + "session:{key}",
                    password_env=password_env,
                    password_file=password_file,
                ),
            )
        except Exception:
            proxy.close()
            client.close()
            raise
        return cls(url, client, proxy, store, prefix, faults, rng)

    def prepare(self, t: float) -> None:
        """Set the wire for a read at virtual time ``t``."""
        state, median = self._faults.state(t)
        proxy = self.proxy
        if state == "down":
            proxy.set_down(True)
            return
        proxy.set_down(False)
        proxy.delay = (
            HANG_SECONDS
            if state == "hang"
            else median * math.exp(self._rng.gauss(0.0, LATENCY_SIGMA))
        )

    def write(self, sessions: Iterable[tuple[str, SessionState | None]]) -> None:
        """Write updated sessions, as the stream processor would (one round trip).

        Raises:
            RedisLostError: Redis itself failed (not an injected fault).
        """
        pipe = self._client.pipeline(transaction=False)
        count = 0
        for session, state in sessions:
            if state is None:
                continue
            key = self._template.format(key=session)
            pipe.set(key, encode_session(state, self._format), ex=self.TTL)
            self._written.add(key)
            count += 1
        if count:
            try:
                pipe.execute()
            except Exception as exc:
                raise RedisLostError(
                    f"writing sessions to Redis at {self.url} failed: {exc}"
                ) from None
            self.writes += count

    def close(self) -> None:
        """Delete the keys this run wrote (only those), stop the proxy, close the clients."""
        try:
            keys = sorted(self._written)
            for start in range(0, len(keys), 500):
                with contextlib.suppress(Exception):
                    self.deleted += int(self._client.delete(*keys[start : start + 500]))
        finally:
            self.store.close()
            self.proxy.close()
            self._client.close()

    def report(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "key_prefix": self.prefix,
            "sessions_written": len(self._written),
            "writes": self.writes,
            "keys_deleted": self.deleted,
        }
