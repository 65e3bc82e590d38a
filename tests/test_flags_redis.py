"""Flags shared through Redis: the store (writer) and the feed (watcher), against a private
redis-server each test starts (never the shared one)."""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from resilience._flag_feed import FeedSnapshot, FlagRecord
from resilience._flags_redis import (
    FlagStoreError,
    RedisFlagFeed,
    RedisFlagOptions,
    RedisFlagStore,
)
from resilience.testing import RedisServer, wait_for, wait_for_child

WALL = 1_700_000_000.0
# A healthy server must never look down because a loaded CI machine was slow: tests that do not
# stop the server give it a generous timeout.
GENEROUS = 1.0


class Seen:
    """A deliver callback that records every snapshot."""

    def __init__(self) -> None:
        self.snapshots: list[FeedSnapshot] = []
        self._lock = threading.Lock()

    def __call__(self, snapshot: FeedSnapshot) -> None:
        with self._lock:
            self.snapshots.append(snapshot)

    def all(self) -> list[FeedSnapshot]:
        with self._lock:
            return list(self.snapshots)

    def last(self) -> FeedSnapshot:
        return self.all()[-1]

    def nones(self) -> int:
        return sum(1 for s in self.all() if s.flags is None)

    def value(self, key: str) -> str | None:
        flags = self.last().flags
        record = flags.get(key) if flags is not None else None
        return record.value if record is not None else None


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    return redis_server


@pytest.fixture
def store(server: RedisServer) -> Iterator[RedisFlagStore]:
    with RedisFlagStore.from_url(server.url, timeout=GENEROUS, wall=lambda: WALL) as store:
        yield store


@pytest.fixture
def make_feed(server: RedisServer) -> Iterator[Callable[..., tuple[RedisFlagFeed, Seen]]]:
    feeds: list[RedisFlagFeed] = []

    def make(**options: Any) -> tuple[RedisFlagFeed, Seen]:
        options.setdefault("timeout", GENEROUS)
        feed = RedisFlagFeed(RedisFlagOptions(url=server.url, **options))
        seen = Seen()
        feeds.append(feed)
        feed.start(seen, list)
        return feed, seen

    yield make
    for feed in feeds:
        feed.stop()


def raw_client(server: RedisServer) -> Any:
    import redis

    return redis.Redis.from_url(server.url, socket_timeout=5)


# --- options ------------------------------------------------------------------------------------


def test_options_need_exactly_one_url() -> None:
    with pytest.raises(ValidationError, match="exactly one of url and url_env"):
        RedisFlagOptions()
    with pytest.raises(ValidationError, match="exactly one of url and url_env"):
        RedisFlagOptions(url="redis://x", url_env="X")
    with pytest.raises(ValidationError):
        RedisFlagOptions(url="redis://x", reread_every=0)
    options = RedisFlagOptions.model_validate(
        {"url": "redis://x", "reread_every": "250ms", "timeout": "20ms"}
    )
    assert (options.reread_every, options.timeout) == (0.25, 0.02)


def test_url_env_is_resolved_and_its_absence_explained(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAGS_URL_FOR_TEST", raising=False)
    with pytest.raises(ValueError, match="FLAGS_URL_FOR_TEST"):
        RedisFlagFeed(RedisFlagOptions(url_env="FLAGS_URL_FOR_TEST"))
    monkeypatch.setenv("FLAGS_URL_FOR_TEST", server.url)
    with RedisFlagStore(RedisFlagOptions(url_env="FLAGS_URL_FOR_TEST", timeout=GENEROUS)) as store:
        assert store.set("a", "on", reason="r", by="b") == 1


def test_query_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="query parameters"):
        RedisFlagStore.from_url("redis://127.0.0.1:1/0?socket_timeout=10")


# --- the store ----------------------------------------------------------------------------------


