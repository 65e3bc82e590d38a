"""Clocks: one monotonic for durations and deadlines, one wall clock for ages and lags.

Both are injectable so that tests and the simulator can drive time. The engine reads the bound
methods once, at construction, so a request pays one plain call per reading.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What the engine needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences are meaningful."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch, comparable with event times written by other systems."""
        ...


class SystemClock:
    """The real clocks: :func:`time.perf_counter` and :func:`time.time`."""

    __slots__ = ()

    # The builtins themselves, not methods wrapping them: a read is one C call, no Python frame.
    monotonic = staticmethod(time.perf_counter)
    wall = staticmethod(time.time)
