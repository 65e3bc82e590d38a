"""What a flag source is: the contract between the flag board and the places flags come from.

A feed reads flags from one place (the environment, a file, Redis, an OpenFeature provider) off
the request path and hands the board a whole snapshot each time it has read one. The board
merges the snapshots by precedence, validates keys and values against the running policies,
reports every change as an event, and re-plans the engine; the request path reads only the
result, in memory.

A feed never decides what a value means: it delivers raw strings, with who set them and why
when its place records that. A feed that cannot read its place delivers ``flags=None`` with the
error, and the board keeps what that feed last delivered, marked stale: an unreachable source
never flips a flag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

__all__ = ["Deliver", "FeedSnapshot", "FlagFeed", "FlagRecord"]


class FlagRecord(NamedTuple):
    """One flag as a source holds it.

    Attributes:
        value: the raw value (``"on"``, ``"off"``, ``"shadow"``; ``"true"``/``"false"`` are read
            as on/off). The board validates it.
        reason: why it was set, when the source records it (the CLI's ``--reason``).
        by: who set it, when the source records it.
        at: when it was set (wall-clock seconds), or 0.0 when unknown.
    """

    value: str
    reason: str = ""
    by: str = ""
    at: float = 0.0


class FeedSnapshot(NamedTuple):
    """Everything one feed read in one go.

    Attributes:
        source: the feed's name (``"redis"``, ``"file"``, ``"openfeature"``, ``"env"``).
        flags: flag key -> record; ``None`` when the source could not be read (the board then
            keeps the last snapshot it had from this feed and reports it stale).
        error: why it could not be read (or why part of it was refused), else ``""``.
        stale: the source answered, but says its values may be out of date (an OpenFeature
            provider in state STALE): they count, reported stale.
    """

    source: str
    flags: Mapping[str, FlagRecord] | None
    error: str = ""
    stale: bool = False


#: How a feed hands a snapshot to the board. Thread-safe; never raises.
Deliver = Callable[[FeedSnapshot], None]


class FlagFeed(Protocol):
    """One source of flags. Made from the policy's ``settings.flags``; owned by one engine.

    Attributes:
        name: the source's name in traces, events and ``resilience flags list``.
    """

    name: str

    def start(self, deliver: Deliver, keys: Callable[[], Sequence[str]]) -> None:
        """Read the source once (delivering a snapshot before returning, so the engine starts
        with what is known), then keep watching it in the background until :meth:`stop`.

        Args:
            deliver: where snapshots go.
            keys: the flag keys the running policies define; a source that cannot list its
                flags (OpenFeature) asks for these.
        """
        ...

    def refresh(self) -> None:
        """Read the source now and deliver what was read (the CLI and tests use it)."""
        ...

    def stop(self) -> None:
        """Stop watching and release connections. Idempotent; returns within a second."""
        ...
