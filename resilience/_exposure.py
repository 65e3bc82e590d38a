"""The exposure log: one record per decision and per click, for measuring lift offline.

A decision hands the log its trace, the user id and the list it served; a record is built and
written on a thread of the log's own, never on the request path. The queue between them is
bounded: when it is full the record is dropped and counted (``ExposureLog.dropped``), so a slow
disk costs records, never latency. Records are JSON objects, one per line by default
(:class:`JsonLinesSink`):

- ``{"kind": "exposure", "at", "request_id", "user", "bucket", "group", "policy",
  "config_version", "served", "reason", "exploration": [{"item", "position", "propensity"}]}``
- ``{"kind": "click", "at", "request_id", "user", "group", "policy", "served", "item"}``

``user`` is a salted hash of the user id (the first 16 hex digits of SHA-256 of
``salt + ":" + user_id``), never the id itself; ``bucket`` is the holdout bucket under the
policy's holdout, or null.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TextIO

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
)

from ._fork import follow_forks, forget_forks
from ._holdout import bucket as holdout_bucket
from ._holdout import salted_digest
from ._model import Candidate
from ._secrets import REDACTED, read_secret_file
from ._trace import Trace

__all__ = ["ExposureLog", "ExposureSettings", "ExposureSink", "JsonLinesSink", "user_hash"]


class ExposureSettings(BaseModel):
    """``settings.exposures``: where exposure and click records go.

    The salt is a secret: whoever has it can hash guessed user ids and find them in the log.
    So it is shown as ``***`` (``repr``, the dump that ``resilience explain`` prints and file
    versions hash), and ``resilience validate`` warns when the policy file holds it.
    """

    # No input in error messages: it would show the salt.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    #: the key :meth:`advice` is about, for the line ``resilience validate`` names
    ADVICE_AT: ClassVar[str] = "user_salt"

    path: str = Field(min_length=1, description="JSON Lines file the records are appended to.")
    user_salt: str | None = Field(default=None, description="Salt of the user hash.")
    user_salt_env: str | None = Field(
        default=None, description="Environment variable holding the salt (keeps it out)."
    )
    user_salt_file: str | None = Field(
        default=None,
        min_length=1,
        validate_default=True,
        description="Or a file holding it (a mounted secret; one trailing newline dropped).",
    )
    capacity: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Records queued at most; more are dropped."
    )

    # A field validator, not a model one: a failed model validator shows its whole input,
    # the salt included, in its error's text.
    @field_validator("user_salt_file")
    @classmethod
    def _one_salt(cls, user_salt_file: str | None, info: ValidationInfo) -> str | None:
        given = [
            info.data.get("user_salt"),
            info.data.get("user_salt_env"),
            user_salt_file,
        ]
        if sum(value is not None for value in given) != 1:
            raise ValueError(
                "the user hash needs a salt; give exactly one of user_salt and user_salt_env "
                "(or user_salt_file)"
            )
        return user_salt_file

    @field_serializer("user_salt")
    def _masked(self, salt: str | None) -> str | None:
        return None if salt is None else REDACTED

    @model_serializer(mode="wrap")
    def _without_unset_file(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Left out while unset: a file version hashes the dump, and a declaration without it
        # keeps the version it had before the key existed.
        dumped = handler(self)
        if isinstance(dumped, dict) and dumped.get("user_salt_file", "") is None:
            del dumped["user_salt_file"]
        return dumped

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, REDACTED if name == "user_salt" and value is not None else value

    def advice(self) -> list[str]:
        """Valid but unwise: ``resilience validate`` prints each as a warning."""
        if self.user_salt is not None:
            return [
                "user_salt is in the policy file: whoever reads it can hash guessed user ids "
                "and find them in the exposure log; give user_salt_env or user_salt_file"
            ]
        return []

    def salt(self) -> str:
        """The salt, read from the environment or the file when so declared.

        Raises:
            ValueError: the environment variable is not set, or the file cannot be read or is
                empty (the message names the option, never the salt).
        """
        if self.user_salt is not None:
            return self.user_salt
        if self.user_salt_file is not None:
            return read_secret_file(self.user_salt_file, "user_salt_file")
        value = os.environ.get(self.user_salt_env or "")
        if not value:
            raise ValueError(
                f"environment variable {self.user_salt_env} (user_salt_env) is not set"
            )
        return value


class ExposureSink(Protocol):
    """Where records go. Called from the log's thread only."""

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one record."""
        ...

    def flush(self) -> None:
        """Make what was written durable enough (called when the queue runs empty)."""
        ...

    def close(self) -> None:
        """Release the destination."""
        ...


class JsonLinesSink:
    """Appends records as JSON lines to ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: TextIO = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _after_fork(self) -> None:
        # The parent's file object (its buffer, its lock, perhaps held at the fork) is the
        # parent's: the child appends through a file of its own, and never touches the old one.
        self._abandoned = self._file
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()


