"""Fleet-wide breakers: processes share window counts and open states through Redis.

One process's view of an outage protects the others: every ``sync_every`` a background thread
adds this process's new calls, failures and slow calls to per-second buckets in Redis, reads the
fleet's totals over ``window``, and reads the fleet's open state. When the fleet's failure (or
slow) rate exceeds the breaker's threshold, or another process has opened the breaker, this
process opens its own too, for what is left of the open time. A breaker that opens on its own
publishes that.

The request path touches only memory: ``record()`` adds to three counters. With the fleet's
Redis stopped or down, a round fails fast (its own short socket timeout, no retries), the
breakers keep their local rules, and decisions cost what they did; one event says the fleet is
unreachable, one that it is back. Counts of a round that failed to send are dropped: the fleet
view is approximate by design, the local one is exact.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, Field

from ._durations import Duration
from ._fork import follow_forks, forget_forks
from ._secrets import RedisConnection, redis_where
from .events import EventSink, NullSink, register_event

__all__ = ["FLEET_RECOVERED", "FLEET_UNREACHABLE", "FleetOptions", "FleetSync"]

FLEET_UNREACHABLE = register_event(
    "resilience.fleet.unreachable",
    "warning",
    "The fleet's Redis did not answer a sync round; breakers keep their local rules; fields: "
    "url_host, error.",
)
FLEET_RECOVERED = register_event(
    "resilience.fleet.recovered", "info", "The fleet's Redis answers again; fields: url_host."
)
FLEET_OPENED = register_event(
    "resilience.fleet.opened",
    "warning",
    "A breaker opened because of the fleet; fields: breaker, reason (fleet_state, "
    "fleet_failure_rate), remaining_s.",
)


class FleetOptions(RedisConnection):
    """``breaker.fleet``: share this breaker's counts and state with other processes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    key_prefix: str = Field(
        default="resilience:breaker", min_length=1, description="Prefix of the keys used."
    )
    sync_every: Duration = Field(
        default=0.25, gt=0, description="How often counts and state are exchanged."
    )
    window: Duration = Field(
        default=10.0, ge=1, description="The fleet window, in one-second buckets."
    )
    timeout: Duration = Field(
        default=0.05, gt=0, description="Socket timeout of a sync round (no retries)."
    )


class _Shared:
    """One breaker in the fleet: its keys and its rules."""

    def __init__(self, breaker: Any, options: FleetOptions, client: Any) -> None:
        self.breaker = breaker
        self.options = options
        self.client = client
        prefix = f"{options.key_prefix}:{breaker.name}"
        self.state_key = f"{prefix}:open_until"
        self.bucket_key = f"{prefix}:w:" + "{}"


