"""Flags shared by a fleet through Redis: the writer (:class:`RedisFlagStore`, behind
``resilience flags set/clear``) and the watcher (:class:`RedisFlagFeed`, one per engine).

Layout, under ``key_prefix`` (``resilience:flags`` by default); writer and readers agree on it:

- ``{prefix}:values``: a hash, flag key -> JSON ``{"value", "reason", "by", "at"}`` (``at`` in
  wall-clock seconds).
- ``{prefix}:version``: an integer, incremented by every write.
- ``{prefix}:changes``: a channel; the new version is published after every write.
- ``{prefix}:audit``: a stream (``XADD ... MAXLEN ~ 10000``), one entry per write with the
  fields ``key``, ``old``, ``new`` (the values; ``""`` when absent or cleared), ``reason``,
  ``by``, ``at`` and ``version``.

A write is one Lua script: it reads the old value, writes the new one, increments the version,
appends the audit entry and publishes the version, and no other command runs in between. Under
any number of concurrent writers each audit entry's ``old`` is therefore exactly the previous
entry's ``new``, in one round trip and without the retry loop ``WATCH`` would need.

The feed reads the hash and the version in one ``MULTI``/``EXEC`` (a consistent snapshot), once
when it starts and then from one background thread, which listens on the channel and also
re-reads the version every ``reread_every``, so a lost message (a dropped connection, a write
made by hand) cannot leave a process behind. It delivers a snapshot only when the version moved
or after Redis was unreachable. Every client has a short socket timeout and no retries; when
Redis does not answer, the feed delivers ``flags=None`` once (the board keeps the last values,
marked stale), reconnects with a backoff capped at ``reread_every``, and reads the whole hash
again once it is back. A value that is not the JSON above is skipped and named in the
snapshot's ``error``; the other flags are still delivered.

After ``os.fork`` the child has no feed thread: a fork handler starts one again, with fresh
connections, for every feed that was running in the parent (``multiprocessing`` workers and
pre-forking servers keep following the flags).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pydantic import ConfigDict, Field

from ._durations import Duration
from ._flag_feed import Deliver, FeedSnapshot, FlagRecord
from ._fork import follow_forks, forget_forks
from ._secrets import RedisConnection, redis_where

__all__ = ["FlagStoreError", "RedisFlagFeed", "RedisFlagOptions", "RedisFlagStore"]

#: Audit entries kept (approximately: ``MAXLEN ~``).
AUDIT_LENGTH = 10_000


class RedisFlagOptions(RedisConnection):
    """``settings.flags.redis``: read flags shared by the fleet from Redis."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    key_prefix: str = Field(
        default="resilience:flags", min_length=1, description="Prefix of the keys used."
    )
    reread_every: Duration = Field(
        default=5.0,
        gt=0,
        description="How often the version is read again, so a missed change message cannot "
        "leave a process behind.",
    )
    timeout: Duration = Field(
        default=0.05, gt=0, description="Socket timeout of every Redis call (no retries)."
    )


class FlagStoreError(Exception):
    """A flag write or read did not reach Redis; the message names the host and the fix."""


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.values = f"{prefix}:values"
        self.version = f"{prefix}:version"
        self.channel = f"{prefix}:changes"
        self.audit = f"{prefix}:audit"


# KEYS: values, version, audit. ARGV: flag key, new record JSON ("" to clear), new value ("" when
# cleared), reason, by, at, audit length, channel. Returns the new version.
_WRITE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local old_value = ''
if old then
  local ok, record = pcall(cjson.decode, old)
  if ok and type(record) == 'table' and type(record['value']) == 'string' then
    old_value = record['value']
  else
    old_value = old
  end
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local version = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*',
  'key', ARGV[1], 'old', old_value, 'new', ARGV[3], 'reason', ARGV[4], 'by', ARGV[5],
  'at', ARGV[6], 'version', tostring(version))