def user_hash(salt: str, user_id: str) -> str:
    """The salted hash a record carries instead of the user id."""
    return salted_digest(salt, user_id).hex()[:16]


_STOP = object()


class ExposureLog:
    """The bounded queue and the writer thread. Thread-safe; :meth:`close` drains and stops.

    Args:
        sink: where records go.
        salt: the salt of the user hash.
        capacity: records queued at most.
        wall: the wall clock (``at``).
        holdouts: policy name -> holdout salt, for the ``bucket`` field.
        owns_sink: close the sink with the log (not a sink the application passed in).
    """

    def __init__(
        self,
        sink: ExposureSink,
        salt: str,
        capacity: int,
        wall: Callable[[], float],
        holdouts: Mapping[str, str] | None = None,
        *,
        owns_sink: bool = True,
    ) -> None:
        self._sink = sink
        self._owns_sink = owns_sink
        self._salt = salt
        self._wall = wall
        self.holdouts: Mapping[str, str] = dict(holdouts or {})
        self._queue: queue.Queue[Any] = queue.Queue(capacity)
        #: records dropped because the queue was full
        self.dropped = 0
        #: records written
        self.written = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="resilience-exposures", daemon=True)
        self._thread.start()
        follow_forks(self)

    # --- the request side: no I/O, no formatting ---------------------------------------------

    def exposure(self, trace: Trace, user_id: str | None, served: Sequence[Candidate]) -> None:
        """Queue the exposure of one decision (never blocks)."""
        # The holdout salt of the moment travels with the entry: a reload may change it before
        # the record is written.
        salt = self.holdouts.get(trace.policy)
        self._offer(("exposure", self._wall(), trace, user_id, served, salt))

    def click(self, trace: Trace, user_id: str | None, item_id: str | None) -> None:
        """Queue a click on the list of ``trace`` (never blocks)."""
        self._offer(("click", self._wall(), trace, user_id, (), item_id))

    def _offer(self, entry: tuple[Any, ...]) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1  # a slow disk costs records, never latency

    # --- the writer thread --------------------------------------------------------------------

    def _record(self, entry: tuple[Any, ...]) -> dict[str, Any]:
        kind, at, trace, user_id, served, extra = entry
        user = user_hash(self._salt, user_id) if user_id else ""
        record: dict[str, Any] = {
            "kind": kind,
            "at": at,
            "request_id": trace.request_id,
            "user": user,
            "group": trace.group,
            "policy": trace.policy,
        }
        if kind == "click":
            record["served"] = trace.served
            record["item"] = extra
            return record
        salt = extra
        record["bucket"] = holdout_bucket(salt, user_id) if salt and user_id else None
        record["config_version"] = trace.config_version
        record["served"] = trace.served
        record["reason"] = trace.reason.value
        record["exploration"] = [
            {"item": c.item_id, "position": position, "propensity": c.propensity}
            for position, c in enumerate(served)
            if c.propensity is not None
        ]
        return record

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is _STOP:
                break
            with contextlib.suppress(Exception):
                self._sink.write(self._record(entry))
                self.written += 1
            if self._queue.empty():
                with contextlib.suppress(Exception):
                    self._sink.flush()
        with contextlib.suppress(Exception):
            self._sink.flush()

    def close(self) -> None:
        """Write what is queued, stop the thread, close the sink. Idempotent."""
        if self._closed:
            return
        self._closed = True
        forget_forks(self)
        # After every record already queued; bounded, for a sink that hangs with a full queue.
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=1.0)
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
        if self._owns_sink and not self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._sink.close()

    def _restart_after_fork(self) -> None:
        # The parent's queued records are the parent's to write.
        self._queue = queue.Queue(self._queue.maxsize)
        after_fork = getattr(self._sink, "_after_fork", None)
        if callable(after_fork):
            after_fork()
        self._thread = threading.Thread(target=self._run, name="resilience-exposures", daemon=True)
        self._thread.start()
