"""Sources: the embedding service's stores, bound by name, and the protection around each.

A policy names sources (``source: session_store``); the code that builds the engine binds each
name to a callable. A source is called with one key (a session id, a user id, a segment) and
returns the record for it, or ``None`` when it has none (a miss). It may be a plain function or a
coroutine function, and may accept a ``timeout`` keyword: when it does, it receives the seconds
the step has left, so that a network client can set its socket timeout from the budget.

The file's ``sources:`` section declares how each source is protected. The wrappers, outermost
first, and why in this order:

1. **breaker**: refuses at once while open; counts one logical call once, however many attempts
   it took (a retry outside the breaker would count every attempt, the Resilience4j trap);
2. **retry**: attempts within the call's timeout, none started that could not finish in time;
3. **isolation**: ``inline`` calls the function in the caller's thread or task; ``bulkhead``
   runs a blocking function on a bounded pool of threads, so the caller stops waiting at the
   cutoff, and a full pool refuses at once (``rejected``);
4. **the function**, given what its attempt has left as ``timeout``.

The engine around them holds the request's deadline; each step gets the smaller of its own
timeout and what is left, and passes it on here.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ._breaker import BreakerOptions, CircuitBreaker
from ._bulkhead import Bulkhead
from ._clock import Clock
from ._errors import BreakerOpen, BulkheadFull, GarbageData
from ._fork import hold_across_forks
from ._redis import RedisOptions, RedisSessionStore
from ._retry import RetryOptions, RetryPolicy
from .events import EventSink

__all__ = [
    "BoundSource",
    "MemorySource",
    "SourceFunction",
    "SourceOptions",
    "SourceRuntime",
    "Store",
]

T = TypeVar("T")

#: How early asyncio may fire a deadline and still be taken for it (timer granularity).
_DEADLINE_SLACK = 0.001

#: The loop time at which the engine cuts the step being awaited (``None`` outside one): lets a
#: source tell a deadline cut from its caller's cancellation.
STEP_DEADLINE: ContextVar[float | None] = ContextVar("resilience_step_deadline", default=None)


class Store(Protocol):
    """A source object serving both sides: ``get`` for ``decide``, ``aget`` for ``adecide``."""

    def get(self, key: str, timeout: float) -> Any:
        """The record for ``key``, or ``None``; waits at most ``timeout`` seconds."""
        ...

    async def aget(self, key: str, timeout: float) -> Any:
        """The asyncio form of :meth:`get`."""
        ...


#: What may be bound as a source: ``fn(key)``, ``fn(key, timeout=...)``, their ``async`` forms,
#: or a :class:`Store` object.
SourceFunction = Callable[..., Any] | Store


class SourceOptions(BaseModel):
    """``sources.NAME``: how one source is protected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    isolation: Literal["inline", "bulkhead"] = Field(
        default="inline",
        description="inline: called in the caller's thread or task (in-memory and async "
        "sources); bulkhead: a bounded pool of threads, for blocking I/O.",
    )
    max_concurrent: int = Field(
        default=8, ge=1, le=1024, description="Calls a bulkhead runs at once; more are rejected."
    )
    breaker: BreakerOptions | None = Field(default=None, description="A circuit breaker.")
    retry: RetryOptions | None = Field(default=None, description="Retries within the budget.")
    redis: RedisOptions | None = Field(
        default=None,
        description="Read this source from Redis (a session store); the engine makes it, "
        "code binds nothing under this name.",
    )


