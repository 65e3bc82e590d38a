"""A step's ``isolation:``: how far a step that misbehaves can reach past its own outcome.

Every step, of every kind, is already contained in what it *returns*: an exception is its
``error`` outcome, a wrong type its ``garbage``, and the request goes on with the next tier, the
chain's verdict or the previous candidate list. What isolation decides is what a step that
*blocks* or *runs slow* costs the request:

- ``inline`` (the default): the engine calls the step in the request's own thread or task, a
  plain call. A slow step's result is discarded (``timeout``) once it returns, but the request
  waited for it, and a step that never returns holds the request. Right for the built-in steps
  and for any step that computes on memory: a thread hop would cost more than the step.
- ``bulkhead``: the step runs on a bounded pool of threads of its own, and the request waits
  at most what the step may take: a tier, the smaller of its ``timeout`` and what the request
  has left; a guard or a post step, the smaller of the isolation's ``timeout`` and what the
  request has left (a guard that hangs must not cost the request its whole budget). Past that
  the step is ``timeout``
  and the request goes on; the call runs on in its thread, holding its slot, and once
  ``max_concurrent`` calls hold slots every further call is refused at once (``rejected``).
  ``adecide`` awaits the thread without blocking the event loop. Right for plugin code that may
  block (a tier doing its own network I/O, a guard reading a file) or that you do not trust to
  return. It costs a thread hop per call, tens of microseconds.

Isolation is declared per step in the policy file, so the platform team chooses it for the code
it runs, and a plugin cannot opt out of it.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ._bulkhead import Bulkhead
from ._durations import Duration
from .events import EventSink

__all__ = ["INLINE", "StepBulkhead", "StepIsolation"]

T = TypeVar("T")


class StepIsolation(BaseModel):
    """A step's ``isolation:``: ``inline``, ``bulkhead``, or the mapping form
    ``{mode: bulkhead, max_concurrent: 4}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    mode: Literal["inline", "bulkhead"] = Field(
        default="inline",
        description="inline: called in the request's thread or task; bulkhead: on a bounded "
        "pool of threads of the step's own, so the request stops waiting at the step's cutoff.",
    )
    max_concurrent: int = Field(
        default=4,
        ge=1,
        le=256,
        description="bulkhead only: calls of this step in flight at once; more are rejected.",
    )
    timeout: Duration | None = Field(
        default=None,
        gt=0,
        description="bulkhead only, guards and post steps: how long the request waits for the "
        "step (default 5ms); a tier waits its own timeout.",
    )

    @property
    def bulkhead(self) -> bool:
        """Whether the step runs on a bulkhead of its own."""
        return self.mode == "bulkhead"


#: The default: a plain call.
INLINE = StepIsolation()

#: How long a request waits for a guard or a post step on a bulkhead, unless declared.
DEFAULT_WAIT = 0.005


class StepBulkhead(Bulkhead):
    """The bulkhead of one step: a :class:`Bulkhead` that knows how long a request waits for it.

    Args:
        name: ``policy.step``.
        isolation: the step's declared isolation.
        events: where ``resilience.bulkhead.abandoned`` goes.
        tier: whether the step is a tier (which waits its own timeout instead).
    """

    __slots__ = ("wait",)

    def __init__(
        self, name: str, isolation: StepIsolation, events: EventSink, *, tier: bool
    ) -> None:
        super().__init__(name, isolation.max_concurrent, events, kind="step")
        #: seconds a request waits for a guard or post step at most (a tier: unbounded here,
        #: since its slot already bounds it)
        self.wait: float = float("inf") if tier else (isolation.timeout or DEFAULT_WAIT)

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """As :meth:`Bulkhead.submit`, in a copy of the caller's context: the step reads the
        request's context variables (``IN_SHADOW``: a policy in shadow writes no shared state)
        on its worker thread as it would inline."""
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)
