"""The thread bulkhead: bounded, never queueing, honest about what a timeout stops.

Calls block on ``threading.Event``s that the test releases, so every assertion is about counts
and states, never about how long something took. Waits are bounded (a few seconds) only so that
a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilience._bulkhead import BULKHEAD_ABANDONED, Bulkhead, BulkheadStats
from resilience._errors import BulkheadFull
from resilience.events import EVENTS

WAIT = 5.0  # upper bound for waits that should end at once; never reached when all is well


class ListSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))


class BrokenSink:
    def emit(self, event: str, /, **fields: Any) -> None:
        raise RuntimeError("sink down")


class Gate:
    """A blocking call the test controls: ``started`` is set when it runs, it returns on open."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()

    def __call__(self, value: Any = None) -> Any:
        self.started.set()
        if not self.opened.wait(WAIT):
            raise AssertionError("gate never opened")
        return value

    def open(self) -> None:
        self.opened.set()


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


def workers(name: str) -> list[threading.Thread]:
    prefix = f"resilience-bulkhead-{name}-"
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.fixture
def gates() -> Iterator[Callable[[], Gate]]:
    """Makes gates; every one is opened at teardown, so no worker outlives its test."""
    made: list[Gate] = []

    def make() -> Gate:
        made.append(Gate())
        return made[-1]

    yield make
    for gate in made:
        gate.open()


@pytest.fixture
def bulkheads() -> Iterator[Callable[..., Bulkhead]]:
    made: list[Bulkhead] = []

    def make(name: str, max_concurrent: int, **kwargs: Any) -> Bulkhead:
        made.append(Bulkhead(name, max_concurrent, **kwargs))
        return made[-1]

    yield make
    for bulkhead in made:
        bulkhead.close()


def test_call_returns_the_value_and_passes_arguments(bulkheads: Any) -> None:
    bulkhead = bulkheads("values", 2)
    assert bulkhead.call(lambda a, b=0: a + b, 1, b=2, timeout=WAIT) == 3
    assert bulkhead.submit(divmod, 7, 2).result(WAIT) == (3, 1)
    assert bulkhead.stats == BulkheadStats(0, 2, 2, 0, 0)


def test_exceptions_of_fn_propagate_unchanged(bulkheads: Any) -> None:
    bulkhead = bulkheads("raises", 1)
    error = KeyError("k")

    def fail() -> None:
        raise error

    with pytest.raises(KeyError) as caught:
        bulkhead.call(fail, timeout=WAIT)
    assert caught.value is error

    # fn's own TimeoutError (socket.timeout is one) is not mistaken for the bulkhead's.
    own = TimeoutError("socket timed out")

    def time_out() -> None:
        raise own

    with pytest.raises(TimeoutError) as caught_timeout:
        bulkhead.call(time_out, timeout=WAIT)
    assert caught_timeout.value is own
    assert bulkhead.stats == BulkheadStats(0, 1, 2, 0, 0)


def test_calls_up_to_the_limit_run_in_parallel(bulkheads: Any) -> None:
    limit = 4
    bulkhead = bulkheads("parallel", limit)
    barrier = threading.Barrier(limit, timeout=WAIT)  # breaks unless all `limit` run at once
    futures = [bulkhead.submit(barrier.wait) for _ in range(limit)]
    assert sorted(f.result(WAIT) for f in futures) == list(range(limit))
    assert len(workers("parallel")) == limit
    wait_until(lambda: bulkhead.stats.in_flight == 0)
    assert bulkhead.stats == BulkheadStats(0, limit, limit, 0, 0)