def test_store_writes_reads_and_audits_old_to_new(store: RedisFlagStore) -> None:
    assert store.read() == (0, {})
    assert store.set("search.session", "off", reason="incident 42", by="alice") == 1
    assert store.set("search.session", "shadow", reason="testing", by="bob") == 2
    assert store.set("search.profile", "on", reason="", by="carol") == 3
    assert store.clear("search.session", reason="resolved", by="alice") == 4

    version, flags = store.read()
    assert version == 4
    assert flags == {"search.profile": FlagRecord("on", "", "carol", WALL)}

    history = store.history()
    assert [(h["key"], h["old"], h["new"], h["version"]) for h in history] == [
        ("search.session", "shadow", "", "4"),
        ("search.profile", "", "on", "3"),
        ("search.session", "off", "shadow", "2"),
        ("search.session", "", "off", "1"),
    ]
    assert history[0]["reason"] == "resolved"
    assert history[0]["by"] == "alice"
    assert float(history[0]["at"]) == WALL
    assert history[0]["id"]
    assert [h["version"] for h in store.history(limit=2)] == ["4", "3"]
    assert store.history(limit=0) == []


def test_store_refuses_empty_keys_and_values(store: RedisFlagStore) -> None:
    with pytest.raises(ValueError, match="clear"):
        store.set("a", "", reason="", by="")
    with pytest.raises(ValueError, match="key"):
        store.clear("", reason="", by="")


def test_concurrent_writers_keep_the_version_and_the_audit_consistent(
    server: RedisServer,
) -> None:
    writers, writes = 8, 25
    versions: list[int] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        with RedisFlagStore.from_url(server.url, timeout=5.0) as store:
            for i in range(writes):
                version = store.set("shared", f"w{n}-{i}", reason="", by=f"w{n}")
                with lock:
                    versions.append(version)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    total = writers * writes
    assert sorted(versions) == list(range(1, total + 1))  # every write got its own version

    with RedisFlagStore.from_url(server.url, timeout=5.0) as store:
        version, flags = store.read()
        history = list(reversed(store.history(limit=total + 10)))
    assert version == total
    assert len(history) == total
    assert [int(h["version"]) for h in history] == list(range(1, total + 1))
    # Each write saw exactly the value the previous one left: old -> new is a chain.
    assert history[0]["old"] == ""
    for before, after in itertools.pairwise(history):
        assert after["old"] == before["new"]
    assert flags["shared"].value == history[-1]["new"]


def test_store_errors_name_the_host_and_never_the_password(server: RedisServer) -> None:
    port = server.port
    server.kill()
    store = RedisFlagStore.from_url(f"redis://:s3cret@127.0.0.1:{port}/0")
    with pytest.raises(FlagStoreError) as caught:
        store.set("a", "on", reason="", by="")
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret" not in message
    assert "unreachable" in message
    with pytest.raises(FlagStoreError, match="read the flags"):
        store.read()
    with pytest.raises(FlagStoreError, match="history"):
        store.history()
    store.close()


def test_a_write_to_a_hung_server_says_it_may_have_been_applied(server: RedisServer) -> None:
    with RedisFlagStore.from_url(server.url, timeout=0.1) as store:
        store.set("a", "on", reason="", by="")  # connected and the script loaded
        server.pause()
        try:
            with pytest.raises(FlagStoreError, match="may or may not have been applied"):
                store.set("a", "off", reason="", by="")
        finally:
            server.resume()


def test_a_key_of_the_wrong_type_is_explained(server: RedisServer, store: RedisFlagStore) -> None:
    server.set("resilience:flags:values", "not a hash")
    with pytest.raises(FlagStoreError, match="key_prefix"):
        store.set("a", "on", reason="", by="")


# --- the feed -----------------------------------------------------------------------------------


