"""What a step type is: the classes plugin authors subclass, and what they get at build time.

A step type is a class with a YAML ``name``, a ``Params`` model (pydantic, ``extra="forbid"``)
and a behaviour. There are three kinds:

- :class:`Tier`: one link of the degradation chain; returns :class:`~resilience.Signals`, or
  ``None`` for a miss.
- :class:`Guard`: a check before the chain; returns ``None`` to let the chain run, or a short
  reason to switch personalization off for this request (the terminal tier then serves).
- :class:`PostStep`: a re-ranking step after the chain; returns the candidates re-ranked.

An instance is built once per policy when the engine is built, from the validated parameters and
a :class:`BuildContext`; the per-request methods are then plain calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from ._clock import Clock
from ._durations import Duration
from ._isolation import StepBulkhead
from ._model import Candidate, RequestContext, Signals
from ._readings import Reading
from ._sources import BoundSource, SourceRuntime
from ._trace import Trace
from .events import EventSink

__all__ = [
    "IN_SHADOW",
    "OFFLINE",
    "BuildContext",
    "Guard",
    "PostStep",
    "SourceName",
    "SourceRef",
    "Step",
    "StepKind",
    "StepParams",
    "Tier",
    "TierParams",
    "source_fields",
]

T = TypeVar("T")

#: True while the current decision runs a policy in shadow mode. A step that writes state other
#: policies read (a shared cache) skips the write then: a policy in shadow changes nothing.
#: A context variable: right per thread and per asyncio task.
IN_SHADOW: ContextVar[bool] = ContextVar("resilience_in_shadow", default=False)

#: True while an engine is built only to check a policy file (``resilience validate``): steps
#: make no connection and read no secret then. Read it through :attr:`BuildContext.offline`.
OFFLINE: ContextVar[bool] = ContextVar("resilience_offline", default=False)


class StepKind(StrEnum):
    """Where in a policy a step type may appear."""

    TIER = "tier"  # under ``chain``
    GUARD = "guard"  # under ``guards``
    POST = "post"  # under ``post``


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Marks a parameter whose value names a source the embedding code must bind."""


#: A parameter naming a source; the engine checks at build time that it is bound.
SourceName = Annotated[str, SourceRef(), Field(min_length=1)]


class StepParams(BaseModel):
    """Base of every step's parameter model: frozen, strict, and unknown keys are errors.

    Strict because YAML already typed every value: ``"3"``, ``yes`` or ``5.0`` where a number,
    a bool or a whole number is meant are mistakes to report, not to coerce.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    def advice(self) -> list[str]:
        """Things valid but unusual about these parameters; ``resilience validate`` prints each
        as a warning (the file still loads). Override to add some."""
        return []


class TierParams(StepParams):
    """Parameters every tier has. Subclasses override ``timeout``'s default."""

    timeout: Duration = Field(
        default=0.010,
        gt=0,
        description="How long this tier may take; the engine gives it the smaller of this and "
        "what the request has left.",
    )


def source_fields(params: StepParams) -> list[tuple[str, str]]:
    """``(field, source name)`` for every bound-source parameter set in ``params``."""
    found: list[tuple[str, str]] = []
    for name, info in type(params).model_fields.items():
        if _is_source_annotation(info.annotation, info.metadata):
            value = getattr(params, name)
            if isinstance(value, str):
                found.append((name, value))
    return found


def _is_source_annotation(annotation: Any, metadata: list[Any]) -> bool:
    if any(isinstance(m, SourceRef) for m in metadata):
        return True
    if get_origin(annotation) is Annotated:
        return any(isinstance(m, SourceRef) for m in get_args(annotation)[1:])
    # Optional[SourceName] arrives as a Union whose members keep their Annotated metadata.
    return any(
        get_origin(arg) is Annotated and any(isinstance(m, SourceRef) for m in get_args(arg)[1:])
        for arg in get_args(annotation)
    )


