"""Deadline-aware retries: tenacity's strategy objects, never past the remaining budget.

tenacity's ``stop_after_delay`` is checked only between attempts and never interrupts one, so it
is no deadline. Here every attempt gets its own cutoff (``attempt_timeout``, by default an equal
share of what the call was given), and a further attempt starts only if, after the backoff, a whole
``attempt_timeout`` is still left (less a quarter, for the time an attempt takes to be cut and
reported): no attempt starts that cannot finish in time.

A fresh ``Retrying`` is made per logical call: a shared one is not safe across threads or tasks
(tenacity issue #93), and retries are declared only where a source asks for them, so only those
calls pay for it (about 13 us).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_fixed,
)

from ._clock import Clock
from ._durations import Duration
from ._errors import BreakerOpen, BulkheadFull, GarbageData

__all__ = ["RetryOptions", "RetryPolicy"]

T = TypeVar("T")


class RetryOptions(BaseModel):
    """``sources.NAME.retry``: retry a failed call within the step's budget."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    attempts: int = Field(
        default=2, ge=2, le=10, description="Attempts in all, the first included."
    )
    backoff: Duration = Field(default=0.0, ge=0, description="Wait between attempts.")
    attempt_timeout: Duration | None = Field(
        default=None,
        gt=0,
        description="Cutoff of each attempt; null: an equal share of the call's timeout.",
    )
    on: list[Literal["error", "timeout"]] = Field(
        default_factory=lambda: ["error", "timeout"],  # type: ignore[arg-type]
        min_length=1,
        description="Which failures are retried. Garbage, an open breaker and a full bulkhead "
        "never are.",
    )


#: The share of an attempt's cutoff that may be missing when the next attempt starts: an
#: attempt is cut and reported a little after its cutoff (asyncio rounds timer waits up to
#: whole milliseconds), so with equal shares the last one would otherwise never start.
_SHARE_SLACK = 0.25


def _sleeper(clock: Clock) -> Callable[[float], None]:
    sleep = getattr(clock, "sleep", None)
    return sleep if callable(sleep) else time.sleep


class RetryPolicy:
    """Runs one logical call as attempts, within its timeout.

    Args:
        options: the declared retry options.
        clock: the engine's clocks; a clock with a ``sleep(seconds)`` method (the test kit's
            ``FakeClock`` has one: it advances) also drives the backoff.
    """

    def __init__(self, options: RetryOptions, clock: Clock) -> None:
        self.options = options
        self._now = clock.monotonic
        self._sleep = _sleeper(clock)
        retry_errors = "error" in options.on
        retry_timeouts = "timeout" in options.on

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, BreakerOpen | BulkheadFull | GarbageData):
                return False
            if isinstance(exc, TimeoutError):
                return retry_timeouts
            return retry_errors

        self._retry = retry_if_exception(retryable)
        self._wait = wait_fixed(options.backoff)
        self._attempts = stop_after_attempt(options.attempts)

    def _plan(self, timeout: float) -> tuple[float, float, Callable[[RetryCallState], bool]]:
        """The per-attempt cutoff and the stop rule for a call given ``timeout``."""
        share = self.options.attempt_timeout or timeout / self.options.attempts
        deadline = self._now() + timeout
        backoff = self.options.backoff
        attempts = self._attempts
        # An attempt cut at its share ends a little after it: three quarters of a share left
        # still makes a useful attempt. Without this slack the last equal share is never used.
        needed = share * (1.0 - _SHARE_SLACK)

        def stop(state: RetryCallState) -> bool:
            return attempts(state) or deadline - self._now() - backoff < needed

        return share, deadline, stop

    def call(self, attempt: Callable[[float], T], timeout: float) -> T:
        """``attempt(cutoff)`` until it succeeds, may not be retried, or time runs out."""
        share, deadline, stop = self._plan(timeout)
        retrying = Retrying(
            stop=stop, wait=self._wait, retry=self._retry, reraise=True, sleep=self._sleep
        )
        result: Any = None
        for trial in retrying:
            with trial:
                result = attempt(min(share, deadline - self._now()))
        return result  # type: ignore[no-any-return]

    async def acall(self, attempt: Callable[[float], Awaitable[T]], timeout: float) -> T:
        """The asyncio form of :meth:`call`; each attempt is cancelled at its own cutoff."""
        share, deadline, stop = self._plan(timeout)
        retrying = AsyncRetrying(
            stop=stop, wait=self._wait, retry=self._retry, reraise=True, sleep=asyncio.sleep
        )
        result: Any = None
        async for trial in retrying:
            with trial:
                cutoff = min(share, deadline - self._now())
                async with asyncio.timeout(cutoff):
                    result = await attempt(cutoff)
        return result  # type: ignore[no-any-return]