def test_a_full_bulkhead_rejects_at_once_and_never_queues(bulkheads: Any, gates: Any) -> None:
    bulkhead = bulkheads("full", 3)
    held = [gates() for _ in range(3)]
    futures = [bulkhead.submit(gate, i) for i, gate in enumerate(held)]
    for gate in held:
        assert gate.started.wait(WAIT)

    never_run = gates()
    with pytest.raises(BulkheadFull) as caught:
        bulkhead.submit(never_run)
    assert (caught.value.source, caught.value.limit) == ("full", 3)
    with pytest.raises(BulkheadFull):
        bulkhead.call(never_run, timeout=WAIT)
    assert bulkhead.stats == BulkheadStats(3, 3, 0, 2, 0)

    held[1].open()
    assert futures[1].result(WAIT) == 1
    wait_until(lambda: bulkhead.stats.in_flight == 2)
    assert bulkhead.call(lambda: "slot again", timeout=WAIT) == "slot again"
    for gate in held:
        gate.open()
    assert [f.result(WAIT) for f in futures] == [0, 1, 2]
    assert not never_run.started.is_set()


def test_a_timed_out_call_is_abandoned_and_holds_its_slot_until_it_returns(
    bulkheads: Any, gates: Any
) -> None:
    bulkhead = bulkheads("slow-store", 1)
    bulkhead.call(lambda: None, timeout=WAIT)  # a worker is up and idle: the next call starts
    hung = gates()

    with pytest.raises(TimeoutError, match=r"'slow-store'.*0\.1s"):
        bulkhead.call(hung, timeout=0.1)
    assert hung.started.is_set()  # it ran and runs on: the timeout only stopped our waiting
    assert bulkhead.stats == BulkheadStats(1, 1, 1, 0, 1)
    with pytest.raises(BulkheadFull):
        bulkhead.submit(lambda: None)  # the hung call keeps its slot

    hung.open()
    wait_until(lambda: bulkhead.stats.in_flight == 0)
    assert bulkhead.call(lambda: "free", timeout=WAIT) == "free"
    assert bulkhead.stats == BulkheadStats(0, 1, 3, 1, 1)


def test_no_time_left_starts_nothing(bulkheads: Any, gates: Any) -> None:
    bulkhead = bulkheads("no-time", 1)
    gate = gates()
    with pytest.raises(TimeoutError, match="no-time"):
        bulkhead.call(gate, timeout=0)
    assert not gate.started.is_set()
    assert bulkhead.stats == BulkheadStats(0, 1, 0, 0, 0)
    assert workers("no-time") == []


def test_sequential_calls_at_the_limit_never_meet_their_own_finished_call(
    bulkheads: Any,
) -> None:
    bulkhead = bulkheads("sequential", 1)
    for i in range(300):
        assert bulkhead.call(int, i, timeout=WAIT) == i
    assert bulkhead.stats == BulkheadStats(0, 1, 300, 0, 0)


