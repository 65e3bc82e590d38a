"""Flags from an OpenFeature provider: the application's flag service as a source.

The application sets its provider as OpenFeature says (``openfeature.api.set_provider(...)``,
optionally for a domain); this feed asks that provider for the flag keys the running policies
define. Evaluations may go over the network, so they never run on the request path: a
background thread evaluates every key each ``refresh_every``, and at once when the provider
reports a change (``PROVIDER_CONFIGURATION_CHANGED``), that it is ready, in error or stale. The
SDK's handler only wakes the thread; nothing is evaluated on the SDK's event threads.

Each key is evaluated as a string flag with the default (empty) evaluation context; a flag the
provider holds as a boolean (``TYPE_MISMATCH``) is evaluated again as one and read as ``"on"``
or ``"off"``. What a snapshot holds:

- a flag the provider does not know (``FLAG_NOT_FOUND``) is absent;
- a flag that is neither a string nor a boolean, or that needs a targeting key or context, is
  left out and named in the snapshot's ``error``;
- a provider that is not ready, in error or fatal, or any other evaluation error (the SDK's
  ``GENERAL`` for a provider that raised or timed out, ``PARSE_ERROR``), gives ``flags=None``
  with the error: the board keeps the last values, marked stale; a provider outage never flips
  a flag;
- ``reason`` and ``by`` come from the flag's metadata keys of those names when the provider
  sets them (``by`` is else the provider's name); ``at`` is unknown (0.0).

The thread delivers a snapshot only when it differs from the last one it delivered (a ``None``
once per outage); :meth:`OpenFeatureFlagFeed.refresh` always delivers.

After ``os.fork`` a fork handler starts the thread again in the child. The SDK's own event
threads do not survive a fork, so in a child provider events may not arrive: the periodic
evaluation still does.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ._durations import Duration
from ._flag_feed import Deliver, FeedSnapshot, FlagRecord
from ._fork import follow_forks, forget_forks

if TYPE_CHECKING:
    from openfeature.client import OpenFeatureClient
    from openfeature.event import EventDetails
    from openfeature.flag_evaluation import FlagEvaluationDetails

__all__ = ["OpenFeatureFlagFeed", "OpenFeatureOptions"]


class OpenFeatureOptions(BaseModel):
    """``settings.flags.openfeature``: read flags from the application's OpenFeature provider."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    domain: str | None = Field(
        default=None,
        description="The OpenFeature client domain whose provider holds the flags (the "
        "application sets it with openfeature.api.set_provider); the default provider if unset.",
    )
    refresh_every: Duration = Field(
        default=5.0,
        gt=0,
        description="How often every flag is evaluated again (provider change events also "
        "trigger a refresh at once).",
    )


class _UnreadableError(Exception):
    """The provider could not be read: the snapshot is ``flags=None``."""


# One client per domain: the SDK keeps client handlers keyed by client object, and an entry
# stays behind after its handlers are removed.
_CLIENTS: dict[str | None, OpenFeatureClient] = {}


