"""Hot reload through the real file watcher: atomic renames, Kubernetes-style symlink swaps,
invalid changes that keep the last good policy, and the stress test of the issue: 100 reloads,
half of them invalid, under concurrent sync and asyncio traffic."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resilience import (
    Affinities,
    Click,
    Engine,
    Reason,
    RequestContext,
    SessionState,
    load_policies,
)
from resilience._engine import POLICY_RELOADED, RELOAD_FAILED
from resilience.testing import RecordingSink, wait_for

from .conftest import REFERENCE_POLICIES

TEXT = REFERENCE_POLICIES.read_text()
WAIT = 30.0  # generous: the machine is shared; a pass takes milliseconds


def stores() -> dict[str, Any]:
    return {
        "session_store": {"s1": SessionState((Click("i1", "books", time.time()),))}.get,
        "profile_store": {"u1": Affinities({"books": 1.0})}.get,
        "segment_store": {}.get,
    }


def valid(n: int) -> str:
    """A valid variant, different for every ``n``."""
    return TEXT.replace("budget: 30ms", f"budget: {30 - n * 0.01:.2f}ms")


def invalid(n: int) -> str:
    """An invalid variant, different for every ``n``."""
    return TEXT.replace("type: stale_cache", f"type: stale_cache_{n}")


def version_of(text: str) -> str:
    return load_policies(text).policies["search"].version


class Renamer:
    """Replaces a file the way deploy scripts should: write beside it, then rename over it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "policies.yaml"
        self.path.write_text(TEXT)

    def write(self, text: str) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path)


