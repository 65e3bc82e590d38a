"""Failure-rate circuit breakers: a sliding window of outcomes in front of pybreaker's states.

Why not ``pybreaker.CircuitBreaker.call``: it trips on N *consecutive* failures only (a steady 10%
error stream never trips it), it holds one lock for the whole guarded call (16 concurrent 50 ms
calls took 15x as long), its open timer is the wall clock, and its async support needs Tornado.

What this module takes from pybreaker: its state machine and vocabulary (``closed``, ``open``,
``half-open``), its listener interface (``CircuitBreakerListener.state_change``) and its storage
interface (``CircuitBreakerStorage``), so that a fleet-wide storage can hold the state later.
pybreaker's object is only touched on a transition; the per-call path reads a plain attribute.

The rules, as in Resilience4j:

- every *permitted* call ends in ``record``: a failure (error, timeout, garbage), a success, or
  neither (a miss, which says nothing about the source's health);
- a call that took longer than ``slow_call_duration`` (by default the timeout it was given) is
  also *slow*; a timeout is both a failure and slow;
- once the window holds ``minimum_calls``, the breaker opens when the failure rate or the slow
  rate *exceeds* its threshold;
- open, every call is refused at once (``BreakerOpen``, the ``breaker_open`` outcome) for
  ``open_for``; then the next calls are ``half_open_probes`` probes: one failure or slow call
  re-opens, all succeeding closes. Probes that do not all report within ``probe_deadline`` count
  as failed, so the breaker cannot stick half-open on a probe that never returns;
- ``forced: open`` / ``forced: closed`` pin the state for operators (``force_open()``,
  ``force_closed()``, ``release()``).

Counters sit behind a lock held for a few additions, never during a call: calls through one
breaker run concurrently.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import pybreaker
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ._clock import Clock
from ._durations import Duration
from ._fleet import FleetOptions
from ._fork import hold_across_forks
from .events import EventSink, NullSink, register_event

__all__ = [
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPENED",
    "BREAKER_OPENED",
    "BreakerOptions",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CountWindow",
    "TimeWindow",
]

CLOSED = pybreaker.STATE_CLOSED
OPEN = pybreaker.STATE_OPEN
HALF_OPEN = pybreaker.STATE_HALF_OPEN

BREAKER_OPENED = register_event(
    "resilience.breaker.opened",
    "warning",
    "A breaker opened; fields: breaker, reason (failure_rate, slow_call_rate, probe_failed, "
    "probe_deadline, forced), failure_rate, slow_rate, calls.",
)
BREAKER_HALF_OPENED = register_event(
    "resilience.breaker.half_opened",
    "info",
    "A breaker's open time ended; the next calls are probes; fields: breaker, probes.",
)
BREAKER_CLOSED = register_event(
    "resilience.breaker.closed",
    "info",
    "A breaker closed; fields: breaker, reason (probes_succeeded, forced, released).",
)


class BreakerOptions(BaseModel):
    """A breaker as declared in YAML (``sources.NAME.breaker`` or a guard's ``breaker``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    window: Literal["count", "time"] = Field(
        default="count", description="count: the last `size` calls; time: the last `duration`."
    )
    size: int = Field(default=100, ge=1, le=100_000, description="Calls in a count window.")
    duration: Duration = Field(default=30.0, gt=0, description="Length of a time window.")
    buckets: int = Field(default=10, ge=1, le=1000, description="Buckets of a time window.")
    failure_rate: float = Field(
        default=0.5, ge=0, le=1, description="Open when the failure share exceeds this."
    )
    minimum_calls: int = Field(
        default=20,
        ge=1,
        validate_default=True,
        description="Calls the window must hold before it may open.",
    )
    slow_call_rate: float = Field(
        default=1.0, ge=0, le=1, description="Open when the slow share exceeds this (1: never)."
    )
    slow_call_duration: Duration | None = Field(
        default=None, gt=0, description="A call longer than this is slow; null: its timeout."
    )
    open_for: Duration = Field(default=5.0, gt=0, description="How long it stays open.")
    half_open_probes: int = Field(
        default=3, ge=1, le=1000, description="Probe calls admitted when half-open."
    )
    probe_deadline: Duration = Field(
        default=1.0, gt=0, description="Probes not all reported by then count as failed."
    )
    forced: Literal["open", "closed"] | None = Field(
        default=None, description="Pin the state (an operator's switch); null: not pinned."
    )
    fleet: FleetOptions | None = Field(
        default=None,
        description="Share counts and state with other processes through Redis; null: local.",
    )

    # A field validator, not a model one: pydantic shows a failed validator's input in the
    # error's text, and a model validator's input is the whole mapping, a fleet URL with its
    # password included, whatever model this one is nested in.
    @field_validator("minimum_calls")
    @classmethod
    def _minimum_fits_window(cls, minimum_calls: int, info: ValidationInfo) -> int:
        size = info.data.get("size")
        if info.data.get("window") == "count" and size is not None and minimum_calls > size:
            raise ValueError(
                f"minimum_calls ({minimum_calls}) is above the window size ({size}), "
                "so it could never open; lower minimum_calls or raise size"
            )
        return minimum_calls