def _is_coroutine_function(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(call)


def _accepts_timeout(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "timeout" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _adapt(target: Callable[..., Any]) -> Callable[[str, float], Any]:
    if _accepts_timeout(target):
        return lambda key, timeout: target(key, timeout=timeout)
    return lambda key, timeout: target(key)


class SourceRuntime:
    """Everything one bound source owns in an engine: its function, breaker, bulkhead, retries.

    Made once per source name when the engine is built; steps get views of it from
    :meth:`view`. Closed with the engine.
    """

    def __init__(
        self,
        name: str,
        target: SourceFunction,
        options: SourceOptions,
        clock: Clock,
        events: EventSink,
    ) -> None:
        self.name = name
        self.target = target
        self.options = options
        self.owned = False  # made by the engine from the policy (and so closed by it)
        #: an object with get(key, timeout) and async aget(key, timeout): serves both sides
        self.dual = callable(getattr(target, "get", None)) and _is_coroutine_function(
            getattr(target, "aget", None)
        )
        if self.dual:
            store: Any = target
            self.is_async = False
            self.function: Callable[[str, float], Any] = store.get
            self.async_function: Callable[[str, float], Any] = store.aget
        else:
            if not callable(target):
                raise TypeError(f"source {name!r} is bound to {target!r}, which is not callable")
            self.is_async = _is_coroutine_function(target)
            self.function = _adapt(target)
            self.async_function = self.function
        #: the target itself when it takes the key alone: guarded calls skip the adapter frame
        self.keyed: Callable[[str], Any] | None = None
        if not self.dual and callable(target) and not _accepts_timeout(target):
            self.keyed = target
        self.breaker = (
            CircuitBreaker(name, options.breaker, clock, events) if options.breaker else None
        )
        self.bulkhead = (
            Bulkhead(name, options.max_concurrent, events)
            if options.isolation == "bulkhead" and not self.is_async
            else None
        )
        self.retry = RetryPolicy(options.retry, clock) if options.retry else None
        self.clock = clock

    def view(self, expect: type | tuple[type, ...] | None = None) -> BoundSource:
        """The source as one step calls it; ``expect`` makes any other return value garbage,
        counted by the breaker as a failure."""
        # Without a breaker there is nothing to feed: the step's own type check suffices.
        return BoundSource(self, expect if self.breaker is not None else None)

    @classmethod
    def from_policy(
        cls, name: str, options: SourceOptions, clock: Clock, events: EventSink
    ) -> SourceRuntime:
        """A source the policy declares fully (``redis:``), made and owned by the engine."""
        assert options.redis is not None
        runtime = cls(name, RedisSessionStore(name, options.redis), options, clock, events)
        runtime.owned = True
        return runtime

    def close(self) -> None:
        if self.bulkhead is not None:
            self.bulkhead.close()
        if self.owned:
            closer = getattr(self.target, "close", None)
            if callable(closer):
                closer()

    async def aclose(self) -> None:
        if self.bulkhead is not None:
            self.bulkhead.close()
        if self.owned:
            closer = getattr(self.target, "aclose", None)
            if closer is not None and _is_coroutine_function(closer):
                await closer()
            else:
                self.close()


class BoundSource:
    """A source as a step sees it, built once at engine build.

    A tier calls ``call(key, timeout)`` from sync code, and ``await acall(key, timeout)`` from
    async code when ``awaits`` is true (else ``call`` serves both). Either returns the record or
    ``None`` (a miss), or raises: ``BreakerOpen``, ``BulkheadFull``, ``TimeoutError``,
    ``GarbageData`` or whatever the source raised.

    Attributes:
        name: the name the policy uses.
        awaits: whether async callers must ``await acall`` (an async function, or a blocking
            one behind a bulkhead, which async callers wait for without blocking the loop).
        is_async: whether the bound function itself is a coroutine function.
    """

    __slots__ = ("acall", "awaits", "call", "is_async", "name", "runtime")

    def __init__(self, runtime: SourceRuntime, expect: type | tuple[type, ...] | None) -> None:
        self.runtime = runtime
        self.name = runtime.name
        self.is_async = runtime.is_async
        self.awaits = runtime.is_async or runtime.dual or runtime.bulkhead is not None
        plain = runtime.breaker is None and runtime.retry is None and runtime.bulkhead is None
        if plain and expect is None:
            # Nothing to guard: the adapted function itself, no extra frame per call.
            self.call: Callable[[str, float], Any] = runtime.function
            self.acall: Callable[[str, float], Any] = runtime.async_function
        else:
            self.call = _guarded_sync(runtime, expect)
            self.acall = _guarded_async(runtime, expect)

    def __repr__(self) -> str:
        return f"<BoundSource {self.name!r} -> {self.runtime.target!r}>"


def _check(value: Any, expect: type | tuple[type, ...] | None, name: str) -> None:
    if value is not None and expect is not None and not isinstance(value, expect):
        expected = (
            expect.__name__ if isinstance(expect, type) else "/".join(t.__name__ for t in expect)
        )
        raise GarbageData.unexpected(value, expected, name)


def _guarded_sync(
    runtime: SourceRuntime, expect: type | tuple[type, ...] | None
) -> Callable[[str, float], Any]:
    name = runtime.name
    breaker = runtime.breaker
    bulkhead = runtime.bulkhead
    retry = runtime.retry
    function = runtime.function
    now = runtime.clock.monotonic

    if runtime.is_async:

        def refuse(key: str, timeout: float) -> Any:
            raise TypeError(f"source {name!r} is async: call it from adecide()")

        return refuse

    once: Callable[[str, float], Any] = function
    if bulkhead is not None:

        def isolated(key: str, timeout: float) -> Any:
            return bulkhead.call(function, key, timeout, timeout=timeout)

        once = isolated

    attempts = once
    if retry is not None:

        def retried(key: str, timeout: float) -> Any:
            return retry.call(lambda cutoff: once(key, cutoff), timeout)

        attempts = retried

    if breaker is None:

        def unguarded(key: str, timeout: float) -> Any:
            value = attempts(key, timeout)
            _check(value, expect, name)
            return value

        return unguarded

    keyed = runtime.keyed
    if keyed is not None and attempts is function:
        return _guarded_keyed(breaker, keyed, expect, name, now)

    def guarded(key: str, timeout: float) -> Any:
        ticket = breaker.permit()
        if ticket is None:
            raise BreakerOpen(name)
        t0 = now()
        try:
            value = attempts(key, timeout)
            _check(value, expect, name)
        except BaseException as exc:
            _record_error(breaker, ticket, exc)
            raise
        _record_return(breaker, ticket, value, now() - t0, timeout)
        return value

    return guarded


def _guarded_keyed(
    breaker: CircuitBreaker,
    keyed: Callable[[str], Any],
    expect: type | tuple[type, ...] | None,
    name: str,
    now: Callable[[], float],
) -> Callable[[str, float], Any]:
    """``guarded`` for the common case, flattened: a breaker alone around a function of the key.

    The same steps as the general form, with the adapter, the type check and the report made
    in this one frame: three Python calls fewer per read, twice per request on the happy path
    (the session and the profile read); measured, 2,600 fewer instructions per decision (1.4%).
    """
    permit = breaker.permit
    record = breaker.record

    def guarded(key: str, timeout: float) -> Any:
        ticket = permit()
        if ticket is None:
            raise BreakerOpen(name)
        t0 = now()
        try:
            value = keyed(key)
            if value is not None and expect is not None and not isinstance(value, expect):
                _check(value, expect, name)  # raises GarbageData
        except BaseException as exc:
            _record_error(breaker, ticket, exc)
            raise
        elapsed = now() - t0
        if value is None:
            breaker.release(ticket)  # a miss says nothing about the store's health
        else:  # as _record_return: an inline call cannot be cut, so an overrun failed
            overran = elapsed > timeout
            record(
                ticket,
                failed=overran,
                slow=overran or elapsed > (breaker.slow_call_duration or timeout),
            )
        return value

    return guarded


def _record_error(breaker: CircuitBreaker, ticket: int, exc: BaseException) -> None:
    """Tell ``breaker`` how a call that raised ``exc`` went."""
    if isinstance(exc, BulkheadFull):
        if exc.stuck:  # slots held by calls that never came back: the store hangs
            breaker.record(ticket, failed=True, slow=True)
        else:
            breaker.release(ticket)  # busy, not broken: no news of its health
    elif isinstance(exc, TimeoutError):
        breaker.record(ticket, failed=True, slow=True)
    else:
        breaker.record(ticket, failed=True, slow=False)


def _record_return(
    breaker: CircuitBreaker, ticket: int, value: Any, elapsed: float, timeout: float
) -> None:
    """Tell ``breaker`` how a call that returned ``value`` after ``elapsed`` seconds went."""
    if value is None:
        breaker.release(ticket)  # a miss says nothing about the store's health
        return
    # An inline call cannot be cut: one that overran is a timeout, and slow.
    overran = elapsed > timeout
    breaker.record(
        ticket, failed=overran, slow=overran or elapsed > (breaker.slow_call_duration or timeout)
    )


def _guarded_async(
    runtime: SourceRuntime, expect: type | tuple[type, ...] | None
) -> Callable[[str, float], Any]:
    name = runtime.name
    breaker = runtime.breaker
    bulkhead = runtime.bulkhead
    retry = runtime.retry
    function = runtime.function
    now = runtime.clock.monotonic

    async def isolated(key: str, timeout: float) -> Any:
        assert bulkhead is not None
        return await bulkhead.acall(function, key, timeout)

    async def inline(key: str, timeout: float) -> Any:
        result = function(key, timeout)
        return await result if runtime.is_async else result

    # The fewest coroutine layers that do the job: each one costs a frame per call.
    once: Callable[[str, float], Awaitable[Any]] = isolated if bulkhead is not None else inline
    if bulkhead is None and (runtime.is_async or runtime.dual):
        once = runtime.async_function
    attempts = once
    if retry is not None:

        def retried(key: str, timeout: float) -> Awaitable[Any]:
            return retry.acall(lambda cutoff: once(key, cutoff), timeout)

        attempts = retried

    if breaker is None:

        async def unguarded(key: str, timeout: float) -> Any:
            value = await attempts(key, timeout)
            _check(value, expect, name)
            return value

        return unguarded

    keyed = runtime.keyed if attempts is runtime.async_function and runtime.is_async else None

    async def guarded(key: str, timeout: float) -> Any:
        ticket = breaker.permit()
        if ticket is None:
            raise BreakerOpen(name)
        t0 = now()
        # When a cancel counts as a cut: this call's own deadline, or the step's if earlier. A
        # caller may cut before the step's deadline (the session tier cuts its profile read at
        # profile_timeout): judged by the step's deadline alone, that cut looked like the
        # caller's cancel, and a hanging store never tripped its breaker.
        cut_at = asyncio.get_running_loop().time() + timeout
        step_deadline = STEP_DEADLINE.get()
        if step_deadline is not None and step_deadline < cut_at:
            cut_at = step_deadline
        try:
            # a coroutine function of the key alone is awaited without its adapter's frame
            value = await (keyed(key) if keyed is not None else attempts(key, timeout))
            if value is not None and expect is not None and not isinstance(value, expect):
                _check(value, expect, name)  # raises GarbageData
        except asyncio.CancelledError:
            # Cut at a deadline: a timeout. Cancelled earlier by the caller: no news. Judged on
            # the loop's clock, which asyncio's deadlines run on.
            if asyncio.get_running_loop().time() >= cut_at - _DEADLINE_SLACK:
                breaker.record(ticket, failed=True, slow=True)
            else:
                breaker.release(ticket)
            raise
        except BaseException as exc:
            _record_error(breaker, ticket, exc)
            raise
        elapsed = now() - t0
        if value is None:
            breaker.release(ticket)
        else:
            overran = elapsed > timeout
            breaker.record(
                ticket,
                failed=overran,
                slow=overran or elapsed > (breaker.slow_call_duration or timeout),
            )
        return value

    return guarded


class MemorySource(Generic[T]):
    """An in-process source backed by a dict: for defaults, examples, tests and the simulator.

    Safe to update from other threads while the engine reads it.
    """

    def __init__(self, data: Mapping[str, T] | None = None) -> None:
        self._data: MutableMapping[str, T] = dict(data or {})
        self._lock = threading.Lock()
        hold_across_forks(self, "_lock", rank=2)

    def __call__(self, key: str) -> T | None:
        return self._data.get(key)

    def set(self, key: str, value: T) -> None:
        """Store ``value`` under ``key``."""
        with self._lock:
            self._data[key] = value

    def delete(self, key: str) -> None:
        """Forget ``key``; later reads miss."""
        with self._lock:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def __repr__(self) -> str:
        return f"<MemorySource with {len(self._data)} keys>"