class BuildContext:
    """What a step gets when it is built. Valid only during the build.

    Attributes:
        policy: the name of the policy being built.
        step_id: this step's id within the policy.
        steps: every step id of the policy -> its kind, in execution order (the last tier is
            the terminal one).
        clock: the engine's clocks.
        events: the engine's event sink, for state changes the step reports.
    """

    def __init__(
        self,
        *,
        policy: str,
        step_id: str,
        clock: Clock,
        steps: Mapping[str, StepKind] | None = None,
        events: EventSink,
        sources: dict[str, SourceRuntime],
        shared: dict[object, Any],
        inherited: Mapping[object, Any] | None = None,
    ) -> None:
        self.policy = policy
        self.step_id = step_id
        self.steps: Mapping[str, StepKind] = steps or {}
        self.clock = clock
        self.events = events
        self._sources = sources
        self._shared = shared
        self._inherited: Mapping[object, Any] = inherited or {}
        self._requested: list[BoundSource] = []
        #: Whether this build only checks a policy file (``resilience validate`` in CI): the
        #: step validates what it can but makes no connection and reads no secret or
        #: environment variable, which CI does not have. The engine is closed right after.
        self.offline = OFFLINE.get()

    @property
    def requested(self) -> tuple[BoundSource, ...]:
        """The sources this step asked for, so far."""
        return tuple(self._requested)

    def source(self, name: str, expect: type | tuple[type, ...] | None = None) -> BoundSource:
        """The source bound under ``name``, with the protection the file declares for it.

        Args:
            name: a source name from this step's parameters; the engine has checked it is bound.
            expect: the record type(s) the step needs; anything else the source returns is
                ``garbage``, and counts as a failure for the source's breaker.
        """
        view = self._sources[name].view(expect)
        self._requested.append(view)
        return view

    def shared(self, key: object, factory: Callable[[], T]) -> T:
        """An object shared by every step of the engine under ``key``, made on first use.

        Steps use it to share state across policies, e.g. the ``session`` tier feeds the stale
        cache that the ``stale_cache`` tier reads. It is also how state survives a reload: when
        the running engine holds an object under ``key``, the new build gets that object (after
        calling its ``renew()``, if it has one, so that it forgets the old build's wiring; its
        ``settle()``, if it has one, is called once the new build runs, so that what the new
        steps declared on it applies only if the build is not refused). Key
        the object on whatever must match for its state to stay valid, e.g. the step's
        parameters. Shared objects with a ``close()`` method are closed when no build uses them
        any more (the engine closed, or a reload dropped every step that asked for them).
        """
        try:
            found: T = self._shared[key]
        except KeyError:
            pass
        else:
            return found
        if key in self._inherited:
            found = self._inherited[key]
            renew = getattr(found, "renew", None)
            if callable(renew):
                renew()
        else:
            found = factory()
        self._shared[key] = found
        return found


class Step:
    """Base of every step type.

    Class attributes a step type sets:
        name: its name in YAML (``type: name``); lowercase, unique across installed plugins.
        Params: its parameter model, a subclass of :class:`StepParams`.
        kind: set by :class:`Tier`, :class:`Guard` or :class:`PostStep`.
    """

    name: ClassVar[str]
    kind: ClassVar[StepKind]
    Params: ClassVar[type[StepParams]] = StepParams

    #: Why this step type cannot run in a bulkhead (``isolation: bulkhead`` is then a
    #: validation error with this reason); ``None``: it can. Set it when a step carries
    #: per-request state between its calls in the caller's thread or task, which a worker
    #: thread would not share back.
    bulkhead_refusal: ClassVar[str | None] = None

    #: The event and metric names this step type emits beyond what every step has (its trace
    #: entry and ``resilience_step_outcomes_total``), each registered with
    #: :func:`~resilience.register_event` or :func:`~resilience.register_metric` (a counter by
    #: its exposed name, with ``_total``). The docs' telemetry table of the step is made from it.
    telemetry: ClassVar[tuple[str, ...]] = ()

    #: The bulkhead the engine runs this step on (``isolation: bulkhead`` in its declaration),
    #: set by the engine after the step is built; ``None``: a plain call. Not for the step.
    isolated_by: StepBulkhead | None = None

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        # Subclasses that override __init__ call this first: the engine reads step_id.
        self.params = params
        self.step_id = context.step_id

    def verify(self) -> str | None:
        """Check wiring that spans steps, once every step of the engine is built.

        A step may also drop wiring it now knows is unused (the ``session`` tier stops feeding
        a cache that no tier reads).

        Returns:
            ``None`` when the step is usable; otherwise what is wrong and how to fix it, which
            rejects the whole engine build (e.g. a ``stale_cache`` whose cache no tier feeds).
        """
        return None

    def observe(self, trace: Trace) -> None:
        """Learn from a finished decision of this step's policy (e.g. an error-rate guard).

        Only steps that override this method are called: once per decision, after the trace is
        built, on the request path, so keep it to a few counter updates. Exceptions are
        reported as ``resilience.engine.internal_error`` and otherwise ignored.
        """

    def readings(self) -> Sequence[Reading]:
        """The state this step holds, for metrics: called when metrics are scraped, never on
        the request path (e.g. a guard's error rate, a lag it watches).

        Label each reading with ``policy`` and ``step`` (the ids this step was built with) so
        that two uses of the step type stay apart; keep label values few (no user or request
        data). A step whose state is shared by several builds reports it once per build that
        runs. Exceptions are ignored (the scrape goes on without this step's readings).
        """
        return ()

    def close(self) -> None:
        """Release what the step holds. Called once: when its engine closes, or when a reload
        replaced it (after requests in flight on it had time to finish). Objects it got from
        :meth:`BuildContext.shared` are not its to close: they may live on in the next build."""