class BreakerSnapshot(NamedTuple):
    """A breaker's state and window, for operators and metrics."""

    name: str
    state: str
    forced: str | None
    calls: int
    failure_rate: float
    slow_rate: float


class CountWindow:
    """The last ``size`` calls: a ring of codes (bit 0: failed, bit 1: slow) with running sums."""

    __slots__ = ("_codes", "_next", "calls", "failures", "slows")

    def __init__(self, size: int) -> None:
        self._codes: list[int | None] = [None] * size
        self._next = 0
        self.calls = self.failures = self.slows = 0

    def add(self, failed: bool, slow: bool, now: float) -> None:
        old = self._codes[self._next]
        if old is not None:
            self.calls -= 1
            self.failures -= old & 1
            self.slows -= old >> 1
        self._codes[self._next] = failed | (slow << 1)
        self._next = (self._next + 1) % len(self._codes)
        self.calls += 1
        self.failures += failed
        self.slows += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slows

    def reset(self) -> None:
        self._codes = [None] * len(self._codes)
        self._next = 0
        self.calls = self.failures = self.slows = 0


class TimeWindow:
    """The calls of the last ``duration`` seconds, in ``buckets`` buckets on the monotonic clock.

    Running sums are kept beside the buckets; moving time forward clears the buckets it passes
    (at most all of them), so adding and reading are O(1) amortized.
    """

    __slots__ = ("_calls", "_failures", "_head", "_slows", "_width", "calls", "failures", "slows")

    def __init__(self, duration: float, buckets: int) -> None:
        self._width = duration / buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._slows = [0] * buckets
        self._head: int | None = None  # the newest epoch (bucket number) seen
        self.calls = self.failures = self.slows = 0

    def _advance(self, now: float) -> int:
        epoch = int(now / self._width)
        head = self._head
        if head is None or epoch - head >= len(self._calls):
            if head is not None or self.calls:
                self.reset()
            self._head = epoch
        elif epoch > head:
            size = len(self._calls)
            for passed in range(head + 1, epoch + 1):
                index = passed % size
                self.calls -= self._calls[index]
                self.failures -= self._failures[index]
                self.slows -= self._slows[index]
                self._calls[index] = self._failures[index] = self._slows[index] = 0
            self._head = epoch
        return epoch

    def add(self, failed: bool, slow: bool, now: float) -> None:
        index = self._advance(now) % len(self._calls)
        self._calls[index] += 1
        self._failures[index] += failed
        self._slows[index] += slow
        self.calls += 1
        self.failures += failed
        self.slows += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        return self.calls, self.failures, self.slows

    def reset(self) -> None:
        size = len(self._calls)
        self._calls = [0] * size
        self._failures = [0] * size
        self._slows = [0] * size
        self.calls = self.failures = self.slows = 0


class _EventBridge(pybreaker.CircuitBreakerListener):
    """Delivers pybreaker's state changes to the engine's event sink."""

    def __init__(self, owner: CircuitBreaker) -> None:
        self._owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self._owner._announce(getattr(new_state, "name", str(new_state)))