class FleetSync:
    """The background exchange for an engine's fleet breakers. Stopped by :meth:`stop`.

    Args:
        shared: ``(breaker, options)`` for every breaker with ``fleet:`` declared.
        wall: the wall clock (buckets and open times are shared across machines).
        events: where fleet events go.
    """

    def __init__(
        self,
        shared: list[tuple[Any, FleetOptions]],
        wall: Callable[[], float],
        events: EventSink | None = None,
    ) -> None:
        import redis  # noqa: PLC0415 - the optional extra, only when a policy declares a fleet
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        self._wall = wall
        self._events = events or NullSink()
        # One client per Redis and way of logging in to it.
        self._clients: dict[tuple[str, str | None, str | None], Any] = {}
        self._members: list[_Shared] = []
        for breaker, options in shared:
            url, credentials = options.client_settings()
            # The URL as written (its user included: client_settings strips the user info when
            # the password comes from a file), so that two users never share one login.
            login = (options.resolved_url(), options.password_env, options.password_file)
            client = self._clients.get(login)
            if client is None:
                client = self._clients[login] = redis.Redis.from_url(
                    url,
                    socket_timeout=options.timeout,
                    socket_connect_timeout=options.timeout,
                    retry=Retry(NoBackoff(), 0),
                    **credentials,
                )
            breaker.share()
            self._members.append(_Shared(breaker, options, client))
        self._interval = min(o.sync_every for _, o in shared)
        self._connection_errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._stop = threading.Event()
        self._unreachable = False
        self._thread = threading.Thread(target=self._run, name="resilience-fleet", daemon=True)
        #: seconds from wall clock to the newest completed round, for operators and tests
        self.last_round: float | None = None

    def serves(self, shared: list[tuple[Any, FleetOptions]]) -> bool:
        """Whether this exchange runs exactly ``shared``: the same breakers with the same
        options (a reload that changed neither keeps it)."""
        mine = [(m.breaker, m.options) for m in self._members]
        return len(mine) == len(shared) and all(
            b1 is b2 and o1 == o2 for (b1, o1), (b2, o2) in zip(mine, shared, strict=True)
        )

    def start(self) -> FleetSync:
        self._thread.start()
        follow_forks(self)
        return self

    def _restart_after_fork(self) -> None:
        # redis-py's pools notice the new process and open connections of their own.
        if self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="resilience-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (it finishes its round, bounded by the socket timeout)."""
        self._stop.set()
        forget_forks(self)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(2.0)
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sync_once()

    def sync_once(self) -> None:
        """One exchange for every shared breaker (the thread calls it; tests may too)."""
        reached = True
        for member in self._members:
            taken = member.breaker.take_pending()
            try:
                self._exchange(member, *taken)
            except self._connection_errors as exc:
                member.breaker.give_back(*taken)  # sent on the next round that gets through
                reached = False
                if not self._unreachable:
                    self._unreachable = True
                    self._emit(FLEET_UNREACHABLE, url_host=self._host(), error=type(exc).__name__)
            except Exception:
                continue
        if reached:
            if self._unreachable:
                self._unreachable = False
                self._emit(FLEET_RECOVERED, url_host=self._host())
            self.last_round = self._wall()

    def _exchange(
        self, member: _Shared, calls: int, failures: int, slows: int, opened: bool
    ) -> None:
        breaker = member.breaker
        options = breaker.options
        now = self._wall()
        second = int(now)
        span = int(member.options.window)
        pipe = member.client.pipeline(transaction=False)
        if calls:
            key = member.bucket_key.format(second)
            pipe.hincrby(key, "calls", calls)
            pipe.hincrby(key, "failures", failures)
            pipe.hincrby(key, "slows", slows)
            pipe.expire(key, span + 5)
        if opened:
            # When the outage began here, and for how long: the others open for what is left.
            left = breaker.opened_wall + options.open_for - now
            if left > 0:
                pipe.set(
                    member.state_key,
                    f"{breaker.opened_wall!r}:{options.open_for!r}",
                    px=max(int(left * 1000), 1),
                )
        for past in range(second - span + 1, second + 1):
            pipe.hmget(member.bucket_key.format(past), "calls", "failures", "slows")
        pipe.get(member.state_key)
        replies = pipe.execute()
        state = replies[-1]
        if state is not None:
            raw = state.decode() if isinstance(state, bytes) else str(state)
            began_text, _, open_for_text = raw.partition(":")
            began, open_for = float(began_text), float(open_for_text)
            remaining = began + open_for - now
            # An outage that began before this breaker last closed was already served here.
            if remaining > 0.0 and began > breaker.closed_wall:
                if breaker.open_from_fleet("fleet_state", remaining):
                    self._emit(
                        FLEET_OPENED,
                        breaker=breaker.name,
                        reason="fleet_state",
                        remaining_s=round(remaining, 3),
                    )
                return
        # Only the seconds since this breaker last closed: older failures were already served.
        since = int(breaker.closed_wall) + 1
        totals = [0, 0, 0]
        for past, bucket in zip(
            range(second - span + 1, second + 1), replies[-1 - span : -1], strict=True
        ):
            if past < since:
                continue
            for i, value in enumerate(bucket):
                totals[i] += int(value) if value is not None else 0
        fleet_calls, fleet_failures, fleet_slows = totals
        if fleet_calls < options.minimum_calls:
            return
        if (
            fleet_failures / fleet_calls > options.failure_rate
            or fleet_slows / fleet_calls > options.slow_call_rate
        ):
            breaker._fleet_rates = (
                fleet_calls,
                fleet_failures / fleet_calls,
                fleet_slows / fleet_calls,
            )
            if breaker.open_from_fleet("fleet_failure_rate", options.open_for):
                member.client.set(
                    member.state_key,
                    f"{now!r}:{options.open_for!r}",
                    px=int(options.open_for * 1000),
                    nx=True,
                )
                self._emit(
                    FLEET_OPENED,
                    breaker=breaker.name,
                    reason="fleet_failure_rate",
                    remaining_s=options.open_for,
                )

    def _host(self) -> str:
        hosts = dict.fromkeys(redis_where(url) for url, _, _ in self._clients)
        return ",".join(hosts)

    def _emit(self, event: str, **fields: Any) -> None:
        with contextlib.suppress(Exception):
            self._events.emit(event, **fields)
