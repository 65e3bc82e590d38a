"""A Redis session store, declared in the policy file, with a real cutoff.

redis-py's defaults are wrong for a 10 ms budget: a client built as ``Redis(host, port)`` keeps
a ``Retry`` with exponential backoff on timeouts and refused connections, which turned a 30 ms
socket timeout into a 4.7 s hang against a stopped server (field notes). So this store does not
use the client's command path at all. Per call it:

1. takes a connection from a bounded pool without waiting (none free: ``BulkheadFull``, the
   ``rejected`` outcome);
2. sends ``GET`` and reads the reply with the socket timeout set to the time the step has left;
3. discards the connection after any timeout, error or cancellation (a reply that arrives late
   must never be read by the next caller: CVE-2023-28858/28859), and returns it otherwise;
4. decodes the value (JSON by default, with a size limit) into a :class:`SessionState`; a
   malformed or oversized value is ``garbage``, never a crash.

No retries here: a source that wants them declares ``retry:`` beside ``redis:``, where they run
within the budget. Connection settings come from the policy or the environment, never code.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from ._durations import Duration
from ._errors import BulkheadFull, GarbageData
from ._fork import hold_across_forks
from ._model import Click, SessionState
from ._secrets import RedisConnection

__all__ = ["RedisOptions", "RedisSessionStore", "SessionFormat", "decode_session"]


class SessionFormat(BaseModel):
    """How a session value is laid out: JSON with these field names (the defaults)::

        {"clicks": [{"item": "i1", "category": "shoes", "ts": 1700000000.5}, ...],
         "event_time": 1700000001.0}

    ``clicks`` are oldest first; ``event_time`` is when the stream processor applied the newest
    event (it judges freshness); times are seconds since the epoch, or milliseconds with
    ``time_unit: ms``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    clicks: str = Field(default="clicks", description="Field holding the list of clicks.")
    item: str = Field(default="item", description="Field of a click holding the item id.")
    category: str = Field(default="category", description="Field of a click: its category.")
    time: str = Field(default="ts", description="Field of a click: its event time.")
    event_time: str = Field(
        default="event_time", description="Field holding the newest applied event time."
    )
    time_unit: Literal["s", "ms"] = Field(default="s", description="Unit of the times.")


