"""Sources: the embedding service's stores, bound by name.

A policy names sources (``source: session_store``); the code that builds the engine binds each
name to a callable. A source is called with one key (a session id, a user id, a segment) and
returns the record for it, or ``None`` when it has none (a miss). It may be a plain function or a
coroutine function, and may accept a ``timeout`` keyword: when it does, it receives the seconds
the step has left, so that a network client can set its socket timeout from the budget.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

__all__ = ["BoundSource", "MemorySource", "SourceFunction"]

T = TypeVar("T")

#: What may be bound as a source: ``fn(key)``, ``fn(key, timeout=...)``, or their ``async`` forms.
SourceFunction = Callable[..., Any]


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


class BoundSource:
    """A source as a step sees it, adapted once at engine build.

    Attributes:
        name: the name the policy uses.
        call: ``call(key, timeout)``; returns the record, ``None``, or (if ``is_async``) an
            awaitable of them.
        is_async: whether ``call`` returns an awaitable that the step must await.
    """

    __slots__ = ("call", "is_async", "name", "target")

    def __init__(self, name: str, target: SourceFunction) -> None:
        if not callable(target):
            raise TypeError(f"source {name!r} is bound to {target!r}, which is not callable")
        self.name = name
        self.target = target
        self.is_async = _is_coroutine_function(target)
        if _accepts_timeout(target):
            self.call: Callable[[str, float], Any] = lambda key, timeout: target(
                key, timeout=timeout
            )
        else:
            self.call = lambda key, timeout: target(key)

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "sync"
        return f"<BoundSource {self.name!r} {kind} -> {self.target!r}>"


class MemorySource(Generic[T]):
    """An in-process source backed by a dict: for defaults, examples, tests and the simulator.

    Safe to update from other threads while the engine reads it.
    """

    def __init__(self, data: Mapping[str, T] | None = None) -> None:
        self._data: MutableMapping[str, T] = dict(data or {})
        self._lock = threading.Lock()

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