class OpenFeatureFlagFeed:
    """Flags evaluated from an OpenFeature provider by one background thread.

    Args:
        options: the client domain and how often to evaluate.
        wall: the wall clock, for :attr:`last_read`.
    """

    name = "openfeature"

    def __init__(
        self,
        options: OpenFeatureOptions | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        from openfeature import api  # noqa: PLC0415 - the optional extra
        from openfeature.event import ProviderEvent  # noqa: PLC0415

        self.options = options or OpenFeatureOptions()
        domain = self.options.domain
        client = _CLIENTS.get(domain)
        if client is None:
            client = _CLIENTS.setdefault(domain, api.get_client(domain))
        self._client = client
        self._events = (
            ProviderEvent.PROVIDER_READY,
            ProviderEvent.PROVIDER_CONFIGURATION_CHANGED,
            ProviderEvent.PROVIDER_ERROR,
            ProviderEvent.PROVIDER_STALE,
        )
        self._wall = wall
        self._lock = threading.RLock()  # one evaluate-and-deliver at a time, in order
        self._deliver: Deliver | None = None
        self._keys: Callable[[], Sequence[str]] = tuple
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler = self._on_provider_event
        self._last: FeedSnapshot | None = None
        #: wall-clock time of the last evaluation the provider answered, or ``None``
        self.last_read: float | None = None

    def __repr__(self) -> str:
        return f"<OpenFeatureFlagFeed domain={self.options.domain!r}>"

    # --- the FlagFeed protocol ----------------------------------------------------------------

    def start(self, deliver: Deliver, keys: Callable[[], Sequence[str]]) -> None:
        """Evaluate every key once and deliver, then listen to the provider's events and
        evaluate again in the background."""
        if self._thread is not None:
            raise RuntimeError("this feed is already started")
        self._deliver, self._keys = deliver, keys
        self._round(always=True)
        self._launch()
        for event in self._events:
            self._client.add_handler(event, self._handler)

    def refresh(self) -> None:
        """Evaluate every key now and deliver the snapshot. Does nothing before :meth:`start`
        or after :meth:`stop`."""
        if self._deliver is not None:
            self._round(always=True)

    def stop(self) -> None:
        """Remove the event handlers and stop the thread. Idempotent; returns within ~1 s
        (an evaluation still running then is abandoned: the thread is a daemon)."""
        forget_forks(self)
        for event in self._events:
            with contextlib.suppress(ValueError):  # not there: already removed or cleared
                self._client.remove_handler(event, self._handler)
        self._stop.set()
        self._deliver = None  # an evaluation still in flight delivers nothing
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(1.0)

    # --- evaluating ---------------------------------------------------------------------------

    def _on_provider_event(self, details: EventDetails) -> None:
        """On the SDK's event thread: only wake ours."""
        self._wake.set()

    def _round(self, *, always: bool = False) -> None:
        """Evaluate every key; deliver when ``always`` or when it differs from the last."""
        with self._lock:
            try:
                snapshot = self._read()
                self.last_read = self._wall()
            except _UnreadableError as exc:
                snapshot = FeedSnapshot(self.name, None, str(exc))
            except Exception as exc:  # a provider or a keys() callback with a bug
                snapshot = FeedSnapshot(self.name, None, f"evaluating flags failed: {exc!r}")
            last = self._last
            repeated = last is not None and (
                last == snapshot or (last.flags is None and snapshot.flags is None)
            )
            self._last = snapshot
            if always or not repeated:
                deliver = self._deliver
                if deliver is not None:
                    with contextlib.suppress(Exception):
                        deliver(snapshot)

    def _read(self) -> FeedSnapshot:
        from openfeature.exception import ErrorCode  # noqa: PLC0415
        from openfeature.provider import ProviderStatus  # noqa: PLC0415

        client = self._client
        provider_name = client.provider.get_metadata().name
        status = client.get_provider_status()
        if status in (ProviderStatus.NOT_READY, ProviderStatus.ERROR, ProviderStatus.FATAL):
            raise _UnreadableError(
                f"OpenFeature provider {provider_name!r}{self._domain()} is "
                f"{status.value}; keeping the last flags read"
            )
        flags: dict[str, FlagRecord] = {}
        refused: list[str] = []
        for key in list(self._keys()):
            details: FlagEvaluationDetails[Any] = client.get_string_details(key, "")
            value: str | None = details.value if details.error_code is None else None
            if details.error_code == ErrorCode.TYPE_MISMATCH:
                details = client.get_boolean_details(key, False)
                if details.error_code is None:
                    value = "on" if details.value else "off"
            code = details.error_code
            if code is None and value is not None:
                flags[key] = _record(details, value, provider_name)
            elif code == ErrorCode.FLAG_NOT_FOUND:
                continue
            elif code == ErrorCode.TYPE_MISMATCH:
                refused.append(f"{key!r} (neither a string nor a boolean)")
            elif code in (ErrorCode.TARGETING_KEY_MISSING, ErrorCode.INVALID_CONTEXT):
                refused.append(f"{key!r} ({code.value}: needs an evaluation context)")
            else:
                message = f": {details.error_message}" if details.error_message else ""
                raise _UnreadableError(
                    f"OpenFeature provider {provider_name!r}{self._domain()} could not "
                    f"evaluate {key!r} ({code}{message}); keeping the last flags read"
                )
        error = ""
        if refused:
            error = f"left out flags the provider {provider_name!r} holds: {', '.join(refused)}"
        stale = status == ProviderStatus.STALE
        if stale:
            note = f"the provider {provider_name!r} reports its flags as stale"
            error = f"{note}; {error}" if error else note
        return FeedSnapshot(self.name, flags, error, stale)

    def _domain(self) -> str:
        domain = self.options.domain
        return f" (domain {domain!r})" if domain is not None else ""

    # --- the thread ---------------------------------------------------------------------------

    def _launch(self) -> None:
        self._stop = stop = threading.Event()
        self._wake = wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(stop, wake), name="resilience-flags-openfeature", daemon=True
        )
        follow_forks(self)
        self._thread.start()

    def _restart_after_fork(self) -> None:
        """In a forked child: the thread is gone; its lock may have been held at the fork."""
        if self._thread is None or self._stop.is_set():
            return
        self._lock = threading.RLock()
        self._launch()

    def _run(self, stop: threading.Event, wake: threading.Event) -> None:
        while True:
            wake.wait(self.options.refresh_every)
            if stop.is_set():
                return
            wake.clear()  # a wake from here on asks for another round
            self._round()


def _record(details: FlagEvaluationDetails[Any], value: str, provider_name: str) -> FlagRecord:
    metadata = details.flag_metadata or {}
    reason = metadata.get("reason")
    by = metadata.get("by")
    return FlagRecord(
        value,
        reason if isinstance(reason, str) else "",
        by if isinstance(by, str) else provider_name,
    )