class Tier(Step):
    """One link of the degradation chain.

    Subclasses implement :meth:`run`, and :meth:`arun` when they read sources that async
    callers must await (``BoundSource.awaits``). The engine works out from the sources a tier
    asked for whether :meth:`arun` is awaited (``awaits``) and whether the tier can run in
    ``decide()`` at all (``async_only``); a tier awaiting something else sets ``awaits`` itself.

    Class attributes:
        terminal: true for a tier that cannot fail and needs no data (``unpersonalized``).
            Only a terminal tier may end a chain; its signals are not applied.
    """

    kind: ClassVar[StepKind] = StepKind.TIER
    Params: ClassVar[type[StepParams]] = TierParams
    terminal: ClassVar[bool] = False

    #: True when :meth:`arun` must be awaited (it reads an async or bulkhead source).
    awaits: bool = False
    #: True when the tier cannot run in ``decide()`` (it reads an async source).
    async_only: bool = False

    def __init__(self, params: StepParams, context: BuildContext) -> None:
        super().__init__(params, context)
        assert isinstance(params, TierParams), "the plugin host admits only TierParams"
        #: This tier's own timeout in seconds, read once here so a request pays no lookup.
        self.timeout: float = params.timeout

    def run(self, request: RequestContext, timeout: float) -> Signals | None:
        """Produce signals for ``request``, or ``None`` for a miss (no data: not a failure).

        Args:
            request: the request.
            timeout: seconds this tier has left (its own timeout or what the request has left,
                whichever is smaller). Pass it on to network clients.

        Raises:
            Exception: any exception is recorded as the ``error`` outcome.
        """
        raise NotImplementedError

    async def arun(self, request: RequestContext, timeout: float) -> Signals | None:
        """The asyncio form of :meth:`run`; by default it calls :meth:`run`.

        Called only when ``awaits`` is true; the engine cancels it at the deadline.
        """
        return self.run(request, timeout)


class Guard(Step):
    """A check that runs before the chain, on memory only (no I/O on the request path)."""

    kind: ClassVar[StepKind] = StepKind.GUARD

    def check(self, request: RequestContext) -> str | None:
        """``None`` to let the chain run; otherwise a short reason (``"kill_switch"``) to switch
        personalization off for this request. Exceptions count as ``error`` and let it run; an
        answer that is neither ``None`` nor a non-empty string counts as ``garbage``, likewise."""
        raise NotImplementedError


class PostStep(Step):
    """A re-ranking step; runs in YAML order after the chain has chosen the signals."""

    kind: ClassVar[StepKind] = StepKind.POST

    def apply(
        self,
        request: RequestContext,
        signals: Signals | None,
        candidates: Sequence[Candidate],
    ) -> Sequence[Candidate]:
        """Return the candidates re-ranked (a list or tuple of :class:`Candidate`).

        Args:
            request: the request.
            signals: the signals served, or ``None`` when no personalized tier served.
            candidates: the candidates as the previous post step left them.

        Anything that is not a list or tuple of candidates is ``garbage``: the previous list
        stands. Exceptions count as ``error``, with the same effect.
        """
        raise NotImplementedError
