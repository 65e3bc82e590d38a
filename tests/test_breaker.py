"""The failure-rate breaker, on the test kit's clock."""

from __future__ import annotations

import threading

import pybreaker
import pytest
from pydantic import ValidationError

from resilience import BreakerOptions, CircuitBreaker
from resilience.testing import FakeClock, RecordingSink


def make(clock: FakeClock, sink: RecordingSink | None = None, **options: object) -> CircuitBreaker:
    settings = {
        "minimum_calls": 10,
        "size": 20,
        "failure_rate": 0.5,
        "open_for": 5.0,
        "half_open_probes": 2,
        "probe_deadline": 1.0,
        **options,
    }
    return CircuitBreaker("store", BreakerOptions.model_validate(settings), clock, sink)


def feed(breaker: CircuitBreaker, failures: int, successes: int = 0, slow: bool = False) -> None:
    for failed in [True] * failures + [False] * successes:
        ticket = breaker.permit()
        assert ticket is not None
        breaker.record(ticket, failed=failed, slow=slow)


def test_opens_on_failure_rate_only_after_minimum_calls(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock)
    feed(breaker, failures=9)
    assert breaker.state == "closed"  # 9 calls: below minimum_calls, however bad
    feed(breaker, failures=1)
    assert breaker.state == "open"
    assert breaker.permit() is None


def test_a_rate_equal_to_the_threshold_does_not_open(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock)
    feed(breaker, failures=5, successes=5)
    assert breaker.state == "closed"
    feed(breaker, failures=1)  # 6 of 11 exceed 50%
    assert breaker.state == "open"


def test_a_steady_trickle_below_the_threshold_never_opens(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, failure_rate=0.2)
    for _ in range(100):
        feed(breaker, failures=1, successes=9)  # 10% errors: pybreaker's fail_max never sees it
    assert breaker.state == "closed"


def test_slow_calls_open_it(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, slow_call_rate=0.5)
    feed(breaker, failures=0, successes=10, slow=True)
    assert breaker.state == "open"
    assert breaker.snapshot().state == "open"


def test_the_count_window_forgets_the_oldest_calls(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, size=10, minimum_calls=10, failure_rate=0.5)
    feed(breaker, failures=5, successes=5)
    feed(breaker, failures=0, successes=10)  # the failures slide out
    assert breaker.snapshot().failure_rate == 0.0


def test_the_time_window_forgets_old_buckets(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, window="time", duration="10s", buckets=10, minimum_calls=5)
    feed(breaker, failures=4)
    fake_clock.advance(11)
    feed(breaker, failures=1, successes=4)
    snapshot = breaker.snapshot()
    assert snapshot.calls == 5
    assert snapshot.failure_rate == 0.2
    assert breaker.state == "closed"


