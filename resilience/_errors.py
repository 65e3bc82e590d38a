"""Every exception this package raises, under one base.

The tree::

    ResilienceError
    ├── PolicyError                 load time: the policy file or its wiring is wrong
    │   ├── PolicyValidationError   the file is invalid; carries every issue found in one pass
    │   └── SourceBindingError      the policy names sources the embedding code did not bind
    ├── PluginError                 a plugin failed to import or clashes with another one
    ├── GarbageData                 raised by a step per request: its data is malformed
    ├── BreakerOpen                 a source's circuit breaker refused the call (breaker_open)
    └── BulkheadFull                a source's bulkhead had no free slot (rejected)

The engine never raises to its caller: it turns every failure of a step into a recorded outcome
(``GarbageData`` into ``garbage``, anything else into ``error``). The others reach the code that
*loads* policies and plugins, and the CLI, which prints them without a traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BreakerOpen",
    "BulkheadFull",
    "GarbageData",
    "PluginError",
    "PolicyError",
    "PolicyIssue",
    "PolicyValidationError",
    "ResilienceError",
    "SourceBindingError",
]


class ResilienceError(Exception):
    """Base of every exception raised by this package."""


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One thing wrong with a policy file, with where it is and how to fix it.

    Args:
        file: the file name as given to the loader (``"<string>"`` for text).
        line: 1-based line of the offending node, or 0 when the file as a whole is at fault.
        column: 1-based column, or 0.
        path: dotted path of the key, e.g. ``policies.search.chain[1].max_age``.
        message: what is wrong.
        hint: how to fix it; may be empty.
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: {what} ({self.hint})" if self.hint else f"{where}: {what}"

    def as_dict(self) -> dict[str, object]:
        """The issue as plain data, for ``resilience validate --format json``."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class PolicyError(ResilienceError):
    """A policy could not be loaded or compiled; nothing of it took effect."""


class PolicyValidationError(PolicyError):
    """The policy file is invalid. ``issues`` holds every problem found, in file order."""

    def __init__(self, issues: Iterable[PolicyIssue]) -> None:
        self.issues: tuple[PolicyIssue, ...] = tuple(
            sorted(issues, key=lambda i: (i.file, i.line, i.column, i.path))
        )
        count = len(self.issues)
        lines = "\n".join(str(i) for i in self.issues)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in policy file:\n{lines}")


class SourceBindingError(PolicyValidationError):
    """The policy names sources that the code building the engine did not bind."""


class PluginError(ResilienceError):
    """A plugin failed to load or registered a step type that clashes with another.

    Args:
        plugin: the name of the plugin at fault (entry-point name or registration name).
        message: what went wrong and how to fix it.
    """

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}")


class GarbageData(ResilienceError, ValueError):  # noqa: N818 - names the outcome it causes
    """A step's source returned data of the wrong shape; the step is recorded as ``garbage``.

    Raise it from a tier or post step instead of returning half-parsed data.
    """

    @classmethod
    def unexpected(cls, value: object, expected: str, source: str) -> GarbageData:
        """The error for a source that returned ``value`` where ``expected`` was due.

        An awaitable from a source called synchronously (a lambda or sync wrapper around an
        async client) is closed, so that it does not warn "never awaited", and named as such.
        """
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if callable(close):
                close()
            return cls(
                f"source {source!r} returned an awaitable to sync code: bind the async "
                "function itself, not a sync wrapper around it"
            )
        return cls(f"source {source!r} returned {type(value).__name__}, not {expected}")


class BreakerOpen(ResilienceError):  # noqa: N818 - names the outcome it causes
    """A source's circuit breaker refused the call; the step is recorded as ``breaker_open``.

    Args:
        source: the source whose breaker is open.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__(f"circuit breaker of source {source!r} is open")


class BulkheadFull(ResilienceError):  # noqa: N818 - names the outcome it causes
    """A bulkhead had no free slot; the step is recorded as ``rejected``.

    Args:
        source: the source whose bulkhead is full (``policy.step`` for a step's own bulkhead).
        limit: how many calls it admits at once.
        stuck: how many of its slots are held by calls their callers gave up on: a sign that
            the store hangs, which its breaker counts as a failure.
        kind: what ``source`` names: ``source`` or ``step``.
    """

    def __init__(self, source: str, limit: int, stuck: int = 0, *, kind: str = "source") -> None:
        self.source = source
        self.limit = limit
        self.stuck = stuck
        super().__init__(
            f"bulkhead of {kind} {source!r} is full ({limit} calls in flight, "
            f"{stuck} of them abandoned)"
        )
