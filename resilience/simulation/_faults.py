"""Faults injected into the world's stores and stream, and the stores that suffer them.

Faults act on *sources* only: a store answers late, raises, hangs or flaps; the stream
processor falls behind. What the engine's breakers and guards make of that is theirs to decide;
the simulator never forces their state.

Latency is virtual: a read advances the world's :class:`~resilience.testing.FakeClock` by its
latency, inside the call, as a network read would take that long. Reads take the ``timeout``
keyword the engine passes (the seconds the step has left), as a client with its socket timeout
set from the budget would: a read slower than that advances the clock by ``timeout`` only and
raises :class:`TimeoutError`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from resilience.testing import FakeClock

from ._scenario import Flapping, Hang, Latency, Outage, StreamLag

__all__ = ["HANG_SECONDS", "SimStore", "StoreFaults", "StreamFaults"]

#: How long a hung read would take: far beyond any budget, so it always ends at the timeout.
HANG_SECONDS = 3.0

#: Spread of healthy latency: log-normal with this sigma around the store's median.
LATENCY_SIGMA = 0.5


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
        clock: FakeClock,
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
