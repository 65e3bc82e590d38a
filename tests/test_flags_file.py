"""The flags file: its format, what an invalid or missing file delivers, live changes through the
watch, and the atomic writer behind ``resilience flags set``."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from resilience._flag_feed import FeedSnapshot, FlagFeed, FlagRecord
from resilience._flags_file import (
    FileFlagFeed,
    FlagFileError,
    parse_flags,
    render_flags,
    write_flag_file,
)
from resilience.testing import wait_for

WAIT = 10.0


def no_keys() -> Sequence[str]:
    return []


class Delivered:
    """The snapshots a feed delivered, in order."""

    def __init__(self) -> None:
        self.snapshots: list[FeedSnapshot] = []

    def __call__(self, snapshot: FeedSnapshot) -> None:
        self.snapshots.append(snapshot)

    @property
    def last(self) -> FeedSnapshot:
        return self.snapshots[-1]

    def values(self) -> dict[str, str] | None:
        flags = self.last.flags
        return None if flags is None else {key: r.value for key, r in flags.items()}


@pytest.fixture
def delivered() -> Delivered:
    return Delivered()


@pytest.fixture
def start_feed(delivered: Delivered) -> Iterator[Callable[..., FileFlagFeed]]:
    """Start a FileFlagFeed on a path (events only unless ``poll_every`` is given)."""
    feeds: list[FileFlagFeed] = []

    def start(path: Path, poll_every: float | None = None) -> FileFlagFeed:
        feed = FileFlagFeed(path, poll_every=poll_every)
        feeds.append(feed)
        feed.start(delivered, no_keys)
        return feed

    yield start
    for feed in feeds:
        feed.stop()


# --- the format ------------------------------------------------------------------------------


def test_short_and_long_forms(tmp_path: Path) -> None:
    flags, error = parse_flags(
        """\
# flags.yaml
flags:
  search: off                        # short form: the value
  search.session:                    # long form
    value: off
    reason: "session store incident INC-123"
    by: alice
  search.boost:
    value: shadow
    at: 1764172800