class ConfigMap:
    """A Kubernetes ConfigMap volume: ``policies.yaml -> ..data/policies.yaml``, with ``..data``
    a symlink to a timestamped directory, swapped atomically on every update."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        self._publish(TEXT)
        (folder / "policies.yaml").symlink_to("..data/policies.yaml")
        self.path = folder / "policies.yaml"

    def _publish(self, text: str) -> None:
        self.count += 1
        version = self.folder / f"..2026_11_26_{self.count:06d}"
        version.mkdir()
        (version / "policies.yaml").write_text(text)
        temporary = self.folder / "..data_tmp"
        temporary.symlink_to(version.name)
        old = os.readlink(self.folder / "..data") if (self.folder / "..data").is_symlink() else None
        os.replace(temporary, self.folder / "..data")
        if old is not None:
            for child in (self.folder / old).iterdir():
                child.unlink()
            (self.folder / old).rmdir()

    def write(self, text: str) -> None:
        self._publish(text)


@pytest.fixture(params=["rename", "configmap"])
def writer(request: pytest.FixtureRequest, tmp_path: Path) -> Renamer | ConfigMap:
    return Renamer(tmp_path) if request.param == "rename" else ConfigMap(tmp_path)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def watched(writer: Renamer | ConfigMap, sink: RecordingSink) -> Iterator[Engine]:
    engine = Engine.from_file(writer.path, stores(), events=sink, watch=True)
    engine._watch._debounce = 0.01  # type: ignore[union-attr]  # faster, same path
    yield engine
    engine.close()


def test_a_replaced_file_is_running_soon_after(
    writer: Renamer | ConfigMap, watched: Engine
) -> None:
    writer.write(valid(1))
    assert wait_for(lambda: watched.config_version() == version_of(valid(1)), WAIT)
    request = RequestContext(user_id="u1")
    assert watched.decide(request).trace.config_version == version_of(valid(1))


def test_an_invalid_file_keeps_the_last_good_policy_and_the_watch_goes_on(
    writer: Renamer | ConfigMap, watched: Engine, sink: RecordingSink
) -> None:
    before = watched.config_version()
    writer.write(invalid(1))
    assert wait_for(lambda: len(sink.of(RELOAD_FAILED)) == 1, WAIT)
    assert "unknown tier type 'stale_cache_1'" in sink.of(RELOAD_FAILED)[0]["errors"][0]
    assert watched.config_version() == before
    writer.write(valid(2))
    assert wait_for(lambda: watched.config_version() == version_of(valid(2)), WAIT)


def test_a_change_made_before_the_watch_started_is_not_missed(
    tmp_path: Path, sink: RecordingSink
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(TEXT)
    engine = Engine(load_policies(TEXT, file=str(path)), stores(), events=sink)
    try:
        path.write_text(valid(3))  # after the engine read it, before the watch began
        engine.watch(initial=TEXT.encode())
        assert wait_for(lambda: engine.config_version() == version_of(valid(3)), WAIT)
    finally:
        engine.close()


def test_close_stops_the_watch(writer: Renamer | ConfigMap, sink: RecordingSink) -> None:
    engine = Engine.from_file(writer.path, stores(), events=sink, watch=True)
    watch = engine._watch
    engine.close()
    assert watch is not None and not watch.running
    writer.write(valid(4))
    assert watch.check_now() is False or engine.config_version() != version_of(valid(4))
    assert sink.of(POLICY_RELOADED) == []


def test_watching_twice_is_refused(watched: Engine) -> None:
    with pytest.raises(Exception, match="already watching"):
        watched.watch()


def test_a_hundred_reloads_half_invalid_under_sync_and_async_traffic(tmp_path: Path) -> None:
    """The issue's stress test: 100 reloads, half of them invalid, by rename (engine A) and by
    ConfigMap symlink swap (engine B), while threads and asyncio tasks decide on both."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    writers: list[Renamer | ConfigMap] = [Renamer(tmp_path / "a"), ConfigMap(tmp_path / "b")]
    sinks = [RecordingSink(), RecordingSink()]
    engines = [
        Engine.from_file(w.path, stores(), events=s, watch=True)
        for w, s in zip(writers, sinks, strict=True)
    ]
    for engine in engines:
        engine._watch._debounce = 0.01  # type: ignore[union-attr]
    validated = [{engine.config_version()} for engine in engines]
    seen: list[tuple[int, Reason, str]] = []
    stop = threading.Event()
    request = RequestContext(user_id="u1", session_id="s1")

    def sync_traffic() -> None:
        while not stop.is_set():
            for index, engine in enumerate(engines):
                trace = engine.decide(request).trace
                seen.append((index, trace.reason, trace.config_version))

    async def async_traffic() -> None:
        async def one_task() -> None:
            while not stop.is_set():
                for index, engine in enumerate(engines):
                    trace = (await engine.adecide(request)).trace
                    seen.append((index, trace.reason, trace.config_version))
                await asyncio.sleep(0)

        await asyncio.gather(*(one_task() for _ in range(8)))

    threads = [threading.Thread(target=sync_traffic) for _ in range(2)]
    threads.append(threading.Thread(target=lambda: asyncio.run(async_traffic())))
    for thread in threads:
        thread.start()
    try:
        for n in range(50):
            for index, (writer, engine, sink) in enumerate(
                zip(writers, engines, sinks, strict=True)
            ):
                if n % 2:
                    failures = len(sink.of(RELOAD_FAILED))
                    writer.write(invalid(n))
                    assert wait_for(lambda s=sink, f=failures: len(s.of(RELOAD_FAILED)) > f, WAIT)
                else:
                    text = valid(n + 1)
                    expected = version_of(text)
                    validated[index].add(expected)
                    writer.write(text)
                    assert wait_for(lambda e=engine, v=expected: e.config_version() == v, WAIT)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for engine in engines:
            engine.close()

    reloads = [len(s.of(POLICY_RELOADED)) + len(s.of(RELOAD_FAILED)) for s in sinks]
    assert reloads == [50, 50]
    assert [len(s.of(RELOAD_FAILED)) for s in sinks] == [25, 25]
    broken = (Reason.INTERNAL_ERROR, Reason.UNKNOWN_POLICY, Reason.CLOSED)
    assert [(i, r) for i, r, _ in seen if r in broken] == []
    # budget: a busy machine spent a request's 30 ms; the answer still came, un-personalized
    assert {r for _, r, _ in seen} <= {Reason.PRIMARY, Reason.FALLBACK, Reason.BUDGET}
    for index, _, version in seen:
        assert version in validated[index]
    assert len(seen) > 1000  # traffic ran throughout
    # Every version that validated served traffic on its engine, from the first to the last.
    for index in (0, 1):
        served = {v for i, _, v in seen if i == index}
        assert version_of(valid(49)) in served