class CircuitBreaker:
    """A failure-rate breaker for one source (or for a policy's personalization as a whole).

    Use: ``ticket = breaker.permit()``; ``None`` means refused. Otherwise make the call and
    report it with ``breaker.record(ticket, failed=..., slow=...)`` or ``breaker.release(ticket)``
    for an outcome that is neither (a miss, a cancellation by the caller).

    Args:
        name: what the breaker guards, for events (a source name).
        options: its rules.
        clock: the engine's clocks; only the monotonic one is read.
        events: where state changes go.
        storage: pybreaker state storage; in-process memory by default.
        listeners: extra pybreaker listeners, told of every state change.
    """

    def __init__(
        self,
        name: str,
        options: BreakerOptions,
        clock: Clock,
        events: EventSink | None = None,
        *,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        listeners: tuple[pybreaker.CircuitBreakerListener, ...] = (),
    ) -> None:
        self.name = name
        self.options = options
        self._now: Callable[[], float] = clock.monotonic
        self._wall: Callable[[], float] = clock.wall
        #: wall times of the last local open and close, for the fleet exchange
        self.opened_wall = 0.0
        self.closed_wall = 0.0
        self._events = events or NullSink()
        self._lock = threading.Lock()
        hold_across_forks(self, "_lock", rank=2)
        self._window: CountWindow | TimeWindow = (
            CountWindow(options.size)
            if options.window == "count"
            else TimeWindow(options.duration, options.buckets)
        )
        self._timed = options.window == "time"
        self._minimum_calls = options.minimum_calls
        self._slow_rule = options.slow_call_rate < 1.0
        #: calls longer than this are slow; ``None``: longer than the timeout they were given
        self.slow_call_duration: float | None = options.slow_call_duration
        self._machine = pybreaker.CircuitBreaker(
            fail_max=2**31,  # tripping is this class's job; pybreaker only holds the state
            reset_timeout=options.open_for,
            state_storage=storage or pybreaker.CircuitMemoryStorage(CLOSED),
            listeners=[_EventBridge(self), *listeners],
            name=name,
        )
        #: the state the per-call path reads: one of pybreaker's STATE_* strings
        self.state: str = CLOSED
        self._generation = 0  # bumped on every transition; tickets from before are ignored
        self._opened_at = 0.0
        self._half_open_at = 0.0
        self._probes_left = 0
        self._probes_ok = 0
        self._forced: str | None = None
        self._reason = ""
        # fleet sharing: off until share() is called
        self._shared = False
        self._pending = [0, 0, 0]
        self._fleet_rates: tuple[int, float, float] = (0, 0.0, 0.0)
        self.opened_locally = False
        self._last_rates = (0, 0.0, 0.0)
        if options.forced == "open":
            self.force_open()
        elif options.forced == "closed":
            self.force_closed()

    # --- the per-call path --------------------------------------------------------------------

    def permit(self) -> int | None:
        """A ticket for one call, or ``None`` when the breaker refuses it."""
        # The generation is read first: if a transition slips in between, the ticket is stale
        # and its news ignored, never counted against the new state.
        generation = self._generation
        if self.state is CLOSED:
            return generation
        with self._lock:
            return self._permit_slow()

    def record(self, ticket: int, *, failed: bool, slow: bool) -> None:
        """Report how the call admitted with ``ticket`` went."""
        with self._lock:
            if ticket != self._generation:
                return  # admitted before the last transition: its news is stale
            if self.state is CLOSED:
                now = self._now() if self._timed else 0.0  # a count window needs no clock
                window = self._window
                window.add(failed, slow, now)
                if self._shared:  # counted for the fleet, sent in the background
                    self._pending[0] += 1
                    self._pending[1] += failed
                    self._pending[2] += slow
                # A success cannot raise a rate: only a failure, or reaching the minimum, can
                # make the window trip.
                if self._forced is None and (failed or slow or window.calls == self._minimum_calls):
                    self._maybe_trip(now)
            elif self.state is HALF_OPEN:
                if failed or (slow and self._slow_rule):
                    self._open("probe_failed")
                else:
                    self._probes_ok += 1
                    if self._probes_ok >= self.options.half_open_probes:
                        self._close("probes_succeeded")

    def release(self, ticket: int) -> None:
        """The call admitted with ``ticket`` ended in neither success nor failure."""
        if self.state is CLOSED:
            return
        with self._lock:
            if ticket == self._generation and self.state is HALF_OPEN:
                self._probes_left += 1  # the probe told nothing: let another one through

    # --- fleet sharing (called from the background sync, never on the request path) -----------

    def share(self) -> None:
        """Count calls for a fleet: :meth:`take_pending` hands them to the background sync."""
        self._shared = True

    def take_pending(self) -> tuple[int, int, int, bool]:
        """Calls, failures and slow calls recorded since the last take, and whether the breaker
        opened on its own meanwhile (for the fleet to hear)."""
        with self._lock:
            calls, failures, slows = self._pending
            self._pending[:] = [0, 0, 0]
            opened, self.opened_locally = self.opened_locally, False
        return calls, failures, slows, opened

    def give_back(self, calls: int, failures: int, slows: int, opened: bool) -> None:
        """Return what :meth:`take_pending` took, when it could not be sent."""
        with self._lock:
            self._pending[0] += calls
            self._pending[1] += failures
            self._pending[2] += slows
            self.opened_locally = self.opened_locally or opened

    def open_from_fleet(self, reason: str, remaining: float) -> bool:
        """Open because the fleet says so, for ``remaining`` seconds. Returns whether it did."""
        with self._lock:
            if self.state is not CLOSED or self._forced is not None:
                return False
            self._last_rates = self._fleet_rates
            self._open(reason, remaining)
            return True

    # --- operators ----------------------------------------------------------------------------

    def force_open(self) -> None:
        """Pin the breaker open until :meth:`release_force`."""
        with self._lock:
            self._forced = OPEN
            if self.state is not OPEN:
                self._open("forced")

    def force_closed(self) -> None:
        """Pin the breaker closed (it records, but never opens) until :meth:`release_force`."""
        with self._lock:
            self._forced = CLOSED
            if self.state is not CLOSED:
                self._close("forced")

    def release_force(self) -> None:
        """Return a pinned breaker to its own rules, starting closed with an empty window."""
        with self._lock:
            if self._forced is None:
                return
            self._forced = None
            self._close("released")

    def snapshot(self) -> BreakerSnapshot:
        """The current state and window."""
        with self._lock:
            calls, failures, slows = self._window.totals(self._now())
        return BreakerSnapshot(
            self.name,
            self.state,
            self._forced,
            calls,
            failures / calls if calls else 0.0,
            slows / calls if calls else 0.0,
        )

    # --- transitions (lock held) ----------------------------------------------------------------

    def _permit_slow(self) -> int | None:
        now = self._now()
        if self.state is OPEN:
            if self._forced is not None or now - self._opened_at < self.options.open_for:
                return None
            self._half_open(now)
        if self.state is HALF_OPEN:
            if self._probes_left > 0:
                self._probes_left -= 1
                return self._generation
            if now - self._half_open_at > self.options.probe_deadline:
                self._open("probe_deadline")
            return None
        return self._generation

    def _maybe_trip(self, now: float) -> None:
        window = self._window
        if window.calls < self._minimum_calls:  # the running sums are current after add()
            return
        calls, failures, slows = window.totals(now)
        failure_rate, slow_rate = failures / calls, slows / calls
        self._last_rates = (calls, failure_rate, slow_rate)
        if failure_rate > self.options.failure_rate:
            self._open("failure_rate")
        elif slow_rate > self.options.slow_call_rate:
            self._open("slow_call_rate")

    def _open(self, reason: str, remaining: float | None = None) -> None:
        self._generation += 1
        # Opened by the fleet with some of its open time already spent elsewhere: back-date it.
        spent = 0.0 if remaining is None else max(self.options.open_for - remaining, 0.0)
        self._opened_at = self._now() - spent
        self._reason = reason
        self.state = OPEN
        self._tell_machine(self._machine.open)
        if self._shared and remaining is None and reason != "forced":
            # An outage this process saw: the fleet sync publishes it, with when it began.
            self.opened_locally = True
            self.opened_wall = self._wall()

    def _half_open(self, now: float) -> None:
        self._generation += 1
        self._half_open_at = now
        self._probes_left = self.options.half_open_probes
        self._probes_ok = 0
        self.state = HALF_OPEN
        self._tell_machine(self._machine.half_open)

    def _close(self, reason: str) -> None:
        self._generation += 1
        self.closed_wall = self._wall()  # fleet news from before now is already served
        self._window.reset()
        self._reason = reason
        self._last_rates = (0, 0.0, 0.0)
        self.state = CLOSED
        self._tell_machine(self._machine.close)

    def _tell_machine(self, transition: Callable[[], object]) -> None:
        # pybreaker runs listeners and storage here; their failure must not become the
        # caller's. The mirror in self.state stays the truth for the request path.
        with contextlib.suppress(Exception):
            transition()

    def _announce(self, state: str) -> None:
        # Called by pybreaker's listener machinery, inside our lock: only emit.
        calls, failure_rate, slow_rate = self._last_rates
        try:
            if state == OPEN:
                self._events.emit(
                    BREAKER_OPENED,
                    breaker=self.name,
                    reason=self._reason,
                    failure_rate=round(failure_rate, 4),
                    slow_rate=round(slow_rate, 4),
                    calls=calls,
                )
            elif state == HALF_OPEN:
                self._events.emit(
                    BREAKER_HALF_OPENED, breaker=self.name, probes=self.options.half_open_probes
                )
            else:
                self._events.emit(BREAKER_CLOSED, breaker=self.name, reason=self._reason)
        except Exception:
            pass
