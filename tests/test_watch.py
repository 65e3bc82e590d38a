"""FileWatch: in-place writes, atomic renames, Kubernetes ConfigMap swaps, errors, stop, fork.

Nothing here sleeps for a fixed time: every wait is ``wait_for`` on what should happen, and
"nothing happened" is shown after the watch provably read the file (a counting spy on the
read), so the tests do not depend on the machine's speed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import FileSystemEvent

from resilience import _watch
from resilience._watch import FileWatch
from resilience.testing import wait_for, wait_for_child

WAIT = 10.0  # generous: CI machines under load


class Seen:
    """What a watch called back with."""

    def __init__(self) -> None:
        self.changes: list[bytes] = []
        self.errors: list[OSError] = []
        self.threads: set[str] = set()

    def change(self, data: bytes) -> None:
        self.threads.add(threading.current_thread().name)
        self.changes.append(data)

    def error(self, exc: OSError) -> None:
        self.errors.append(exc)

    def last(self) -> bytes | None:
        return self.changes[-1] if self.changes else None

    def got(self, data: bytes) -> Callable[[], bool]:
        """A condition: the last change delivered is ``data``."""
        return lambda: self.last() == data


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def make_watch(seen: Seen) -> Iterator[Callable[..., FileWatch]]:
    """A FileWatch calling back into ``seen`` (events only unless ``poll_every`` is given),
    stopped after the test."""
    made: list[FileWatch] = []

    def make(
        path: Path, *, start: bool = True, initial: bytes | None = None, **kwargs: Any
    ) -> FileWatch:
        kwargs.setdefault("poll_every", None)
        kwargs.setdefault("on_error", seen.error)
        kwargs.setdefault("name", "test-watch")
        watch = FileWatch(path, seen.change, **kwargs)
        made.append(watch)
        return watch.start(initial) if start else watch

    yield make
    for watch in made:
        watch.stop()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read the watch made (its path), appended once the read is done. A watch started
    with ``initial`` reads first in the worker's check right after start: ``len(reads) >= 1``
    means that check is over, and only later events (or check_now) read again."""
    done: list[str] = []
    real = _watch._read

    def counting(path: str) -> bytes:
        try:
            return real(path)
        finally:
            done.append(path)

    monkeypatch.setattr(_watch, "_read", counting)
    return done


def replace_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file in the same directory and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in (name, f"{name}-observer")]


