"""``stream_lag``: personalization off while the stream processor is behind.

Session features are written by a stream processor 100-500 ms after a click. When it falls
behind, session state can be minutes old while looking current. The processor publishes a
*watermark*: the event time (wall-clock seconds) up to which it has applied events. This guard
reads it off the request path, on a background thread every ``poll_every``, either from a
source bound in code (``source``, called with ``key``) or straight from the Redis key the
processor updates (``redis``), and computes the lag on the wall clock: ``lag = now - watermark``.

- **Trip.** Lag above ``max_lag`` (30 s by default) switches personalization off for the policy
  and emits ``resilience.stream_lag.tripped``, the alert.
- **Hysteresis.** It switches back on only once the lag has stayed below ``resume_below`` for
  ``hold_for``: a processor catching up around the threshold does not flap.
- **Missing watermark.** A watermark that cannot be read (the source fails, hangs past
  ``read_timeout``, has none, or gives one ahead of the clock, such as milliseconds where
  seconds are meant) counts as stale once no good read has come for ``grace``: a dead processor
  looks like that, not like "no lag".

A request's ``check()`` reads one attribute. The state lives in an object shared under the
guard's parameters, so a reload that leaves the guard unchanged keeps it (and its thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Self

from pydantic import ConfigDict, Field, model_validator

from resilience import (
    BoundSource,
    BuildContext,
    Duration,
    EventSink,
    Guard,
    Reading,
    RedisConnection,
    RequestContext,
    SourceName,
    StepParams,
    follow_forks,
    forget_forks,
    register_event,
    register_metric,
)

__all__ = ["LagState", "LagWatch", "StreamLagGuard", "StreamLagParams"]

LAG = register_metric(
    "resilience_stream_lag_seconds",
    "gauge",
    ("policy", "step"),
    "The stream processor's lag behind this machine's clock at the last read (NaN: never read, "
    "or the last read failed).",
)
LAG_TRIPPED = register_metric(
    "resilience_stream_lag_tripped",
    "gauge",
    ("policy", "step"),
    "1 while the stream_lag guard keeps personalization off (lag above max_lag, or the "
    "watermark unreadable past its grace).",
)
LAG_THRESHOLD = register_metric(
    "resilience_stream_lag_threshold_seconds",
    "gauge",
    ("policy", "step"),
    "The guard's max_lag: above it, personalization goes off.",
)

#: Seconds a watermark may be ahead of this machine's clock (clock skew) and still count.
_FUTURE_SKEW = 5.0

STREAM_LAG_TRIPPED = register_event(
    "resilience.stream_lag.tripped",
    "warning",
    "The stream processor is behind (or its watermark is unreadable): personalization is off "
    "for the policy; fields: guard, reason, lag_s (null when unreadable).",
)
STREAM_LAG_RECOVERED = register_event(
    "resilience.stream_lag.recovered",
    "info",
    "The lag stayed below resume_below for hold_for: personalization is on again; fields: "
    "guard, lag_s.",
)


class RedisWatermark(RedisConnection):
    """``redis``: the Redis the stream processor writes its watermark to (at ``key``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    timeout: Duration = Field(
        default=0.2, gt=0, description="Socket timeout of a read (no retries)."
    )


class StreamLagParams(StepParams):
    """Parameters of the ``stream_lag`` guard."""

    # The cross-field check below fails with the whole mapping as its input, the watermark's
    # URL (and any password in it) included: keep it out of the error's text.
    model_config = ConfigDict(hide_input_in_errors=True)

    source: SourceName | None = Field(
        default=None,
        description="Source bound in code that returns the watermark: event-time seconds up "
        "to which the stream processor has applied events (a number, or its text).",
    )
    redis: RedisWatermark | None = Field(
        default=None, description="Or read the watermark from this Redis, at key."
    )
    key: str = Field(
        default="watermark", min_length=1, description="Key passed to the source / Redis key."
    )
    max_lag: Duration = Field(default=30.0, gt=0, description="Switch off above this lag.")
    resume_below: Duration = Field(
        default=10.0, gt=0, description="Switch back on once the lag stays below this..."
    )
    hold_for: Duration = Field(default=30.0, ge=0, description="...for this long.")
    grace: Duration = Field(
        default=10.0, gt=0, description="A watermark unreadable this long counts as stale."
    )
    poll_every: Duration = Field(default=1.0, gt=0, description="How often it is read.")
    read_timeout: Duration = Field(
        default=0.2, gt=0, description="Timeout of one read of the watermark."
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if (self.source is None) == (self.redis is None):
            raise ValueError(
                "the guard needs one place to read the watermark from; give exactly one of "
                "source and redis"
            )
        if self.resume_below > self.max_lag:
            raise ValueError(
                "resume_below is above max_lag, so the guard could never switch back on; "
                "set resume_below at or below max_lag"
            )
        return self

    def advice(self) -> list[str]:
        return [f"redis.{advice}" for advice in self.redis.advice()] if self.redis else []


class LagState:
    """The guard's state machine, fed one observation at a time (no threads, no clock of its
    own: the tests drive it on the test kit's clock).

    Args:
        params: the guard's parameters.
        started: wall time the watch began (the grace of a never-read watermark counts from it).
    """

    def __init__(self, params: StreamLagParams, started: float) -> None:
        self._params = params
        self.verdict: str | None = None  # None: personalization on
        self.lag: float | None = None
        self._last_good = started
        self._below_since: float | None = None

    def observe(self, now: float, watermark: float | None) -> str | None:
        """Take one read (``None``: it failed). Returns ``"tripped"`` or ``"recovered"`` on a
        transition, else ``None``."""
        params = self._params
        if watermark is None:
            self._below_since = None
            self.lag = None  # unknown now: the gauge reads NaN, as its help says
            if self.verdict is None and now - self._last_good > params.grace:
                self.verdict = f"watermark unreadable for {now - self._last_good:.0f}s"
                return "tripped"
            return None
        self._last_good = now
        self.lag = lag = now - watermark
        if self.verdict is None:
            if lag > params.max_lag:
                self.verdict = f"stream lag {lag:.0f}s above {params.max_lag:g}s"
                return "tripped"
            return None
        if lag >= params.resume_below:
            self._below_since = None
            return None
        if self._below_since is None:
            self._below_since = now
        if now - self._below_since >= params.hold_for:
            self.verdict = None
            self._below_since = None
            return "recovered"
        return None


class LagWatch:
    """Reads the watermark on a thread of its own and keeps the verdict. Closed with the build
    that last uses it."""

    def __init__(
        self,
        name: str,
        params: StreamLagParams,
        read: Callable[[], object],
        wall: Callable[[], float],
        events: EventSink,
    ) -> None:
        self.name = name
        self._params = params
        self._read_raw = read
        self._wall = wall
        self._events = events
        self.state = LagState(params, wall())
        self.reads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Reads run on one worker of their own, waited for at most read_timeout: a read that
        # hangs is a failed read (the grace then trips the guard), never a stuck poller.
        self._reader = concurrent.futures.ThreadPoolExecutor(1, f"resilience-lag-read-{name}")

    @property
    def verdict(self) -> str | None:
        """Why personalization is off, or ``None``."""
        return self.state.verdict

    def settle(self) -> None:
        """The build that uses this watch runs: start polling (a refused build never does)."""
        if self._thread is None and not self._stop.is_set():
            self._launch()
            follow_forks(self)

    def poll(self) -> None:
        """Read the watermark once and apply it (the thread calls this; tests may too)."""
        watermark = self._read()
        transition = self.state.observe(self._wall(), watermark)
        self.reads += 1
        if transition == "tripped":
            self._emit(
                STREAM_LAG_TRIPPED,
                guard=self.name,
                reason=self.state.verdict,
                lag_s=None if self.state.lag is None else round(self.state.lag, 3),
            )
        elif transition == "recovered":
            lag = self.state.lag
            self._emit(
                STREAM_LAG_RECOVERED, guard=self.name, lag_s=None if lag is None else round(lag, 3)
            )

    def take_over(self) -> None:
        """Stop polling on the background thread: from now on the caller reads the watermark,
        by calling :meth:`poll` when it chooses (the simulator does, on its virtual clock, so
        that a run is the same for a seed). Waits for a read in progress. Idempotent; the watch
        still closes with its build."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(self._params.read_timeout + 1.0)

    def close(self) -> None:
        self._stop.set()
        forget_forks(self)
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(1.0)
        self._reader.shutdown(wait=False, cancel_futures=True)
        closer = getattr(self._read_raw, "close", None)
        if callable(closer):
            with contextlib.suppress(Exception):
                closer()

    def _read(self) -> float | None:
        try:
            raw: Any = self._reader.submit(self._read_raw).result(self._params.read_timeout)
            if isinstance(raw, bytes):
                raw = raw.decode("ascii")
            value = float(raw) if isinstance(raw, int | float | str) else math.nan
        except Exception:  # a failed or late read is an observation too: the grace decides
            return None
        if not math.isfinite(value) or value > self._wall() + _FUTURE_SKEW:
            # A watermark ahead of the clock is not one (milliseconds where seconds are meant):
            # it would read as no lag for ever.
            return None
        return value

    def _launch(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"resilience-lag-{self.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.poll()
            self._stop.wait(self._params.poll_every)

    def _restart_after_fork(self) -> None:
        if not self._stop.is_set():
            self._reader = concurrent.futures.ThreadPoolExecutor(
                1, f"resilience-lag-read-{self.name}"
            )
            self._launch()

    def _emit(self, event: str, **fields: Any) -> None:
        with contextlib.suppress(Exception):
            self._events.emit(event, **fields)


def _nothing_read() -> None:
    """The reader of a build that only checks the file (it may poll once before its close):
    it reads nothing."""


def _redis_extra() -> None:
    try:
        import redis  # noqa: F401, PLC0415 - only whether it is installed
    except ImportError:
        raise ValueError(
            "redis: the watermark's Redis needs the redis extra: "
            "pip install 'search-resilience[redis]'"
        ) from None


def _source_reader(source: BoundSource, key: str, timeout: float) -> Callable[[], object]:
    if not source.is_async:
        return lambda: source.call(key, timeout)
    # One event loop for the reads, kept in the reader's one thread: async clients are bound to
    # the loop they were made on.
    local = threading.local()

    def read() -> object:
        loop = getattr(local, "loop", None)
        if loop is None:
            loop = local.loop = asyncio.new_event_loop()
        return loop.run_until_complete(asyncio.wait_for(source.acall(key, timeout), timeout))

    return read


class _RedisReader:
    """GET of the watermark key, with a short socket timeout and no retries (a hung Redis
    costs one read its timeout, never the retries' backoff)."""

    def __init__(self, options: RedisWatermark, key: str) -> None:
        import redis  # noqa: PLC0415 - the redis extra, only when declared
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        url, credentials = options.client_settings()
        self._key = key
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=options.timeout,
            socket_connect_timeout=options.timeout,
            retry=Retry(NoBackoff(), 0),
            **credentials,
        )

    def __call__(self) -> object:
        return self._client.get(self._key)

    def close(self) -> None:
        self._client.close()


class StreamLagGuard(Guard):
    """Switches personalization off while the stream processor's lag is too high."""

    name = "stream_lag"
    Params = StreamLagParams
    telemetry = (
        STREAM_LAG_TRIPPED,
        STREAM_LAG_RECOVERED,
        LAG,
        LAG_TRIPPED,
        LAG_THRESHOLD,
    )

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, StreamLagParams)
        label = f"{context.policy}.{self.step_id}"
        self._policy = context.policy
        self._max_lag = params.max_lag
        source = context.source(params.source) if params.source is not None else None

        def watch() -> LagWatch:
            read: Callable[[], object]
            if context.offline:
                # resilience validate: no connection and no URL variable read, but the client
                # library must be there
                if params.redis is not None:
                    _redis_extra()
                read = _nothing_read
            elif source is not None:
                read = _source_reader(source, params.key, params.read_timeout)
            else:
                assert params.redis is not None
                read = _RedisReader(params.redis, params.key)
            return LagWatch(label, params, read, context.clock.wall, context.events)

        # Shared under the guard's identity, parameters and source: a reload that changes none
        # of them keeps the watch, its state and its thread. Polling starts in its settle(),
        # once the build that made it runs.
        # The dump masks a password in the URL: the URL itself keys the watch too, so that a
        # new password in it makes a new connection.
        where: object = id(source.runtime) if source is not None else None
        if params.redis is not None:
            where = ("redis", params.redis.url)
        self.watch = context.shared(
            ("stream_lag", context.policy, self.step_id, params.model_dump_json(), where), watch
        )

    def readings(self) -> Sequence[Reading]:
        state = self.watch.state
        labels = {"policy": self._policy, "step": self.step_id}
        lag = state.lag
        return (
            Reading(LAG, math.nan if lag is None else lag, labels),
            Reading(LAG_TRIPPED, 0.0 if state.verdict is None else 1.0, labels),
            Reading(LAG_THRESHOLD, self._max_lag, labels),
        )

    def check(self, request: RequestContext) -> str | None:
        return self.watch.state.verdict
