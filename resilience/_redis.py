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
import json
import math
import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._durations import Duration
from ._errors import BulkheadFull, GarbageData
from ._model import Click, SessionState

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


class RedisOptions(BaseModel):
    """``sources.NAME.redis``: read this source from Redis instead of a bound function."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: str | None = Field(
        default=None,
        description="redis://[:password@]host:port/db or rediss:// for TLS. Or use url_env.",
    )
    url_env: str | None = Field(
        default=None, description="Environment variable holding the URL (keeps secrets out)."
    )
    password_env: str | None = Field(
        default=None, description="Environment variable holding the password, if not in the URL."
    )
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

    @model_validator(mode="after")
    def _one_url(self) -> RedisOptions:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env; url_env keeps secrets out")
        return self

    def resolved_url(self) -> str:
        """The URL, from the policy or the environment.

        Raises:
            ValueError: the environment variable named by ``url_env`` is not set.
        """
        return resolve_url(self.url, self.url_env)


def resolve_url(url: str | None, url_env: str | None) -> str:
    """``url``, or the value of the environment variable ``url_env``.

    Raises:
        ValueError: the environment variable is not set.
    """
    if url is not None:
        return url
    assert url_env is not None
    value = os.environ.get(url_env)
    if not value:
        raise ValueError(f"environment variable {url_env} (url_env) is not set")
    return value


def decode_session(raw: bytes, fmt: SessionFormat, limit: int) -> SessionState:
    """Decode one stored session value.

    Raises:
        GarbageData: oversized, not JSON, or not of the declared layout.
    """
    if len(raw) > limit:
        raise GarbageData(f"session value of {len(raw)} bytes is over the {limit}-byte limit")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GarbageData(f"session value is not JSON: {exc}") from None
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
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise GarbageData(f"a click's {fmt.time!r} is not a finite number")
        clicks.append(Click(item, category, at * scale))
    event_time = data.get(fmt.event_time)
    if event_time is not None and (
        isinstance(event_time, bool)
        or not isinstance(event_time, int | float)
        or not math.isfinite(event_time)
    ):
        raise GarbageData(f"{fmt.event_time!r} is not a finite number")
    return SessionState(tuple(clicks), None if event_time is None else event_time * scale)


def _connection_kwargs(options: RedisOptions, name: str) -> dict[str, Any]:
    # redis is an optional extra: imported only when a policy declares a Redis source.
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415

    kwargs: dict[str, Any] = {
        # Explicitly no retries: redis-py's default retries with backoff on timeouts and refused
        # connections turned a 30 ms timeout into a 4.7 s hang (field notes).
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": options.connect_timeout,
        "socket_timeout": options.connect_timeout,  # writes; reads get the step's time left
        "client_name": f"resilience-{name}",
    }
    if options.password_env:
        password = os.environ.get(options.password_env)
        if not password:
            raise ValueError(
                f"environment variable {options.password_env} (password_env) is not set"
            )
        kwargs["password"] = password
    return kwargs


class RedisSessionStore:
    """A session store on Redis for both ``decide`` (sync client) and ``adecide`` (asyncio).

    Made by the engine from ``sources.NAME.redis``; the clients and their pools are created on
    first use by each side, and released by :meth:`close` / :meth:`aclose`.
    """

    def __init__(self, name: str, options: RedisOptions) -> None:
        import redis  # noqa: PLC0415 - the optional extra, only when a policy declares Redis
        import redis.asyncio  # noqa: PLC0415

        self.name = name
        self.options = options
        url = options.resolved_url()
        kwargs = _connection_kwargs(options, name)
        self._pool: Any = redis.BlockingConnectionPool.from_url(
            url, max_connections=options.max_connections, timeout=0, **kwargs
        )
        # A cluster client is made on first use, so that an engine starts while Redis is down.
        self._cluster: Any = None
        self._cluster_lock = threading.Lock()
        self._refreshing = threading.Event()
        self._acluster: Any = None
        self._acluster_loop: asyncio.AbstractEventLoop | None = None
        self._acluster_init: asyncio.Task[Any] | None = None
        self._url = url
        self._kwargs = kwargs
        # asyncio connections belong to the loop that opened them: one pool per running loop.
        self._apool: Any = None
        self._apool_loop: asyncio.AbstractEventLoop | None = None
        self._redis = redis
        self._aredis = redis.asyncio
        self._key = options.key
        self._format = options.format
        self._limit = options.max_value_bytes

    def __repr__(self) -> str:
        return f"<RedisSessionStore {self.name!r} key={self._key!r}>"

    def _decode(self, raw: object) -> SessionState | None:
        if raw is None:
            return None
        if not isinstance(raw, bytes):
            raise GarbageData(f"Redis returned {type(raw).__name__}, not a string value")
        return decode_session(raw, self._format, self._limit)

    def get(self, key: str, timeout: float) -> SessionState | None:
        """The session ``key``, or ``None``; waits at most ``timeout`` seconds for the reply."""
        if timeout <= 0:
            raise TimeoutError(f"source {self.name!r}: no time left")
        full_key = self._key.format(key=key)
        pool = self._node_pool(full_key) if self.options.cluster else self._pool
        connection = self._refusals(pool.get_connection)
        healthy = False
        try:
            connection.send_command("GET", full_key)
            raw = connection.read_response(timeout=timeout)
            healthy = True
        except self._redis.TimeoutError as exc:
            raise TimeoutError(f"source {self.name!r}: no reply within {timeout:g}s") from exc
        except (self._redis.exceptions.MovedError, self._redis.exceptions.AskError):
            self._refresh_topology()
            raise
        finally:
            if not healthy:
                connection.disconnect()  # a late reply must never reach the next caller
            pool.release(connection)
        return self._decode(raw)

    async def aget(self, key: str, timeout: float) -> SessionState | None:
        """The asyncio form of :meth:`get`; cancellation discards the connection."""
        if timeout <= 0:
            raise TimeoutError(f"source {self.name!r}: no time left")
        full_key = self._key.format(key=key)
        if self.options.cluster:
            node = (await self._async_cluster()).get_node_from_key(full_key)
            connection = self._refusals(node.acquire_connection)

            async def release(connection: Any) -> None:
                node.release(connection)
        else:
            pool = self._async_pool()
            connection = await self._arefusals(pool.get_connection)
            release = pool.release
        healthy = False
        try:
            await connection.send_command("GET", full_key)
            raw = await connection.read_response(timeout=timeout)
            healthy = True
        except self._redis.TimeoutError as exc:
            raise TimeoutError(f"source {self.name!r}: no reply within {timeout:g}s") from exc
        except (self._redis.exceptions.MovedError, self._redis.exceptions.AskError):
            self._acluster = None  # the next call learns the new slot owners
            raise
        finally:
            if not healthy:
                # Cancelled or failed mid-command: this connection's next reply belongs to no
                # one. Close it without waiting on the server.
                with suppress(Exception):
                    await asyncio.shield(connection.disconnect(nowait=True))
            await asyncio.shield(release(connection))
        return self._decode(raw)

    def _refusals(self, acquire: Callable[[], Any]) -> Any:
        """``acquire()``, with the pool's refusals translated to the engine's outcomes."""
        try:
            return acquire()
        except self._redis.TimeoutError as exc:  # connecting to a server that does not answer
            raise TimeoutError(f"source {self.name!r}: could not connect in time") from exc
        except self._redis.exceptions.MaxConnectionsError:
            raise BulkheadFull(self.name, self.options.max_connections) from None
        except self._redis.ConnectionError as exc:
            if "No connection available" in str(exc):
                raise BulkheadFull(self.name, self.options.max_connections) from None
            raise

    async def _arefusals(self, acquire: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await acquire()
        except self._redis.TimeoutError as exc:
            raise TimeoutError(f"source {self.name!r}: could not connect in time") from exc
        except self._redis.exceptions.MaxConnectionsError:
            raise BulkheadFull(self.name, self.options.max_connections) from None
        except self._redis.ConnectionError as exc:
            if "No connection available" in str(exc):
                raise BulkheadFull(self.name, self.options.max_connections) from None
            raise

    def _node_pool(self, full_key: str) -> Any:
        """The connection pool of the cluster node that owns ``full_key``'s slot."""
        cluster = self._cluster
        if cluster is None:
            with self._cluster_lock:
                if self._cluster is None:
                    try:
                        self._cluster = self._redis.RedisCluster.from_url(
                            self._url,
                            max_connections=self.options.max_connections,
                            **self._kwargs,
                        )
                    except self._redis.RedisError as exc:
                        raise ConnectionError(
                            f"source {self.name!r}: cluster unreachable: {exc}"
                        ) from exc
                cluster = self._cluster
        return cluster.get_node_from_key(full_key).redis_connection.connection_pool

    def _refresh_topology(self) -> None:
        # Slots moved (resharding): learn the new owners off the request path.
        cluster = self._cluster
        if cluster is None or self._refreshing.is_set():
            return
        self._refreshing.set()

        def refresh() -> None:
            try:
                cluster.nodes_manager.initialize()
            except Exception:
                pass
            finally:
                self._refreshing.clear()

        threading.Thread(target=refresh, name=f"resilience-{self.name}-slots", daemon=True).start()

    async def _async_cluster(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._acluster is None or self._acluster_loop is not loop:
            cluster = self._aredis.RedisCluster.from_url(
                self._url, max_connections=self.options.max_connections, **self._kwargs
            )
            # Learning the slots takes a few round trips. It runs as its own task, shielded:
            # a caller cut at its deadline must not cancel it, or it could never finish.
            self._acluster_init = loop.create_task(cluster.initialize())
            self._acluster, self._acluster_loop = cluster, loop
        init = self._acluster_init
        assert init is not None
        if not init.done():
            await asyncio.shield(init)
        failure = init.exception()
        if failure is not None:
            self._acluster = None  # the next call starts again
            raise ConnectionError(f"source {self.name!r}: cluster unreachable: {failure}")
        return self._acluster

    def _async_pool(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._apool is None or self._apool_loop is not loop:
            self._apool = self._aredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self.options.max_connections,
                timeout=0,
                **self._kwargs,
            )
            self._apool_loop = loop
        return self._apool

    def close(self) -> None:
        """Close the sync connections (the asyncio ones go with :meth:`aclose`)."""
        self._pool.disconnect()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    async def aclose(self) -> None:
        """Close every connection, sync and asyncio."""
        self.close()
        if self._apool is not None and self._apool_loop is asyncio.get_running_loop():
            await self._apool.disconnect()
        if self._acluster is not None and self._acluster_loop is asyncio.get_running_loop():
            await self._acluster.aclose()
        self._apool = self._acluster = None