""",
        "flags.yaml",
    )
    assert error == ""
    assert flags == {
        "search": FlagRecord("off"),
        "search.session": FlagRecord("off", "session store incident INC-123", "alice"),
        "search.boost": FlagRecord("shadow", at=1764172800.0),
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", "on"),
        ("false", "off"),
        ("on", "on"),
        ("off", "off"),
        ("'off'", "off"),
        ("shadow", "shadow"),
        ("On", "On"),  # raw: the board reads the value, and reports what it cannot
        ("bogus", "bogus"),
    ],
)
def test_values_are_raw_text_and_booleans_are_on_or_off(text: str, value: str) -> None:
    short, _ = parse_flags(f"flags:\n  search: {text}\n")
    long, _ = parse_flags(f"flags:\n  search:\n    value: {text}\n")
    assert short == long == {"search": FlagRecord(value)}


def test_an_empty_flags_section_clears_every_flag() -> None:
    assert parse_flags("flags: {}\n") == ({}, "")
    assert parse_flags("flags:\n  # search: off\n") == ({}, "")  # all commented out


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("flags: [\n", "f.yaml:2:1", "YAML syntax error"),
        ("", "f.yaml:1:1", "the file is empty"),
        ("# only a comment\n", "f.yaml:1:1", "the file is empty"),
        ("- search: off\n", "f.yaml:1:1", "not a list"),
        ("flag:\n  search: off\n", "f.yaml:1:1", "unknown key 'flag'"),
        ("version: 1\n", "f.yaml:1:1", "no 'flags:' section"),
        ("flags: [search]\n", "f.yaml:1:1", "'flags' must be a mapping"),
        ("flags:\n  search:\n", "f.yaml:2:3", "not no value"),
        ("flags:\n  search: 1\n", "f.yaml:2:3", "not a number 1"),
        ("flags:\n  search: [off]\n", "f.yaml:2:3", "not a list"),
        ("flags:\n  search:\n    reason: why\n", "f.yaml:2:3", "no 'value:'"),
        ("flags:\n  search:\n    value: off\n    reasn: x\n", "f.yaml:4:5", "unknown key 'reasn'"),
        ("flags:\n  search:\n    value: off\n    by: 7\n", "f.yaml:4:5", "must be text"),
        ("flags:\n  search:\n    value: off\n    at: soon\n", "f.yaml:4:5", "seconds since"),
        ("flags:\n  search: off\n  search: on\n", "f.yaml:3:3", "duplicate key 'search'"),
        ("flags:\n  search: !!python/name:os.system off\n", "f.yaml:2:11", "is not allowed"),
    ],
)
def test_an_invalid_file_gives_no_flags_and_a_located_error(
    text: str, where: str, problem: str
) -> None:
    flags, error = parse_flags(text, "f.yaml")
    assert flags is None
    assert error.startswith(where + ":"), error
    assert problem in error


def test_every_problem_is_reported_at_once() -> None:
    flags, error = parse_flags("flags:\n  a: 1\n  b:\n  c: ok\n", "f.yaml")
    assert flags is None
    assert "f.yaml:2:3: flags.a:" in error
    assert "f.yaml:3:3: flags.b:" in error  # positions are the keys', as in policy files


# --- the feed ---------------------------------------------------------------------------------


def test_the_feed_delivers_the_file_before_start_returns(
    tmp_path: Path, delivered: Delivered, start_feed: Callable[..., FileFlagFeed]
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  search: off\n")
    feed: FlagFeed = start_feed(path)
    assert feed.name == "file"
    assert delivered.snapshots == [FeedSnapshot("file", {"search": FlagRecord("off")})]


def test_a_missing_file_is_nothing_known_until_it_appears(
    tmp_path: Path, delivered: Delivered, start_feed: Callable[..., FileFlagFeed]
) -> None:
    path = tmp_path / "flags.yaml"
    start_feed(path)
    assert delivered.last.flags is None
    assert delivered.last.error == f"{path}: not found (no flags from this file until it exists)"
    write_flag_file(path, "search", "off", reason="incident", by="alice")
    assert wait_for(lambda: delivered.values() == {"search": "off"}, WAIT)


def test_an_unreadable_file_is_an_error_not_a_change(
    tmp_path: Path, delivered: Delivered, start_feed: Callable[..., FileFlagFeed]
) -> None:
    path = tmp_path / "flags.yaml"
    path.mkdir()  # a directory where the file should be: readable by no one, root included
    start_feed(path)
    assert delivered.last.flags is None
    assert delivered.last.error.startswith(f"{path}: cannot be read (")


def test_a_live_change_is_delivered_and_an_invalid_edit_flips_nothing(
    tmp_path: Path, delivered: Delivered, start_feed: Callable[..., FileFlagFeed]
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  search: off\n")
    start_feed(path)
    path.write_text("flags:\n  search: on\n  search.session: off\n")  # in place, like an editor
    assert wait_for(lambda: delivered.values() == {"search": "on", "search.session": "off"}, WAIT)
    path.write_text("flags:\n  search: on\n  search.session: [\n")  # saved half-edited
    assert wait_for(lambda: delivered.last.flags is None, WAIT)
    assert delivered.last.error.startswith(f"{path}:")  # the board keeps the last values, stale
    path.write_text("flags: {}\n")
    assert wait_for(lambda: delivered.values() == {}, WAIT)


def test_a_file_deleted_for_good_is_reported_after_a_poll_round(
    tmp_path: Path, delivered: Delivered, start_feed: Callable[..., FileFlagFeed]
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  search: off\n")
    start_feed(path, poll_every=0.05)
    path.unlink()
    assert wait_for(lambda: delivered.last.flags is None, WAIT)
    assert "not found" in delivered.last.error
    path.write_text("flags:\n  search: off\n")  # back with the same content: fresh again
    assert wait_for(lambda: delivered.values() == {"search": "off"}, WAIT)


def test_refresh_reads_and_delivers_again(
    tmp_path: Path, delivered: Delivered, start_feed: Callable[..., FileFlagFeed]
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  search: off\n")
    feed = start_feed(path)
    feed.refresh()
    assert len(delivered.snapshots) >= 2
    assert delivered.last == FeedSnapshot("file", {"search": FlagRecord("off")})


def test_stop_ends_the_watch_and_the_deliveries(
    tmp_path: Path, delivered: Delivered, start_feed: Callable[..., FileFlagFeed]
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  search: off\n")
    feed = start_feed(path)
    assert any(t.name == "resilience-flags-file" for t in threading.enumerate())
    feed.stop()
    feed.stop()
    assert not any(t.name.startswith("resilience-flags-file") for t in threading.enumerate())
    count = len(delivered.snapshots)
    feed.refresh()
    assert len(delivered.snapshots) == count
    with pytest.raises(RuntimeError, match="already started"):
        start_feed(path).start(delivered, no_keys)


# --- the writer ---------------------------------------------------------------------------------


def test_write_sets_and_removes_keeping_the_other_entries(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  search: off   # a comment, lost on rewrite\n")
    write_flag_file(path, "search.session", "off", reason="INC-123", by="alice")
    write_flag_file(path, "search.boost", "shadow", reason="trial", by="bob")
    snapshot = FileFlagFeed(path).read()
    assert snapshot.error == ""
    assert snapshot.flags is not None
    assert list(snapshot.flags) == ["search", "search.session", "search.boost"]  # file order
    assert snapshot.flags["search"] == FlagRecord("off")
    session = snapshot.flags["search.session"]
    assert (session.value, session.reason, session.by) == ("off", "INC-123", "alice")
    assert session.at > 0
    write_flag_file(path, "search.session", "on", reason="fixed", by="carol")  # overwrite
    write_flag_file(path, "search", None, reason="done", by="alice")  # remove
    flags = FileFlagFeed(path).read().flags
    assert flags is not None
    assert {k: (r.value, r.reason) for k, r in flags.items()} == {
        "search.session": ("on", "fixed"),
        "search.boost": ("shadow", "trial"),
    }
    assert "a comment" not in path.read_text()
    assert path.read_text().startswith("# Flags for search-resilience.")


def test_values_yaml_would_misread_are_written_quoted(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    for value in ("off", "on", "yes", "true", "123", "2026-11-26", "null", "a: b"):
        write_flag_file(path, "k", value, reason="why: not", by="#me")
        flags = FileFlagFeed(path).read().flags
        assert flags is not None
        assert (flags["k"].value, flags["k"].reason, flags["k"].by) == (value, "why: not", "#me")


def test_write_creates_a_missing_file_and_removing_an_absent_key_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.yaml"
    write_flag_file(path, "search", None, reason="", by="")
    assert not path.exists()
    write_flag_file(path, "search", "off", reason="", by="")
    flags = parse_flags(path.read_bytes())[0]
    assert flags is not None
    assert list(flags) == ["search"]
    assert flags["search"].value == "off"
    before = path.read_bytes()
    write_flag_file(path, "other", None, reason="", by="")
    assert path.read_bytes() == before


def test_write_is_atomic_and_keeps_permissions_and_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "shared" / "flags.yaml"
    real.parent.mkdir()
    real.write_text("flags: {}\n")
    real.chmod(0o640)
    link = tmp_path / "flags.yaml"
    link.symlink_to(real)
    inode = real.stat().st_ino
    write_flag_file(link, "search", "off", reason="", by="")
    assert link.is_symlink()  # written through, not replaced by a file
    assert real.stat().st_ino != inode  # a new file renamed into place, not rewritten in place
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in real.parent.iterdir()) == ["flags.yaml"]  # no temporary left
    assert FileFlagFeed(link).read().flags == {"search": FlagRecord("off", at=_at(real))}


def test_write_refuses_to_overwrite_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("flags:\n  search: [\n")
    with pytest.raises(FlagFileError, match=r"flags.yaml:3:1: YAML syntax error.*before writing"):
        write_flag_file(path, "search", "off", reason="", by="")
    assert path.read_text() == "flags:\n  search: [\n"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# to be filled\n")  # holds no YAML: nothing to lose
    write_flag_file(empty, "search", "off", reason="", by="")
    assert parse_flags(empty.read_bytes())[0] is not None


def test_write_checks_its_arguments_and_reports_filesystem_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key"):
        write_flag_file(tmp_path / "f.yaml", "", "off", reason="", by="")
    with pytest.raises(ValueError, match="value"):
        write_flag_file(tmp_path / "f.yaml", "k", "", reason="", by="")
    with pytest.raises(FlagFileError, match="could not write the flags file") as caught:
        write_flag_file(tmp_path / "missing" / "f.yaml", "k", "off", reason="", by="")
    assert isinstance(caught.value, OSError)  # what a caller guarding a file write catches
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"

    def writer(prefix: str) -> None:
        for i in range(15):
            write_flag_file(path, f"{prefix}.{i}", "off", reason="", by=prefix)

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    flags = FileFlagFeed(path).read().flags
    assert flags is not None
    assert len(flags) == 45


def test_what_the_writer_renders_the_reader_reads() -> None:
    flags = {
        "search": FlagRecord("off"),
        "search.session": FlagRecord("shadow", "r", "b", 1764172800.5),
    }
    assert parse_flags(render_flags(flags)) == (flags, "")
    assert parse_flags(render_flags({})) == ({}, "")


def _at(path: Path) -> float:
    flags = parse_flags(path.read_bytes())[0]
    assert flags is not None
    return flags["search"].at


def test_the_writer_records_when(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    write_flag_file(path, "search", "off", reason="", by="")
    assert _at(path) > 1_700_000_000
    assert os.path.getsize(path) > 0
