"""The flags file: flags kept in a YAML file, read by :class:`FileFlagFeed` and written by
:func:`write_flag_file` (``resilience flags set --file``).

The format::

    # flags.yaml
    flags:
      search: off                        # short form: the value
      search.session:                    # long form
        value: off
        reason: "session store incident INC-123"
        by: alice
        at: 1764172800.0                 # optional: when it was set (wall-clock seconds)

Values are passed on raw (the board decides what they mean); YAML booleans become ``on`` and
``off``, whichever way the reader resolves ``off`` (a YAML 1.1 reader reads it as ``false``).

What each state of the file means to the board:

- valid: a snapshot of its flags; ``flags: {}`` (or an empty ``flags:``) clears them all;
- invalid (bad YAML, wrong shape, an empty file): ``flags=None`` with every problem as
  ``FILE:LINE:COL: path: what is wrong (how to fix it)``. The board keeps what the file said
  last, marked stale: a file saved half-edited never flips a flag. An empty file is invalid
  rather than "no flags" because a non-atomic writer truncates before it writes;
- missing or unreadable: ``flags=None`` too. At start that means "nothing known from this
  file" (the other sources and the policies decide); later, the last values hold, stale.

The file is watched with :class:`~resilience._watch.FileWatch` (in-place writes, atomic renames
and Kubernetes ConfigMap swaps), polled every ``poll_every`` as well.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import yaml

from ._errors import PolicyIssue
from ._flag_feed import Deliver, FeedSnapshot, FlagRecord
from ._fork import hold_across_forks
from ._watch import FileWatch
from ._yaml import Located, Path, format_path, read_yaml

if sys.platform != "win32":
    import fcntl

__all__ = ["FileFlagFeed", "FlagFileError", "parse_flags", "render_flags", "write_flag_file"]

_LONG_FORM = ("value", "reason", "by", "at")
_HEADER = (
    "# Flags for search-resilience. `resilience flags set/clear` rewrites this file in this\n"
    "# form: comments and formatting are not kept.\n"
)


class FlagFileError(OSError):
    """A flags file could not be written: it is invalid (and would be overwritten), or the
    filesystem refused; the message names the file and the fix. An :class:`OSError`, so code
    that handles a failed file write handles this one too (``strerror`` is ``None``: use
    ``str()``)."""


class FileFlagFeed:
    """Flags from a YAML file, delivered when the feed starts and whenever the file changes.

    Args:
        path: the flags file (a symlink is followed at each read: ConfigMaps work).
        debounce: seconds of quiet after a change event before the file is read.
        poll_every: seconds between reads that no event asked for; ``None``: events only.
    """

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        debounce: float = 0.05,
        poll_every: float | None = 5.0,
    ) -> None:
        self._path = os.fspath(path)
        self._abspath = os.path.abspath(self._path)
        self._debounce = debounce
        self._poll_every = poll_every
        # One read-and-deliver at a time: the last snapshot delivered is the last one read.
        self._lock = threading.RLock()
        hold_across_forks(self, "_lock", rank=1)
        self._deliver: Deliver | None = None
        self._watch: FileWatch | None = None

    def __repr__(self) -> str:
        return f"<FileFlagFeed {self._path!r}>"

    # --- the FlagFeed protocol ----------------------------------------------------------------

    def start(self, deliver: Deliver, keys: Callable[[], Sequence[str]]) -> None:
        """Read the file and deliver it, then watch it. ``keys`` is not needed: the file lists
        its flags.

        Raises:
            RuntimeError: the feed was started before.
        """
        with self._lock:
            if self._watch is not None or self._deliver is not None:
                raise RuntimeError("this feed is already started")
            self._deliver = deliver
            # The watch first, the read second: a change after the watch's own first read is
            # an event, and one before it is in our read.
            self._watch = FileWatch(
                self._path,
                self._changed,
                on_error=self._unreadable,
                debounce=self._debounce,
                poll_every=self._poll_every,
                name="resilience-flags-file",
            ).start()
            self.refresh()

    def refresh(self) -> None:
        """Read the file now and deliver what was read (nothing once stopped)."""
        with self._lock:
            deliver = self._deliver
            if deliver is None:
                return
            snapshot = self.read()
            with contextlib.suppress(Exception):  # a deliver never raises; a bug must not kill us
                deliver(snapshot)

    def stop(self) -> None:
        """Stop watching: nothing is delivered after this returns but a delivery already under
        way. Idempotent; returns within about a second."""
        # Without the lock: a delivery in flight holds it while it waits for the board, which
        # may be the very code stopping us.
        self._deliver = None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()

    # --- reading ------------------------------------------------------------------------------

    def read(self) -> FeedSnapshot:
        """The file's flags as a snapshot (``flags=None`` with the error when it cannot be
        used), without delivering it."""
        try:
            data = _read(self._abspath)
        except FileNotFoundError:
            return FeedSnapshot(
                self.name,
                None,
                f"{self._path}: not found (no flags from this file until it exists)",
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            return FeedSnapshot(self.name, None, f"{self._path}: cannot be read ({reason})")
        flags, error = parse_flags(data, self._path)
        return FeedSnapshot(self.name, flags, error)

    def _changed(self, data: bytes) -> None:
        # Read again under the lock rather than deliver ``data``: a refresh() on another thread
        # may have read (and delivered) a newer file since the watch read this one.
        self.refresh()

    def _unreadable(self, exc: OSError) -> None:
        # The file stayed unreadable for a poll round, or its directory cannot be watched: a
        # fresh read tells the board which (flags=None with the reason, or the flags).
        self.refresh()


def parse_flags(
    data: bytes | str, file: str = "<string>"
) -> tuple[dict[str, FlagRecord] | None, str]:
    """Read the text of a flags file.

    Args:
        data: the file's content.
        file: its name, for the error messages.

    Returns:
        ``(flags, "")`` for a valid file, or ``(None, error)`` with every problem, each as
        ``FILE:LINE:COL: path: what is wrong (how to fix it)``, joined by ``"; "``.
    """
    flags, issues, _ = _parse(data, file)
    if flags is None:
        return None, "; ".join(str(issue) for issue in issues)
    return flags, ""


def write_flag_file(
    path: str | os.PathLike[str], key: str, value: str | None, *, reason: str, by: str
) -> None:
    """Set flag ``key`` in a flags file (or, with ``value=None``, remove it), keeping the other
    entries.

    The file is rewritten whole in the long form (comments and formatting are lost), atomically:
    a temporary file in the same directory, then ``os.replace``, so a reader sees the old file
    or the new one, never half of one. A symlink is written through (its target is replaced;
    the link stays). Concurrent writers through this function are serialized by an exclusive
    ``flock`` on the directory (POSIX). Key names are not checked here: the CLI checks them
    against the policies.

    Args:
        path: the flags file; created if missing (mode 0666 less the umask; an existing
            file keeps its mode).
        key: the flag.
        value: its new raw value, or ``None`` to remove it.
        reason: why (kept in the file).
        by: who (kept in the file).

    Raises:
        ValueError: an empty key or value.
        FlagFileError: the file exists but is invalid (it is left alone), or it could not be
            read or written.
    """
    if not key:
        raise ValueError("a flag key cannot be empty")
    if value is not None and not value:
        raise ValueError("a flag value cannot be empty; pass None to remove the flag")
    name = os.fspath(path)
    target = os.path.realpath(name)
    try:
        with _locked(os.path.dirname(target)):
            try:
                data = _read(target)
            except FileNotFoundError:
                data = b""
            flags, issues, blank = _parse(data, name)
            if flags is None:
                if not blank:
                    problems = "; ".join(str(issue) for issue in issues)
                    raise FlagFileError(
                        f"{problems}; fix the flags file (or delete it) before writing to it"
                    )
                flags = {}
            if value is None:
                if key not in flags:
                    return
                del flags[key]
            else:
                flags[key] = FlagRecord(value, reason, by, time.time())
            _replace(target, render_flags(flags).encode("utf-8"))
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise FlagFileError(f"could not write the flags file {name}: {why}") from exc


def render_flags(flags: Mapping[str, FlagRecord]) -> str:
    """The text of a flags file holding ``flags``, in the long form."""
    entries: dict[str, dict[str, Any]] = {}
    for key, record in flags.items():
        entry: dict[str, Any] = {"value": record.value}
        if record.reason:
            entry["reason"] = record.reason
        if record.by:
            entry["by"] = record.by
        if record.at:
            entry["at"] = record.at
        entries[key] = entry
    body = yaml.safe_dump(
        {"flags": entries}, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    return _HEADER + body


# --- parsing --------------------------------------------------------------------------------


def _parse(
    data: bytes | str, file: str
) -> tuple[dict[str, FlagRecord] | None, list[PolicyIssue], bool]:
    """The flags, or ``None`` with the issues; the last item says the file holds no YAML at
    all (which the writer treats as no flags, and the feed as invalid)."""
    located, issues = read_yaml(data, file)
    if located is None:
        if any(issue.message == "the file is empty" for issue in issues):
            hint = "write 'flags: {}' to clear every flag"
            return None, [PolicyIssue(file, 1, 1, "", "the file is empty", hint)], True
        return None, issues, False
    if issues:
        return None, issues, False
    reader = _Reader(file, located)
    flags = reader.flags()
    if reader.issues:
        return None, reader.issues, False
    return flags, [], False


class _Reader:
    """Checks the shape of a flags file, collecting every problem with its position."""

    def __init__(self, file: str, located: Located) -> None:
        self.file = file
        self.located = located
        self.issues: list[PolicyIssue] = []

    def issue(self, path: Path, message: str, hint: str = "") -> None:
        line, column = self.located.position(path)
        self.issues.append(PolicyIssue(self.file, line, column, format_path(path), message, hint))

    def flags(self) -> dict[str, FlagRecord]:
        data = self.located.data
        if not isinstance(data, dict):
            self.issue(
                (),
                f"a flags file is a mapping with a 'flags:' key, not {_kind(data)}",
                "write 'flags:' and under it one 'key: value' line per flag",
            )
            return {}
        for extra in data:
            if extra != "flags":
                self.issue((extra,), f"unknown key {extra!r}", "a flags file holds only 'flags:'")
        if "flags" not in data:
            self.issue((), "no 'flags:' section", "write 'flags: {}' to clear every flag")
            return {}
        entries = data["flags"]
        if entries is None:  # "flags:" with every entry commented out
            return {}
        if not isinstance(entries, dict):
            self.issue(
                ("flags",),
                f"'flags' must be a mapping of flag key to value, not {_kind(entries)}",
                "write one 'key: value' line per flag under 'flags:'",
            )
            return {}
        out: dict[str, FlagRecord] = {}
        for key, entry in entries.items():
            record = self.record(("flags", key), entry)
            if record is not None:
                out[key] = record
        return out

    def record(self, path: Path, entry: object) -> FlagRecord | None:
        if isinstance(entry, dict):
            for extra in entry:
                if extra not in _LONG_FORM:
                    self.issue(
                        (*path, extra),
                        f"unknown key {extra!r}",
                        f"the long form takes {', '.join(_LONG_FORM)}",
                    )
            if "value" not in entry:
                self.issue(path, "no 'value:'", "add 'value: on', 'off' or 'shadow'")
                return None
            value = self.value((*path, "value"), entry["value"])
            reason = self.text((*path, "reason"), entry.get("reason"))
            by = self.text((*path, "by"), entry.get("by"))
            at = self.when((*path, "at"), entry.get("at"))
            if value is None or reason is None or by is None or at is None:
                return None
            return FlagRecord(value, reason, by, at)
        value = self.value(path, entry)
        return None if value is None else FlagRecord(value)

    def value(self, path: Path, value: object) -> str | None:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str) and value.strip():
            return value
        what = "no value" if value is None or value == "" else f"{_kind(value)} {value!r}"
        self.issue(
            path,
            f"a flag's value is on, off or shadow, not {what}",
            "write on, off or shadow (or the long form with 'value:')",
        )
        return None

    def text(self, path: Path, value: object) -> str | None:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        self.issue(path, f"must be text, not {_kind(value)} {value!r}", "put it in quotes")
        return None

    def when(self, path: Path, value: object) -> float | None:
        if value is None:
            return 0.0
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        self.issue(
            path,
            f"must be a time in seconds since the epoch, not {_kind(value)} {value!r}",
            "write a number such as 1764172800.0, or leave 'at' out",
        )
        return None


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "nothing" if value is None else type(value).__name__


# --- files ----------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (no lock file to leave behind)."""
    if sys.platform == "win32":
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _replace(target: str, content: bytes) -> None:
    """Write ``content`` to ``target`` atomically, keeping an existing file's permissions."""
    directory = os.path.dirname(target)
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    base = os.path.basename(target)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sys.platform != "win32":
        # The rename is durable once the directory is on disk too; best effort.
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