redis.call('PUBLISH', ARGV[8], tostring(version))
return version
"""


def _client(url: str, timeout: float, credentials: Mapping[str, Any]) -> Any:
    """A client with ``timeout`` on every socket operation, no retries, no handshake, logging
    in with ``credentials`` (from :meth:`RedisConnection.client_settings`)."""
    import redis  # noqa: PLC0415 - the optional extra, only when flags live in Redis
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415

    from ._redis import _plain_url, no_handshake  # noqa: PLC0415

    kwargs: dict[str, Any] = {
        # Explicitly no retries: redis-py's default retries with backoff turned a 30 ms socket
        # timeout into a 4.7 s hang against a stopped server (field notes).
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    kwargs.update(no_handshake())
    kwargs.update(credentials)
    return redis.Redis.from_url(_plain_url(url), **kwargs)


def _text(raw: object) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _decode_values(raw: Mapping[Any, Any]) -> tuple[dict[str, FlagRecord], list[str]]:
    """The flags of a ``HGETALL`` reply, and a note per entry that could not be read."""
    flags: dict[str, FlagRecord] = {}
    problems: list[str] = []
    for raw_key, raw_value in raw.items():
        try:
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        except UnicodeDecodeError:
            problems.append(f"{raw_key!r} (key is not UTF-8)")
            continue
        try:
            record = json.loads(raw_value)
        except (ValueError, UnicodeDecodeError, RecursionError, TypeError):
            problems.append(f"{key!r} (not JSON)")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("value"), str):
            problems.append(f"{key!r} (no string 'value')")
            continue
        reason, by, at = record.get("reason", ""), record.get("by", ""), record.get("at", 0.0)
        if not isinstance(reason, str) or not isinstance(by, str):
            problems.append(f"{key!r} ('reason' or 'by' is not a string)")
            continue
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            problems.append(f"{key!r} ('at' is not a finite number)")
            continue
        flags[key] = FlagRecord(record["value"], reason, by, float(at))
    return flags, problems


def _read_all(client: Any, keys: _Keys) -> tuple[bytes | None, Mapping[Any, Any]]:
    """The version and the hash, in one ``MULTI``/``EXEC``: a consistent pair."""
    pipe = client.pipeline(transaction=True)
    pipe.get(keys.version)
    pipe.hgetall(keys.values)
    version, values = pipe.execute()
    return version, values


class RedisFlagStore:
    """Writes and reads the fleet's flags (the CLI's ``resilience flags set/clear/list``).

    Args:
        options: where the flags live; the socket timeout applies to every call.

    Raises:
        ValueError: a variable ``url_env`` or ``password_env`` names is unset, the
            ``password_file`` cannot be read, or the URL has query parameters.
    """

    def __init__(self, options: RedisFlagOptions, *, wall: Callable[[], float] = time.time) -> None:
        self.options = options
        url, credentials = options.client_settings()
        self._where = redis_where(url)
        self._keys = _Keys(options.key_prefix)
        self._wall = wall
        self._client = _client(url, options.timeout, credentials)
        self._script = self._client.register_script(_WRITE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "resilience:flags",
        timeout: float = 0.05,
        wall: Callable[[], float] = time.time,
    ) -> RedisFlagStore:
        """A store for the flags at ``url``."""
        return cls(RedisFlagOptions(url=url, key_prefix=key_prefix, timeout=timeout), wall=wall)

    def set(self, key: str, value: str, *, reason: str, by: str) -> int:
        """Set flag ``key`` to ``value`` for the whole fleet; returns the new version.

        Raises:
            ValueError: an empty key or value.
            FlagStoreError: Redis could not be reached or refused the write.
        """
        if not value:
            raise ValueError("a flag value cannot be empty; use clear() to remove a flag")
        at = self._wall()
        record = json.dumps(
            {"value": value, "reason": reason, "by": by, "at": at}, separators=(",", ":")
        )
        return self._write(key, record, value, reason, by, at)

    def clear(self, key: str, *, reason: str, by: str) -> int:
        """Remove flag ``key`` (the policy's default applies again); returns the new version.

        Raises:
            ValueError: an empty key.
            FlagStoreError: Redis could not be reached or refused the write.
        """
        return self._write(key, "", "", reason, by, self._wall())

    def _write(self, key: str, record: str, value: str, reason: str, by: str, at: float) -> int:
        if not key:
            raise ValueError("a flag key cannot be empty")
        keys = self._keys
        args = [key, record, value, reason, by, repr(at), AUDIT_LENGTH, keys.channel]
        with self._errors("write flag " + repr(key), write=True):
            return int(self._script(keys=[keys.values, keys.version, keys.audit], args=args))

    def read(self) -> tuple[int, dict[str, FlagRecord]]:
        """The current version and flags (an entry that is not valid JSON is left out).

        Raises:
            FlagStoreError: Redis could not be reached.
        """
        with self._errors("read the flags"):
            version, raw = _read_all(self._client, self._keys)
        flags, _ = _decode_values(raw)
        return (int(version) if version is not None else 0), flags

    def history(self, limit: int = 20) -> list[dict[str, str]]:
        """The newest ``limit`` audit entries, newest first; each has the stream ``id`` too.

        Raises:
            FlagStoreError: Redis could not be reached.
        """
        if limit <= 0:
            return []
        with self._errors("read the flag history"):
            entries = self._client.xrevrange(self._keys.audit, count=limit)
        history = []
        for entry_id, fields in entries:
            item = {"id": _text(entry_id)}
            item.update({_text(name): _text(value) for name, value in fields.items()})
            history.append(item)
        return history

    def close(self) -> None:
        """Release the connections."""
        with contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> RedisFlagStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self, action: str, *, write: bool = False) -> Iterator[None]:
        """Redis's exceptions as one :class:`FlagStoreError` that names the host and the fix."""
        import redis  # noqa: PLC0415

        timeout = f"{self.options.timeout * 1000:g}ms"
        try:
            yield
        except redis.AuthenticationError as exc:
            raise FlagStoreError(
                f"could not {action}: Redis at {self._where} refused the credentials "
                f"({type(exc).__name__}); check the password (password_env, password_file or the "
                "URL)"
            ) from None
        except redis.TimeoutError:
            unknown = (
                " The write may or may not have been applied: check `resilience flags history`."
                if write
                else ""
            )
            raise FlagStoreError(
                f"could not {action}: Redis at {self._where} did not answer within {timeout}; "
                f"check that it is up and not overloaded, or raise the timeout.{unknown}"
            ) from None
        except (redis.ConnectionError, OSError) as exc:
            raise FlagStoreError(
                f"could not {action}: Redis at {self._where} is unreachable "
                f"({type(exc).__name__}: {exc}); check that it is running and that the URL "
                f"(url or url_env) points at it"
            ) from None
        except redis.RedisError as exc:
            raise FlagStoreError(
                f"could not {action}: Redis at {self._where} refused it "
                f"({type(exc).__name__}: {exc}); check that nothing else uses the keys under "
                f"{self.options.key_prefix!r} (or choose another key_prefix)"
            ) from None


class RedisFlagFeed:
    """The fleet's flags, from Redis, watched by one background thread.

    Args:
        options: where the flags live and how often the version is read again.
        wall: the wall clock, for :attr:`last_read`.

    Raises:
        ValueError: a variable ``url_env`` or ``password_env`` names is unset, the
            ``password_file`` cannot be read, or the URL has query parameters or a scheme
            other than redis, rediss or unix.
        ImportError: the ``redis`` extra is not installed.
    """

    name = "redis"

    def __init__(self, options: RedisFlagOptions, *, wall: Callable[[], float] = time.time) -> None:
        import redis  # noqa: PLC0415 - fail at construction when the extra is missing

        self.options = options
        # Resolved once: a forked child reconnects with what the parent resolved.
        self._url, self._credentials = options.client_settings()
        self._where = redis_where(self._url)
        self._keys = _Keys(options.key_prefix)
        self._wall = wall
        self._connection_errors = (redis.RedisError, OSError)
        # Waiting for messages in short slices keeps stop() prompt.
        self._poll = min(options.reread_every, 0.25)
        self._first_backoff = min(0.1, options.reread_every)
        self._lock = threading.RLock()  # one read-and-deliver at a time, in order
        self._deliver: Deliver | None = None
        # Made now so that a bad URL fails here; it connects only when used.
        self._client: Any = _client(self._url, options.timeout, self._credentials)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._version: bytes | None = None
        self._snapshot: FeedSnapshot | None = None
        self._reachable: bool | None = None  # None: never read
        #: wall-clock time of the last read that Redis answered, or ``None``
        self.last_read: float | None = None

    def __repr__(self) -> str:
        return f"<RedisFlagFeed {self._where} prefix={self.options.key_prefix!r}>"

    # --- the FlagFeed protocol ----------------------------------------------------------------

    def start(self, deliver: Deliver, keys: Callable[[], Sequence[str]]) -> None:
        """Read once and deliver (``flags=None`` if Redis does not answer: the engine still
        starts), then watch from a background thread. ``keys`` is not needed: Redis lists its
        flags."""
        if self._thread is not None:
            raise RuntimeError("this feed is already started")
        self._deliver = deliver
        self._check(full=True, always=True)
        self._launch()

    def refresh(self) -> None:
        """Read now (the whole hash only if the version moved) and deliver what was read.
        Does nothing before :meth:`start` or after :meth:`stop`."""
        if self._deliver is not None:
            self._check(full=False, always=True)

    def stop(self) -> None:
        """Stop the thread and close the connections. Idempotent; returns within about 1 s."""
        forget_forks(self)
        self._stop.set()
        self._deliver = None  # a read still in flight delivers nothing
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(1.0)
        with contextlib.suppress(Exception):
            self._client.close()

    # --- reading ------------------------------------------------------------------------------

    def _check(self, *, full: bool, always: bool = False) -> bool:
        """Read Redis and deliver what is new (everything when ``always``); whether it answered.

        ``full=False`` reads the version first and the hash only if the version moved (or
        Redis was unreachable before).
        """
        with self._lock:
            client = self._client
            try:
                if not full and self._reachable:
                    version = client.get(self._keys.version)
                    if version == self._version:
                        self.last_read = self._wall()
                        if always and self._snapshot is not None:
                            self._send(self._snapshot)
                        return True
                version, raw = _read_all(client, self._keys)
            except Exception as exc:
                self._unreachable(exc, always)
                return False
            flags, problems = _decode_values(raw)
            error = ""
            if problems:
                error = (
                    f"skipped unreadable entries of {self._keys.values} at {self._where}: "
                    f"{', '.join(problems)}; write them again with `resilience flags set`"
                )
            snapshot = FeedSnapshot(self.name, flags, error)
            news = (
                always
                or not self._reachable
                or version != self._version
                or snapshot != self._snapshot
            )
            self._version, self._snapshot, self._reachable = version, snapshot, True
            self.last_read = self._wall()
            if news:
                self._send(snapshot)
            return True

    def _unreachable(self, exc: Exception, always: bool = False) -> None:
        """Deliver ``flags=None`` once per outage (or whenever a refresh asks)."""
        with self._lock:
            if self._reachable is False and not always:
                return
            self._reachable = False
            if isinstance(exc, self._connection_errors):
                error = (
                    f"Redis at {self._where} did not answer ({type(exc).__name__}: {exc}); "
                    f"keeping the last flags read"
                )
            else:
                error = f"reading flags from Redis at {self._where} failed: {exc!r}"
            self._send(FeedSnapshot(self.name, None, error))

    def _send(self, snapshot: FeedSnapshot) -> None:
        deliver = self._deliver
        if deliver is not None:
            with contextlib.suppress(Exception):  # a deliver never raises; a bug must not kill us
                deliver(snapshot)

    # --- the thread ---------------------------------------------------------------------------

    def _launch(self) -> None:
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name="resilience-flags-redis", daemon=True
        )
        follow_forks(self)
        self._thread.start()

    def _restart_after_fork(self) -> None:
        """In a forked child: the thread is gone and the connections are the parent's."""
        if self._thread is None or self._stop.is_set():
            return
        self._lock = threading.RLock()  # the parent's thread may have held it at the fork
        self._client = _client(self._url, self.options.timeout, self._credentials)
        self._launch()

    def _run(self, stop: threading.Event) -> None:
        pubsub: Any = None
        backoff = self._first_backoff
        next_check = 0.0
        try:
            while not stop.is_set():
                if pubsub is None:
                    pubsub = self._subscribe()
                    # Subscribed first, then the whole hash: no change can fall between the
                    # two, and a server that came back empty (or with other data under the
                    # same version number) is seen.
                    if pubsub is None or not self._check(full=True):
                        pubsub = self._close(pubsub)
                        stop.wait(backoff)
                        backoff = min(backoff * 2, self.options.reread_every)
                        continue
                    backoff = self._first_backoff
                    next_check = time.monotonic() + self.options.reread_every
                try:
                    news = False
                    message = pubsub.get_message(timeout=self._poll)
                    while message is not None:  # a burst of writes: one read
                        news = news or message.get("type") == "message"
                        message = pubsub.get_message(timeout=0)
                except Exception:
                    # The subscription broke. Not yet an outage: the server may just have
                    # dropped this connection. Subscribing again tells, after a short pause
                    # (a subscription that keeps breaking must not spin).
                    pubsub = self._close(pubsub)
                    stop.wait(self._first_backoff)
                    continue
                now = time.monotonic()
                if stop.is_set():
                    break
                if news or now >= next_check:
                    next_check = now + self.options.reread_every
                    if not self._check(full=news):
                        pubsub = self._close(pubsub)

        finally:
            self._close(pubsub)

    def _subscribe(self) -> Any:
        """A subscription to the change channel, confirmed by Redis, or ``None``."""
        pubsub: Any = None
        try:
            pubsub = self._client.pubsub()
            pubsub.subscribe(self._keys.channel)
            confirmation = pubsub.get_message(timeout=self.options.timeout)
            if confirmation is None or confirmation.get("type") != "subscribe":
                raise TimeoutError(
                    f"no subscription confirmed within {self.options.timeout * 1000:g}ms"
                )
            return pubsub
        except Exception as exc:
            self._unreachable(exc)
            self._close(pubsub)
            return None

    @staticmethod
    def _close(pubsub: Any) -> None:
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