def test_half_open_probes_close_it(fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    breaker = make(fake_clock, sink)
    feed(breaker, failures=10)
    fake_clock.advance(4.9)
    assert breaker.permit() is None
    fake_clock.advance(0.2)
    first, second = breaker.permit(), breaker.permit()
    assert breaker.state == "half-open"
    assert first is not None and second is not None
    assert breaker.permit() is None  # only two probes at a time
    breaker.record(first, failed=False, slow=False)
    breaker.record(second, failed=False, slow=False)
    assert breaker.state == "closed"
    assert sink.names() == [
        "resilience.breaker.opened",
        "resilience.breaker.half_opened",
        "resilience.breaker.closed",
    ]
    assert sink.of("resilience.breaker.opened")[0]["reason"] == "failure_rate"
    assert breaker.snapshot().calls == 0  # a closed breaker starts a fresh window


def test_a_failing_probe_reopens_it(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock)
    feed(breaker, failures=10)
    fake_clock.advance(5.1)
    probe = breaker.permit()
    assert probe is not None
    breaker.record(probe, failed=True, slow=False)
    assert breaker.state == "open"
    fake_clock.advance(4.0)
    assert breaker.permit() is None  # the open time starts again


def test_a_slow_probe_reopens_it_when_slow_calls_count(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, slow_call_rate=0.5)
    feed(breaker, failures=10)
    fake_clock.advance(5.1)
    probe = breaker.permit()
    assert probe is not None
    breaker.record(probe, failed=False, slow=True)
    assert breaker.state == "open"


def test_a_slow_probe_is_a_success_when_slow_calls_do_not_count(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, half_open_probes=1)  # slow_call_rate 1.0: the rule is off
    feed(breaker, failures=10)
    fake_clock.advance(5.1)
    probe = breaker.permit()
    assert probe is not None
    breaker.record(probe, failed=False, slow=True)
    assert breaker.state == "closed"


def test_a_success_that_reaches_the_minimum_can_trip_it(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock)  # minimum 10 calls, above 50% failed
    feed(breaker, failures=9)
    feed(breaker, failures=0, successes=1)  # 9 of 10 failed: the tenth call, a success, trips
    assert breaker.state == "open"


def test_a_raising_listener_never_reaches_the_caller(fake_clock: FakeClock) -> None:
    class Broken(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: object, old_state: object, new_state: object) -> None:
            raise RuntimeError("listener bug")

    breaker = CircuitBreaker(
        "store", BreakerOptions(minimum_calls=2, size=2), fake_clock, listeners=(Broken(),)
    )
    feed(breaker, failures=2)  # would raise from record() if the listener's error leaked
    assert breaker.state == "open"


def test_probes_that_never_report_reopen_it_at_the_probe_deadline(fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    breaker = make(fake_clock, sink)
    feed(breaker, failures=10)
    fake_clock.advance(5.1)
    assert breaker.permit() is not None
    assert breaker.permit() is not None  # both probes hang and never report
    fake_clock.advance(0.5)
    assert breaker.permit() is None
    assert breaker.state == "half-open"
    fake_clock.advance(0.6)
    assert breaker.permit() is None
    assert breaker.state == "open"
    assert sink.of("resilience.breaker.opened")[-1]["reason"] == "probe_deadline"
    fake_clock.advance(5.1)
    assert breaker.permit() is not None  # a new round of probes: it cannot stick


def test_a_probe_that_misses_lets_another_through(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock, half_open_probes=1)
    feed(breaker, failures=10)
    fake_clock.advance(5.1)
    probe = breaker.permit()
    assert probe is not None
    assert breaker.permit() is None
    breaker.release(probe)  # a miss: no news either way
    assert breaker.permit() is not None


def test_late_news_from_before_a_transition_is_ignored(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock)
    early = breaker.permit()
    assert early is not None
    feed(breaker, failures=10)
    fake_clock.advance(5.1)
    probe = breaker.permit()
    assert probe is not None
    breaker.record(early, failed=True, slow=False)  # admitted while closed, reports now
    assert breaker.state == "half-open"


def test_forced_states(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock)
    breaker.force_open()
    fake_clock.advance(3600)
    assert breaker.permit() is None
    assert breaker.snapshot().forced == "open"
    breaker.force_closed()
    feed(breaker, failures=50)
    assert breaker.state == "closed"
    breaker.release_force()
    assert breaker.snapshot().forced is None
    feed(breaker, failures=10)
    assert breaker.state == "open"


def test_forced_open_from_yaml(fake_clock: FakeClock) -> None:
    assert make(fake_clock, forced="open").permit() is None


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="could never open"):
        BreakerOptions(size=10, minimum_calls=20)
    with pytest.raises(ValidationError):
        BreakerOptions.model_validate({"failure_rate": 1.5})


def test_pybreaker_holds_the_state_and_tells_its_listeners(fake_clock: FakeClock) -> None:
    changes: list[tuple[str, str]] = []

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: object, old_state: object, new_state: object) -> None:
            changes.append((getattr(old_state, "name", ""), getattr(new_state, "name", "")))

    breaker = CircuitBreaker(
        "store",
        BreakerOptions(minimum_calls=2, size=2),
        fake_clock,
        listeners=(Listener(),),
    )
    feed(breaker, failures=2)
    assert changes == [("closed", "open")]


def test_calls_through_one_breaker_run_concurrently(fake_clock: FakeClock) -> None:
    breaker = make(fake_clock)
    inside = threading.Barrier(8, timeout=5)

    def call() -> None:
        ticket = breaker.permit()
        assert ticket is not None
        inside.wait()  # all eight are between permit and record at once
        breaker.record(ticket, failed=False, slow=False)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not inside.broken
    assert breaker.snapshot().calls == 8