def test_the_feed_delivers_before_start_returns(
    store: RedisFlagStore, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    store.set("search.session", "off", reason="incident", by="alice")
    feed, seen = make_feed(reread_every=60.0)
    assert seen.all() == [
        FeedSnapshot("redis", {"search.session": FlagRecord("off", "incident", "alice", WALL)})
    ]
    assert feed.name == "redis"
    assert feed.last_read is not None


def test_a_published_change_reaches_the_feed(
    store: RedisFlagStore, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    # reread_every is long: only the published message can bring the change in time.
    _, seen = make_feed(reread_every=60.0)
    assert seen.last().flags == {}
    store.set("search.session", "off", reason="", by="")
    assert wait_for(lambda: seen.value("search.session") == "off", 5)
    store.clear("search.session", reason="", by="")
    assert wait_for(lambda: seen.last().flags == {}, 5)
    assert seen.nones() == 0


def test_a_missed_publish_is_caught_by_the_periodic_reread(
    server: RedisServer, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    _, seen = make_feed(reread_every=0.1)
    client = raw_client(server)
    # A write that announces nothing: the hash and the version, no PUBLISH.
    client.hset("resilience:flags:values", "k", '{"value": "off", "reason": "by hand"}')
    client.incr("resilience:flags:version")
    assert wait_for(lambda: seen.value("k") == "off", 5)
    assert seen.last().flags == {"k": FlagRecord("off", "by hand", "", 0.0)}
    client.close()


def test_nothing_is_delivered_while_nothing_changes(
    store: RedisFlagStore, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    feed, seen = make_feed(reread_every=0.05)
    first = feed.last_read
    assert wait_for(lambda: feed.last_read != first, 5)  # the periodic re-read ran
    assert len(seen.all()) == 1
    store.set("a", "on", reason="", by="")
    assert wait_for(lambda: len(seen.all()) == 2, 5)


def test_refresh_reads_and_delivers_now(
    server: RedisServer, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    feed, seen = make_feed(reread_every=60.0)
    client = raw_client(server)
    client.hset("resilience:flags:values", "k", '{"value": "on"}')
    client.incr("resilience:flags:version")
    feed.refresh()
    assert seen.value("k") == "on"
    count = len(seen.all())
    feed.refresh()  # no change: the same snapshot again, delivered because asked for
    assert len(seen.all()) == count + 1
    assert seen.all()[-1] == seen.all()[-2]
    client.close()


def test_a_corrupt_entry_is_skipped_and_named(
    server: RedisServer,
    store: RedisFlagStore,
    make_feed: Callable[..., tuple[RedisFlagFeed, Seen]],
) -> None:
    client = raw_client(server)
    client.hset("resilience:flags:values", "broken", "{not json")
    client.hset("resilience:flags:values", "shapeless", '["off"]')
    store.set("good", "on", reason="", by="")
    _, seen = make_feed(reread_every=60.0)
    snapshot = seen.last()
    assert snapshot.flags == {"good": FlagRecord("on", "", "", WALL)}
    assert "'broken' (not JSON)" in snapshot.error
    assert "'shapeless'" in snapshot.error
    assert store.read()[1] == {"good": FlagRecord("on", "", "", WALL)}
    # The audit records what was there before, even when it was not readable.
    store.set("broken", "off", reason="fix", by="")
    assert store.history(limit=1)[0]["old"] == "{not json"
    client.close()


def test_an_unreachable_server_at_start_still_starts_the_feed(
    server: RedisServer, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    server.kill()
    feed, seen = make_feed(reread_every=0.1, timeout=0.2)
    (snapshot,) = seen.all()
    assert snapshot.flags is None
    assert f"127.0.0.1:{server.port}" in snapshot.error
    assert feed.last_read is None
    server.start()
    assert wait_for(lambda: seen.last().flags == {}, 5)
    assert seen.nones() == 1


def test_a_hung_server_gives_one_stale_snapshot_and_recovery_rereads(
    server: RedisServer,
    store: RedisFlagStore,
    make_feed: Callable[..., tuple[RedisFlagFeed, Seen]],
) -> None:
    store.set("a", "off", reason="", by="")
    _, seen = make_feed(reread_every=0.1, timeout=0.2)
    server.pause()
    try:
        assert wait_for(lambda: seen.last().flags is None, 5)
        assert "did not answer" in seen.last().error
        # Several re-reads and reconnection attempts fail meanwhile: still one snapshot.
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen.nones() == 1
        assert seen.last().flags is None
    finally:
        server.resume()
    assert wait_for(lambda: seen.last().flags is not None, 5)
    assert seen.value("a") == "off"
    store.set("a", "on", reason="", by="")
    assert wait_for(lambda: seen.value("a") == "on", 5)
    # No flapping: one good snapshot, one None, then only good ones.
    kinds = [s.flags is None for s in seen.all()]
    assert kinds.count(True) == 1
    assert kinds[0] is False


def test_a_killed_server_is_read_again_once_it_is_back(
    server: RedisServer, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    with RedisFlagStore.from_url(server.url, timeout=GENEROUS) as store:
        store.set("a", "off", reason="", by="")
        _, seen = make_feed(reread_every=0.1, timeout=0.2)
        server.kill()
        assert wait_for(lambda: seen.last().flags is None, 5)
        server.start()  # same port, empty (no persistence)
        assert wait_for(lambda: seen.last().flags == {}, 5)
        store.set("b", "on", reason="", by="")
        assert wait_for(lambda: seen.value("b") == "on", 5)
    assert seen.nones() == 1


def test_stop_returns_promptly_while_the_server_hangs(
    server: RedisServer, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    feed, _ = make_feed(reread_every=0.1, timeout=0.2)
    server.pause()
    try:
        stopper = threading.Thread(target=feed.stop)
        stopper.start()
        stopper.join(5)
        assert not stopper.is_alive()
        feed.stop()  # idempotent
    finally:
        server.resume()


def test_stop_is_idempotent_and_ends_the_thread(
    make_feed: Callable[..., tuple[RedisFlagFeed, Seen]],
) -> None:
    feed, _ = make_feed(reread_every=60.0)
    assert any(t.name == "resilience-flags-redis" for t in threading.enumerate())
    feed.stop()
    feed.stop()
    assert not any(t.name == "resilience-flags-redis" for t in threading.enumerate())


def test_refresh_does_nothing_before_start_or_after_stop(server: RedisServer) -> None:
    feed = RedisFlagFeed(RedisFlagOptions(url=server.url, timeout=GENEROUS))
    feed.refresh()
    seen = Seen()
    feed.start(seen, list)
    feed.stop()
    feed.refresh()
    assert len(seen.all()) == 1
    feed.stop()


def test_a_bad_url_fails_when_the_feed_is_made() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RedisFlagFeed(RedisFlagOptions(url="http://127.0.0.1:1/0"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, Python 3.12+
def test_a_forked_child_restarts_the_feed_with_its_own_connections(
    store: RedisFlagStore, make_feed: Callable[..., tuple[RedisFlagFeed, Seen]]
) -> None:
    store.set("k", "before", reason="", by="")
    _, seen = make_feed(reread_every=60.0)  # only messages (or the child's first read) count
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its copy of the feed must follow changes made after the fork
        code = 1
        try:
            if wait_for(lambda: seen.value("k") == "first", 5):
                os.write(ready_w, b"1")
                code = 0 if wait_for(lambda: seen.value("k") == "second", 5) else 2
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        store.set("k", "first", reason="", by="")
        readable, _, _ = select.select([ready_r], [], [], 10)
        assert readable, "the child did not see the first change"
        assert os.read(ready_r, 1) == b"1"
        # The child is subscribed now: this change can only reach it as a message.
        store.set("k", "second", reason="", by="")
        status = wait_for_child(pid, 10)
        assert status == 0, f"child exit status {status}"
        assert wait_for(lambda: seen.value("k") == "second", 5)  # the parent's feed still works
    finally:
        os.close(ready_r)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