def test_abandon_from_an_asyncio_caller_counts_once(bulkheads: Any, gates: Any) -> None:
    bulkhead = bulkheads("async-store", 1)
    hung = gates()

    async def caller() -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = bulkhead.submit(hung)
        task = asyncio.ensure_future(asyncio.wrap_future(future))
        await asyncio.to_thread(hung.started.wait, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        bulkhead.abandon(future)
        bulkhead.abandon(future)  # idempotent per future
        return future

    future = asyncio.run(caller())
    assert bulkhead.stats == BulkheadStats(1, 1, 0, 0, 1)
    hung.open()
    assert future.result(WAIT) is None  # a running call cannot be cancelled: it ran to the end
    wait_until(lambda: bulkhead.stats.in_flight == 0)
    bulkhead.abandon(future)
    assert bulkhead.stats == BulkheadStats(0, 1, 1, 0, 1)


def test_a_call_cancelled_before_it_started_never_runs(
    bulkheads: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    deferred: list[Callable[[], None]] = []
    start = Bulkhead._start_worker
    monkeypatch.setattr(
        Bulkhead,
        "_start_worker",
        lambda self, number, future: deferred.append(lambda: start(self, number, future)),
    )
    bulkhead = bulkheads("cancelled", 1)
    ran = threading.Event()
    future = bulkhead.submit(ran.set)
    assert future.cancel()
    deferred.pop()()  # the worker starts only now, and finds the call cancelled
    wait_until(lambda: bulkhead.stats.in_flight == 0)
    assert not ran.is_set()
    assert bulkhead.stats == BulkheadStats(0, 1, 0, 0, 0)


def test_close_does_not_wait_for_a_hung_call_and_refuses_new_ones(
    bulkheads: Any, gates: Any
) -> None:
    bulkhead = bulkheads("closing", 2)
    hung, quick = gates(), gates()
    hung_future = bulkhead.submit(hung)
    quick_future = bulkhead.submit(quick)
    assert hung.started.wait(WAIT)
    assert quick.started.wait(WAIT)
    quick.open()
    assert quick_future.result(WAIT) is None
    threads = {t.name: t for t in workers("closing")}
    assert set(threads) == {"resilience-bulkhead-closing-1", "resilience-bulkhead-closing-2"}

    closer = threading.Thread(target=bulkhead.close)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive()  # close() returned with a call still hung
    bulkhead.close()  # idempotent

    with pytest.raises(BulkheadFull):
        bulkhead.submit(lambda: None)
    wait_until(lambda: len(workers("closing")) == 1)  # the idle worker exited
    assert bulkhead.stats == BulkheadStats(1, 2, 1, 1, 0)

    hung.open()
    assert hung_future.result(WAIT) is None  # an accepted call still completes
    for thread in threads.values():
        thread.join(WAIT)
        assert not thread.is_alive()
    assert bulkhead.stats == BulkheadStats(0, 2, 2, 1, 0)


def test_workers_are_named_daemons_started_lazily(bulkheads: Any, gates: Any) -> None:
    bulkhead = bulkheads("lazy", 3)
    assert workers("lazy") == []
    thread = bulkhead.call(threading.current_thread, timeout=WAIT)
    assert thread.name == "resilience-bulkhead-lazy-1"
    assert thread.daemon
    for _ in range(5):  # one call at a time needs one worker
        bulkhead.call(threading.current_thread, timeout=WAIT)
    assert [t.name for t in workers("lazy")] == ["resilience-bulkhead-lazy-1"]

    first, second = gates(), gates()
    bulkhead.submit(first)
    bulkhead.submit(second)
    assert first.started.wait(WAIT)
    assert second.started.wait(WAIT)
    assert sorted(t.name for t in workers("lazy")) == [
        "resilience-bulkhead-lazy-1",
        "resilience-bulkhead-lazy-2",
    ]
    assert all(t.daemon for t in workers("lazy"))


def test_the_abandoned_event_is_rate_limited(bulkheads: Any, gates: Any) -> None:
    assert EVENTS[BULKHEAD_ABANDONED].level == "warning"
    sink = ListSink()
    bulkhead = bulkheads("noisy", 1, events=sink)
    bulkhead.call(lambda: None, timeout=WAIT)  # a worker is up and idle: the next call starts
    hung = gates()
    with pytest.raises(TimeoutError):
        bulkhead.call(hung, timeout=0.1)
    assert hung.started.is_set()
    assert sink.events == [
        (BULKHEAD_ABANDONED, {"source": "noisy", "in_flight": 1, "abandoned": 1})
    ]
    hung.open()
    wait_until(lambda: bulkhead.stats.in_flight == 0)

    done = bulkhead.submit(int)
    done.result(WAIT)
    for _ in range(50):
        bulkhead.abandon(concurrent.futures.Future())
    bulkhead.abandon(done)
    assert len(sink.events) == 1  # not one per abandonment
    for _ in range(150):
        bulkhead.abandon(concurrent.futures.Future())
    assert [fields["abandoned"] for _, fields in sink.events] == [1, 101, 201]


def test_a_broken_sink_does_not_replace_the_timeout(bulkheads: Any, gates: Any) -> None:
    bulkhead = bulkheads("broken-sink", 1, events=BrokenSink())
    with pytest.raises(TimeoutError, match="broken-sink"):
        bulkhead.call(gates(), timeout=0.01)
    assert bulkhead.stats.abandoned == 1


def test_max_concurrent_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Bulkhead("zero", 0)