class ConfigMap:
    """A Kubernetes ConfigMap volume, updated as the kubelet's AtomicWriter does it.

    ``<dir>/policies.yaml -> ..data/policies.yaml``, ``..data -> ..<timestamp>/``. An update
    writes ``..<new timestamp>/policies.yaml``, links ``..data_tmp`` to it, renames ``..data_tmp``
    over ``..data`` and deletes the old timestamped directory.
    """

    def __init__(self, root: Path, name: str = "policies.yaml") -> None:
        self.root = root
        self.name = name
        self.updates = 0

    @property
    def path(self) -> Path:
        return self.root / self.name

    def publish(self, content: bytes) -> None:
        self.updates += 1
        stamp = f"..2026_11_26_16_00_{self.updates:02d}.{100 + self.updates}"
        (self.root / stamp).mkdir()
        (self.root / stamp / self.name).write_bytes(content)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(stamp, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", data)
        if old is not None:
            shutil.rmtree(self.root / old)
        if not self.path.is_symlink():
            os.symlink(f"..data/{self.name}", self.path)


# --- what counts as a change ---------------------------------------------------------------------


def test_an_in_place_write_is_delivered(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    make_watch(path)
    path.write_bytes(b"v2")
    assert wait_for(lambda: seen.last() == b"v2", WAIT)
    with path.open("ab") as file:  # appending is a write in place too
        file.write(b"+more")
    assert wait_for(lambda: seen.last() == b"v2+more", WAIT)
    assert seen.threads == {"test-watch"}  # the worker calls back, not watchdog's thread
    assert seen.errors == []


def test_atomic_renames_are_delivered_in_order(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    make_watch(path)
    for version in (b"v2", b"v3", b"v4"):
        replace_atomically(path, version)
        assert wait_for(seen.got(version), WAIT)
    assert seen.changes == [b"v2", b"v3", b"v4"]  # a rename is never seen half-done


def test_kubernetes_configmap_swaps_are_delivered(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    volume = ConfigMap(tmp_path)
    volume.publish(b"v1")
    make_watch(volume.path)  # the symlink the pod sees; nothing ever writes to it
    for version in (b"v2", b"v3", b"v4", b"v5"):
        volume.publish(version)
        assert wait_for(seen.got(version), WAIT)
    assert seen.changes == [b"v2", b"v3", b"v4", b"v5"]
    # the layout was the real one: one timestamped directory left, reached through ..data
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "..2026_11_26_16_00_05.105",
        "..data",
        "policies.yaml",
    ]
    assert seen.errors == []


def test_rewriting_the_same_content_calls_nothing(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch], reads: list[str]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"same")
    watch = make_watch(path)
    before = len(reads)
    replace_atomically(path, b"same")
    with path.open("r+b") as file:  # in place, never truncated: never seen half-written
        file.write(b"same")
    os.utime(path)
    (tmp_path / "other.txt").write_bytes(b"unrelated")  # another file in the directory
    assert wait_for(lambda: len(reads) > before, WAIT)  # the events made the worker read
    assert not watch.check_now()  # waits for a read in flight; the content is still the same
    assert seen.changes == []


def test_reading_the_file_makes_no_event(
    tmp_path: Path, make_watch: Callable[..., FileWatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    # inotify reports opens and closes of files in the directory; were those events, the
    # watch's own read would cause its next one, forever.
    events: list[str] = []
    real = _watch._Signal.dispatch

    def recording(self: Any, event: FileSystemEvent) -> None:
        events.append(os.path.basename(os.fsdecode(event.src_path)))
        real(self, event)

    monkeypatch.setattr(_watch._Signal, "dispatch", recording)
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    watch = make_watch(path)
    for _ in range(10):
        path.read_bytes()
        watch.check_now()
    (tmp_path / "marker").write_bytes(b"x")
    # inotify and watchdog keep events in order: once the marker's arrived, any the reads
    # caused would have too.
    assert wait_for(lambda: "marker" in events, WAIT)
    assert set(events) == {"marker"}


# --- unreadable files ------------------------------------------------------------------------


def test_a_file_missing_for_a_moment_is_no_change(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch], reads: list[str]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    make_watch(path)
    before = len(reads)
    path.unlink()  # a writer that deletes, then re-creates
    assert wait_for(lambda: len(reads) > before, WAIT)  # it looked while the file was gone
    replace_atomically(path, b"v2")  # (written in place, it could be read empty first)
    assert wait_for(lambda: seen.last() == b"v2", WAIT)
    assert seen.changes == [b"v2"]  # nothing delivered for the gap
    assert seen.errors == []  # and one failed read is not reported


def test_an_unreadable_file_is_reported_once_and_its_recovery_delivered(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch], reads: list[str]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    watch = make_watch(path, debounce=60.0, initial=b"v1")  # only check_now reads from now on
    assert wait_for(lambda: len(reads) >= 1, WAIT)
    path.unlink()
    assert not watch.check_now()
    assert seen.errors == []  # the first failure may be a swap in progress
    assert not watch.check_now()
    assert len(seen.errors) == 1  # still gone on the next round: reported
    assert isinstance(seen.errors[0], FileNotFoundError)
    assert not watch.check_now()
    assert len(seen.errors) == 1  # once per episode, not on every read
    path.write_bytes(b"v1")  # back, with the same content as before
    assert watch.check_now()  # delivered anyway: the consumer was told it was gone
    assert seen.changes == [b"v1"]
    assert not watch.check_now()


def test_an_error_waits_for_a_poll_round_when_polling(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    make_watch(path, poll_every=0.1)
    path.unlink()
    assert wait_for(lambda: bool(seen.errors), WAIT)
    assert isinstance(seen.errors[0], FileNotFoundError)
    path.write_bytes(b"v2")
    assert wait_for(lambda: seen.last() == b"v2", WAIT)
    assert len(seen.errors) == 1


def test_a_file_missing_at_start_is_delivered_when_it_appears(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    make_watch(path)
    replace_atomically(path, b"v1")
    assert wait_for(lambda: seen.last() == b"v1", WAIT)


def test_a_directory_that_cannot_be_watched_is_reported_and_polled(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    conf = tmp_path / "conf"
    make_watch(conf / "policies.yaml", poll_every=0.05)
    assert wait_for(lambda: any("cannot watch" in str(e) for e in seen.errors), WAIT)
    assert len(threads_named("test-watch")) == 1  # the worker alone: no observer
    conf.mkdir()
    (conf / "policies.yaml").write_bytes(b"v1")
    assert wait_for(lambda: seen.last() == b"v1", WAIT)  # the poll found it
    assert wait_for(lambda: len(threads_named("test-watch")) == 2, WAIT)  # observer rebuilt


def test_a_deleted_and_recreated_directory_is_watched_again(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "policies.yaml").write_bytes(b"v1")
    watch = make_watch(conf / "policies.yaml", poll_every=0.05)
    first = watch._observer
    shutil.rmtree(conf)  # inotify drops a watch whose directory is deleted
    conf.mkdir()
    (conf / "policies.yaml").write_bytes(b"v2")
    assert wait_for(lambda: seen.last() == b"v2", WAIT)
    assert wait_for(
        lambda: watch._observer not in (None, first) and _watch._healthy(watch._observer), WAIT
    )
    (conf / "policies.yaml").write_bytes(b"v3")
    assert wait_for(lambda: seen.last() == b"v3", WAIT)


# --- the poll ----------------------------------------------------------------------------------


def test_the_poll_catches_a_change_no_event_reported(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    watch = make_watch(path, start=False, poll_every=0.05)
    watch._signal = lambda: None  # type: ignore[method-assign]  # an observer that sees nothing
    watch.start()
    replace_atomically(path, b"v2")
    assert wait_for(lambda: seen.last() == b"v2", WAIT)


def test_without_events_or_poll_only_check_now_reads(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch], reads: list[str]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    watch = make_watch(path, debounce=60.0, initial=b"v1")  # events wait a minute
    assert wait_for(lambda: len(reads) >= 1, WAIT)  # the check after start is over
    replace_atomically(path, b"v2")
    assert watch.check_now()
    assert seen.changes == [b"v2"]
    assert seen.threads == {threading.current_thread().name}  # on the caller's thread
    assert not watch.check_now()


# --- start ------------------------------------------------------------------------------------


def test_start_with_initial_bytes_catches_a_change_made_before_start(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    loaded = path.read_bytes()  # the caller loads and validates v1 ...
    path.write_bytes(b"v2")  # ... the file changes before the watch starts ...
    watch = make_watch(path, start=False)
    watch.start(initial=loaded)  # ... and the watch compares with what the caller holds
    assert wait_for(lambda: seen.last() == b"v2", WAIT)
    assert seen.changes == [b"v2"]


def test_start_with_the_current_bytes_calls_nothing(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch], reads: list[str]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    watch = make_watch(path, start=False)
    watch.start(initial=b"v1")
    assert wait_for(lambda: len(reads) >= 1, WAIT)  # the first check after start
    assert not watch.check_now()
    assert seen.changes == []


def test_a_watch_starts_once_and_checks_its_arguments(
    tmp_path: Path, make_watch: Callable[..., FileWatch]
) -> None:
    watch = make_watch(tmp_path / "p.yaml")
    with pytest.raises(RuntimeError, match="starts once"):
        watch.start()
    watch.stop()
    with pytest.raises(RuntimeError, match="starts once"):
        watch.start()
    with pytest.raises(ValueError, match="debounce"):
        FileWatch(tmp_path / "p.yaml", print, debounce=-1)
    with pytest.raises(ValueError, match="poll_every"):
        FileWatch(tmp_path / "p.yaml", print, poll_every=0)


# --- callbacks and stop ----------------------------------------------------------------------


def test_a_callback_that_raises_does_not_stop_the_watch(
    tmp_path: Path, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    calls: list[bytes] = []

    def fragile(data: bytes) -> None:
        calls.append(data)
        raise RuntimeError("the consumer's own bug")

    watch = FileWatch(path, fragile, poll_every=None)
    try:
        watch.start()
        replace_atomically(path, b"v2")
        assert wait_for(lambda: calls == [b"v2"], WAIT)
        replace_atomically(path, b"v3")
        assert wait_for(lambda: calls == [b"v2", b"v3"], WAIT)  # not retried, not stuck
        assert watch.running
    finally:
        watch.stop()


def test_stop_is_idempotent_and_ends_the_threads(
    tmp_path: Path, make_watch: Callable[..., FileWatch]
) -> None:
    watch = make_watch(tmp_path / "p.yaml", name="test-stop", poll_every=60.0)
    assert watch.running
    assert len(threads_named("test-stop")) == 2  # the worker and watchdog's observer
    watch.stop()
    watch.stop()
    assert not watch.running
    assert threads_named("test-stop") == []


def test_stop_from_the_callback_does_not_deadlock(
    tmp_path: Path, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    calls: list[bytes] = []
    holder: list[FileWatch] = []

    def stop_myself(data: bytes) -> None:
        calls.append(data)
        holder[0].stop()

    watch = FileWatch(path, stop_myself, poll_every=None, name="test-self-stop")
    holder.append(watch)
    try:
        watch.start()
        replace_atomically(path, b"v2")
        assert wait_for(lambda: calls == [b"v2"], WAIT)
        assert wait_for(lambda: threads_named("test-self-stop") == [], WAIT)
        assert not watch.running
    finally:
        watch.stop()


def test_stop_from_a_check_now_callback_returns_at_once(tmp_path: Path, reads: list[str]) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    holder: list[FileWatch] = []
    calls: list[str] = []

    def stop_myself(data: bytes) -> None:
        calls.append(threading.current_thread().name)
        holder[0].stop()

    watch = FileWatch(path, stop_myself, poll_every=None, debounce=60.0, name="test-now-stop")
    holder.append(watch)
    watch.start(initial=b"v1")
    assert wait_for(lambda: len(reads) >= 1, WAIT)  # the check after start is over
    replace_atomically(path, b"v2")
    done = threading.Event()

    def check() -> None:
        watch.check_now()
        done.set()

    caller = threading.Thread(target=check, daemon=True)
    caller.start()
    assert done.wait(WAIT), "check_now -> callback -> stop() deadlocked"
    assert calls == [caller.name]
    assert not watch.running
    assert wait_for(lambda: threads_named("test-now-stop") == [], WAIT)


def test_no_callback_after_stop(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    watch = make_watch(path, name="test-after-stop", poll_every=0.05)
    watch.stop()
    assert threads_named("test-after-stop") == []  # nothing left that could call back
    replace_atomically(path, b"v2")
    assert seen.changes == []


# --- fork ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, Python 3.12+
def test_a_forked_child_restarts_the_watch(
    tmp_path: Path, seen: Seen, make_watch: Callable[..., FileWatch]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_bytes(b"v1")
    watch = make_watch(path, name="test-fork")
    pid = os.fork()
    if pid == 0:  # the child: only the forking thread survived; the watch must run again
        code = 1
        try:
            signal.alarm(30)  # the last resort against a hang: the parent waits 20 s
            restarted = len(threads_named("test-fork")) == 2 and watch.running
            replace_atomically(path, b"from the child")
            fired = wait_for(lambda: seen.last() == b"from the child", WAIT)
            code = 0 if restarted and fired else 2 if fired else 4
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    try:
        status = wait_for_child(pid, 20.0)
        assert status == 0, f"child exit status {status} (2: threads not restarted, 4: no call)"
        # The parent's watch is unaffected, and saw the child's change as well.
        assert wait_for(lambda: seen.last() == b"from the child", WAIT)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