class RedisOptions(RedisConnection):
    """``sources.NAME.redis``: read this source from Redis instead of a bound function."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # password_env was here before password_file: it stays in the dump.
    _OMITTED_WHEN_UNSET = frozenset({"password_file"})

    key: str = Field(default="session:{key}", description="Key template; {key} is the session id.")
    cluster: bool = Field(
        default=False,
        description="A Redis Cluster: url names any node, the client finds the slot's owner.",
    )
    max_connections: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Pool size (per node in a cluster); a call finding none free is rejected.",
    )
    connect_timeout: Duration = Field(
        default=0.010, gt=0, description="Cutoff for opening a new connection."
    )
    max_value_bytes: int = Field(
        default=65_536, ge=1, description="Larger values are garbage (never decoded)."
    )
    format: SessionFormat = Field(default_factory=SessionFormat, description="Value layout.")


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a float
        return False


def decode_session(raw: bytes, fmt: SessionFormat, limit: int) -> SessionState:
    """Decode one stored session value.

    Raises:
        GarbageData: oversized, not JSON, or not of the declared layout.
    """
    if len(raw) > limit:
        raise GarbageData(f"session value of {len(raw)} bytes is over the {limit}-byte limit")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise GarbageData(f"session value is not usable JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise GarbageData(f"session value is {type(data).__name__}, not an object")
    scale = 1e-3 if fmt.time_unit == "ms" else 1.0
    raw_clicks = data.get(fmt.clicks, [])
    if not isinstance(raw_clicks, list):
        raise GarbageData(f"{fmt.clicks!r} is not a list")
    clicks = []
    for entry in raw_clicks:
        if not isinstance(entry, dict):
            raise GarbageData(f"a click is {type(entry).__name__}, not an object")
        item = entry.get(fmt.item)
        category = entry.get(fmt.category)
        at = entry.get(fmt.time)
        if not isinstance(item, str) or not (category is None or isinstance(category, str)):
            raise GarbageData(f"a click has no string {fmt.item!r} or a bad {fmt.category!r}")
        if isinstance(at, bool) or not isinstance(at, int | float) or not _finite(at):
            raise GarbageData(f"a click's {fmt.time!r} is not a finite number")
        try:
            clicks.append(Click(item, category, float(at) * scale))
        except OverflowError:
            raise GarbageData(f"a click's {fmt.time!r} is too large") from None
    event_time = data.get(fmt.event_time)
    if event_time is not None and (
        isinstance(event_time, bool)
        or not isinstance(event_time, int | float)
        or not _finite(event_time)
    ):
        raise GarbageData(f"{fmt.event_time!r} is not a finite number")
    try:
        event = None if event_time is None else float(event_time) * scale
    except OverflowError:
        raise GarbageData(f"{fmt.event_time!r} is too large") from None
    return SessionState(tuple(clicks), event)


def no_handshake() -> dict[str, Any]:
    """Client arguments for no handshake round trips (CLIENT SETINFO) on a new connection: a
    fresh connection then costs one TCP connect, bounded by its connect timeout."""
    import redis  # noqa: PLC0415 - the optional extra

    # redis-py 8 spells it driver_info (and warns about lib_name); Connection.__init__ only
    # shows **kwargs there, Redis.__init__ tells.
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters:
        return {"driver_info": None}
    return {"lib_name": None, "lib_version": None}


def _connection_kwargs(options: RedisOptions) -> dict[str, Any]:
    # redis is an optional extra: imported only when a policy declares a Redis source.
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415

    kwargs: dict[str, Any] = {
        # Explicitly no retries: redis-py's default retries with backoff on timeouts and refused
        # connections turned a 30 ms timeout into a 4.7 s hang (field notes).
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": options.connect_timeout,
        "socket_timeout": options.connect_timeout,  # writes; reads get the step's time left
    }
    kwargs.update(no_handshake())
    return kwargs


def _plain_url(url: str) -> str:
    """``url``, refusing query parameters: they would override the policy's settings."""
    if urlsplit(url).query:
        raise ValueError(
            "the Redis URL has query parameters, which would override the policy's settings "
            "(pool size, timeouts, decoding); put settings in the policy and drop the query"
        )
    return url


class _Slots:
    """A cluster client whose slot map is learnt in the background, never on a request.

    Until the map is known, calls fail at once (``ConnectionError``); a failed discovery is
    tried again at most once a second; a ``MOVED`` reply asks for a fresh map.
    """

    RETRY_EVERY = 1.0

    def __init__(self, make: Callable[[], Any], name: str) -> None:
        self._make = make
        self._name = name
        self._client: Any = None
        self._lock = threading.Lock()
        hold_across_forks(self, "_lock", rank=2)
        self._busy = False
        self._last_try = -math.inf

    def client(self) -> Any:
        client = self._client
        if client is None:
            self._discover()
            raise ConnectionError(f"source {self._name!r}: cluster slots not known yet")
        return client

    def refresh(self) -> None:
        self._discover(force=True)

    def _discover(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if self._busy or (not force and now - self._last_try < self.RETRY_EVERY):
                return
            self._busy, self._last_try = True, now
        threading.Thread(
            target=self._run, name=f"resilience-{self._name}-slots", daemon=True
        ).start()

    def _run(self) -> None:
        try:
            fresh = self._make()
            old, self._client = self._client, fresh
            if old is not None:
                with suppress(Exception):
                    old.close()
        except Exception:
            pass
        finally:
            with self._lock:
                self._busy = False

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with suppress(Exception):
                client.close()


def _on_loop(loop: asyncio.AbstractEventLoop, closing: Coroutine[Any, Any, Any]) -> None:
    """Run ``closing`` on ``loop`` if it still runs; a stopped loop's connections went with it."""
    if loop.is_closed() or not loop.is_running():
        closing.close()  # dropped without a "never awaited" warning
        return
    try:
        asyncio.run_coroutine_threadsafe(closing, loop)
    except RuntimeError:  # the loop closed meanwhile
        closing.close()


class RedisSessionStore:
    """A session store on Redis for both ``decide`` (sync client) and ``adecide`` (asyncio).

    Made by the engine from ``sources.NAME.redis`` and released by :meth:`close` /
    :meth:`aclose`. asyncio connections belong to their event loop: one pool per running loop.
    """

    def __init__(self, name: str, options: RedisOptions) -> None:
        import redis  # noqa: PLC0415 - the optional extra, only when a policy declares Redis
        import redis.asyncio  # noqa: PLC0415
        import redis.asyncio.retry  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415

        self.name = name
        self.options = options
        url, credentials = options.client_settings()
        self._url = _plain_url(url)
        self._kwargs = {**_connection_kwargs(options), **credentials}
        self._akwargs = {**self._kwargs, "retry": redis.asyncio.retry.Retry(NoBackoff(), 0)}
        self._redis = redis
        self._aredis = redis.asyncio
        self._key = options.key
        self._format = options.format
        self._limit = options.max_value_bytes
        self._pool: Any = redis.BlockingConnectionPool.from_url(
            self._url, max_connections=options.max_connections, timeout=0, **self._kwargs
        )
        self._apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._slots = _Slots(self._make_cluster, name) if options.cluster else None
        self._aclusters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"<RedisSessionStore {self.name!r} key={self._key!r}>"

    def _decode(self, raw: object) -> SessionState | None:
        if raw is None:
            return None
        if not isinstance(raw, bytes):
            raise GarbageData(f"Redis returned {type(raw).__name__}, not a string value")
        return decode_session(raw, self._format, self._limit)

    # --- sync -----------------------------------------------------------------------------

    def get(self, key: str, timeout: float) -> SessionState | None:
        """The session ``key``, or ``None``, within ``timeout`` seconds all told."""
        deadline = time.monotonic() + timeout
        if timeout <= 0:
            raise TimeoutError(f"source {self.name!r}: no time left")
        full_key = self._key.format(key=key)
        if self._slots is not None:
            node = self._slots.client().get_node_from_key(full_key)
            pool = node.redis_connection.connection_pool
        else:
            pool = self._pool
        connection = self._refusals(pool.get_connection)
        healthy = False
        try:
            left = deadline - time.monotonic()  # connecting may have used some of it
            if left <= 0:
                healthy = True  # nothing was sent: the connection is clean
                raise TimeoutError(f"source {self.name!r}: no time left after connecting")
            connection.send_command("GET", full_key)
            raw = connection.read_response(timeout=left)
            healthy = True
        except self._redis.TimeoutError as exc:
            raise TimeoutError(f"source {self.name!r}: no reply within {timeout:g}s") from exc
        except (self._redis.exceptions.MovedError, self._redis.exceptions.AskError):
            if self._slots is not None:
                self._slots.refresh()
            raise
        finally:
            if not healthy:
                connection.disconnect()  # a late reply must never reach the next caller
            pool.release(connection)
        return self._decode(raw)

    def _make_cluster(self) -> Any:
        return self._redis.RedisCluster.from_url(
            self._url, max_connections=self.options.max_connections, **self._kwargs
        )

    # --- asyncio --------------------------------------------------------------------------

    async def aget(self, key: str, timeout: float) -> SessionState | None:
        """The asyncio form of :meth:`get`; any cut or cancellation discards the connection."""
        if timeout <= 0:
            raise TimeoutError(f"source {self.name!r}: no time left")
        full_key = self._key.format(key=key)
        try:
            async with asyncio.timeout(timeout):
                connection, release = await self._aacquire(full_key)
        except TimeoutError as exc:
            raise TimeoutError(f"source {self.name!r}: could not connect in time") from exc
        healthy = False
        try:
            # The read itself takes no timeout: redis-py's asyncio read_response(timeout=...)
            # returns None when it expires, which would pass for a miss and leave the reply
            # in flight for the next caller.
            async with asyncio.timeout(timeout):
                await connection.send_command("GET", full_key)
                raw = await connection.read_response()
            healthy = True
        except (TimeoutError, self._redis.TimeoutError) as exc:
            raise TimeoutError(f"source {self.name!r}: no reply within {timeout:g}s") from exc
        except (self._redis.exceptions.MovedError, self._redis.exceptions.AskError):
            self._aclusters.pop(asyncio.get_running_loop(), None)
            raise
        finally:
            # One shielded step for both: a second cancellation cannot leave the slot taken.
            await asyncio.shield(self._settle(connection, healthy, release))
        return self._decode(raw)

    @staticmethod
    async def _settle(
        connection: Any, healthy: bool, release: Callable[[Any], Awaitable[None]]
    ) -> None:
        try:
            if not healthy:
                # Cancelled or failed mid-command: its next reply belongs to no one.
                with suppress(Exception):
                    await connection.disconnect(nowait=True)
        finally:
            await release(connection)

    async def _aacquire(self, full_key: str) -> tuple[Any, Callable[[Any], Awaitable[None]]]:
        loop = asyncio.get_running_loop()
        if self.options.cluster:
            node = (await self._async_cluster(loop)).get_node_from_key(full_key)
            connection = self._refusals(node.acquire_connection)

            async def release(connection: Any) -> None:
                node.release(connection)

            return connection, release
        pool = self._apools.get(loop)
        if pool is None:
            pool = self._apools[loop] = self._aredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self.options.max_connections,
                timeout=0,
                **self._akwargs,
            )
        return await self._arefusals(pool.get_connection), pool.release

    async def _async_cluster(self, loop: asyncio.AbstractEventLoop) -> Any:
        entry = self._aclusters.get(loop)
        if entry is None:
            cluster = self._aredis.RedisCluster.from_url(
                self._url, max_connections=self.options.max_connections, **self._akwargs
            )
            # Learning the slots runs as its own task: a caller cut at its deadline must not
            # cancel it, or it could never finish.
            entry = self._aclusters[loop] = (cluster, loop.create_task(cluster.initialize()))
        cluster, init = entry
        if not init.done():
            await asyncio.shield(init)
        failure = init.exception()
        if failure is not None:
            self._aclusters.pop(loop, None)
            raise ConnectionError(f"source {self.name!r}: cluster unreachable: {failure}")
        return cluster

    # --- refusals -------------------------------------------------------------------------

    def _refusals(self, acquire: Callable[[], Any]) -> Any:
        """``acquire()``, with the pool's refusals translated to the engine's outcomes."""
        try:
            return acquire()
        except self._redis.RedisError as exc:
            translated = self._refusal(exc)
            if translated is exc:
                raise
            raise translated from exc

    async def _arefusals(self, acquire: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await acquire()
        except self._redis.RedisError as exc:
            translated = self._refusal(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _refusal(self, exc: Exception) -> Exception:
        """What a pool's failure to hand out a connection means to the engine."""
        if isinstance(exc, self._redis.TimeoutError):  # a server that does not answer
            return TimeoutError(f"source {self.name!r}: could not connect in time")
        if isinstance(exc, self._redis.exceptions.MaxConnectionsError) or (
            isinstance(exc, self._redis.ConnectionError) and "No connection available" in str(exc)
        ):
            return BulkheadFull(self.name, self.options.max_connections)
        return exc

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the sync connections, and have every event loop that still runs close its
        asyncio ones (from any thread: a reload retires sources from a timer thread)."""
        self._pool.disconnect()
        if self._slots is not None:
            self._slots.close()
        for loop, pool in list(self._apools.items()):
            self._apools.pop(loop, None)
            _on_loop(loop, pool.disconnect())
        for loop, (cluster, _) in list(self._aclusters.items()):
            self._aclusters.pop(loop, None)
            _on_loop(loop, cluster.aclose())

    async def aclose(self) -> None:
        """Close every connection: those of the running loop now, the others as :meth:`close`."""
        loop = asyncio.get_running_loop()
        pool = self._apools.pop(loop, None)
        if pool is not None:
            await pool.disconnect()
        entry = self._aclusters.pop(loop, None)
        if entry is not None:
            with suppress(Exception):
                await entry[0].aclose()
        self.close()
