"""Flags from an OpenFeature provider, with the SDK's in-memory provider (and variants of it
that fail, hang or start slowly)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent, ProviderEventDetails
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from pydantic import ValidationError

from resilience._flag_feed import FeedSnapshot, FlagRecord
from resilience._flags_openfeature import OpenFeatureFlagFeed, OpenFeatureOptions
from resilience.testing import wait_for

KEYS = ["search.session", "search.profile", "search.exploration", "search.unknown"]


def string_flag(value: str, **metadata: Any) -> InMemoryFlag[str]:
    return InMemoryFlag(value, {value: value}, flag_metadata=metadata)


def bool_flag(value: bool) -> InMemoryFlag[bool]:
    return InMemoryFlag("v", {"v": value})


class Provider(InMemoryProvider):
    """The in-memory provider, with flags that can change (announced or not), evaluations that
    can fail or hang."""

    def __init__(self, flags: dict[str, InMemoryFlag[Any]]) -> None:
        super().__init__(flags)
        self.broken = False
        self.hang = threading.Event()
        self.release = threading.Event()

    def put(self, key: str, flag: InMemoryFlag[Any], *, announce: bool = True) -> None:
        self._flags[key] = flag
        if announce:
            self.emit_provider_configuration_changed(ProviderEventDetails(flags_changed=[key]))

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        if self.broken:
            raise ConnectionError("flag service unreachable")
        if self.hang.is_set():
            self.release.wait(10)
        return super().resolve_string_details(flag_key, default_value, evaluation_context)


class SlowStart(Provider):
    """A provider whose initialization waits for ``ready``."""

    def __init__(self, flags: dict[str, InMemoryFlag[Any]]) -> None:
        super().__init__(flags)
        self.ready = threading.Event()

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self.ready.wait(10)


class Seen:
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

    def value(self, key: str) -> str | None:
        flags = self.last().flags
        record = flags.get(key) if flags is not None else None
        return record.value if record is not None else None


@pytest.fixture(autouse=True)
def clean_openfeature() -> Iterator[None]:
    """The SDK's state is global: every test leaves it as it found it."""
    api.shutdown()
    yield
    api.shutdown()


@pytest.fixture
def domain(request: pytest.FixtureRequest) -> str:
    return f"test-{request.node.name}"


@pytest.fixture
def provider(domain: str) -> Provider:
    provider = Provider(
        {
            "search.session": string_flag("off", reason="incident 42", by="alice"),
            "search.profile": bool_flag(True),
            "search.exploration": bool_flag(False),
            "search.number": InMemoryFlag("n", {"n": 3}),
        }
    )
    api.set_provider_and_wait(provider, domain)
    return provider


@pytest.fixture
def make_feed(domain: str) -> Iterator[Callable[..., tuple[OpenFeatureFlagFeed, Seen]]]:
    feeds: list[OpenFeatureFlagFeed] = []

    def make(
        keys: list[str] | None = None, refresh_every: float = 60.0
    ) -> tuple[OpenFeatureFlagFeed, Seen]:
        feed = OpenFeatureFlagFeed(OpenFeatureOptions(domain=domain, refresh_every=refresh_every))
        seen = Seen()
        feeds.append(feed)
        chosen = KEYS if keys is None else keys
        feed.start(seen, lambda: chosen)
        return feed, seen

    yield make
    for feed in feeds:
        feed.stop()


def test_options() -> None:
    assert OpenFeatureOptions().domain is None
    assert OpenFeatureOptions.model_validate({"refresh_every": "500ms"}).refresh_every == 0.5
    with pytest.raises(ValidationError):
        OpenFeatureOptions(refresh_every=0)
    with pytest.raises(ValidationError):
        OpenFeatureOptions(domian="x")  # type: ignore[call-arg]


def test_string_and_boolean_flags_are_read_and_unknown_ones_left_out(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    feed, seen = make_feed(KEYS)
    assert feed.name == "openfeature"
    (snapshot,) = seen.all()  # delivered before start() returned
    assert snapshot == FeedSnapshot(
        "openfeature",
        {
            "search.session": FlagRecord("off", "incident 42", "alice", 0.0),
            "search.profile": FlagRecord("on", "", "In-Memory Provider", 0.0),
            "search.exploration": FlagRecord("off", "", "In-Memory Provider", 0.0),
        },
    )
    assert feed.last_read is not None


def test_a_flag_of_another_type_is_left_out_and_named(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    _, seen = make_feed(["search.session", "search.number"])
    snapshot = seen.last()
    assert snapshot.flags is not None
    assert set(snapshot.flags) == {"search.session"}
    assert "'search.number' (neither a string nor a boolean)" in snapshot.error


def test_the_default_domain_is_the_default_provider() -> None:
    api.set_provider_and_wait(InMemoryProvider({"search.session": string_flag("shadow")}))
    feed = OpenFeatureFlagFeed()
    seen = Seen()
    feed.start(seen, lambda: ["search.session"])
    try:
        assert seen.value("search.session") == "shadow"
    finally:
        feed.stop()


def test_a_configuration_change_reaches_the_feed_promptly(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    # refresh_every is long: only the provider's event can bring the change in time.
    _, seen = make_feed(refresh_every=60.0)
    provider.put("search.session", string_flag("on"))
    assert wait_for(lambda: seen.value("search.session") == "on", 5)
    provider.put("search.unknown", bool_flag(True))
    assert wait_for(lambda: seen.value("search.unknown") == "on", 5)


def test_a_new_provider_for_the_domain_is_read_when_it_is_ready(
    domain: str,
    provider: Provider,
    make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]],
) -> None:
    _, seen = make_feed(refresh_every=60.0)
    api.set_provider_and_wait(InMemoryProvider({"search.session": string_flag("shadow")}), domain)
    assert wait_for(
        lambda: (
            seen.last().flags
            == {"search.session": FlagRecord("shadow", "", "In-Memory Provider", 0.0)}
        ),
        5,
    )


def test_an_unannounced_change_is_read_on_the_next_round(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    _, seen = make_feed(refresh_every=0.05)
    provider.put("search.session", string_flag("on"), announce=False)
    assert wait_for(lambda: seen.value("search.session") == "on", 5)


def test_nothing_is_delivered_while_nothing_changes(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    feed, seen = make_feed(refresh_every=0.02)
    first = feed.last_read
    assert wait_for(lambda: feed.last_read != first, 5)  # a background round ran
    assert len(seen.all()) == 1


def test_refresh_evaluates_and_delivers_now(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    feed, seen = make_feed(refresh_every=60.0)
    provider.put("search.session", string_flag("on"), announce=False)
    feed.refresh()
    assert seen.value("search.session") == "on"
    count = len(seen.all())
    feed.refresh()
    assert len(seen.all()) == count + 1


def test_a_provider_in_error_gives_one_stale_snapshot_then_recovers(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    _, seen = make_feed(refresh_every=0.05)
    provider.emit_provider_error(ProviderEventDetails(message="lost its stream"))
    assert wait_for(lambda: seen.last().flags is None, 5)
    assert "ERROR" in seen.last().error
    provider.emit_provider_error(ProviderEventDetails(message="still lost"))
    provider.put("search.session", string_flag("on"), announce=False)
    provider.emit_provider_ready(ProviderEventDetails())
    assert wait_for(lambda: seen.value("search.session") == "on", 5)
    assert [s.flags is None for s in seen.all()].count(True) == 1


def test_an_evaluation_error_gives_a_stale_snapshot_not_a_partial_one(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    feed, seen = make_feed(refresh_every=60.0)
    provider.broken = True
    feed.refresh()
    snapshot = seen.last()
    assert snapshot.flags is None
    assert "search.session" in snapshot.error
    assert "GENERAL" in snapshot.error
    provider.broken = False
    feed.refresh()
    assert seen.value("search.session") == "off"


def test_a_provider_not_ready_yet_gives_a_stale_snapshot_then_its_flags(
    domain: str, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    slow = SlowStart({"search.session": string_flag("off")})
    api.set_provider(slow, domain)  # initializes in the background
    try:
        _, seen = make_feed(refresh_every=60.0)
        (snapshot,) = seen.all()
        assert snapshot.flags is None
        assert "NOT_READY" in snapshot.error
    finally:
        slow.ready.set()
    assert wait_for(lambda: seen.value("search.session") == "off", 5)  # PROVIDER_READY


def test_a_stale_provider_still_delivers_and_says_so(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    _, seen = make_feed(refresh_every=60.0)
    provider.emit_provider_stale(ProviderEventDetails())
    assert wait_for(lambda: "stale" in seen.last().error, 5)
    assert seen.last().stale and seen.last().flags is not None
    assert seen.value("search.session") == "off"


def test_stop_removes_the_handlers_and_the_thread(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    from openfeature import _event_support

    feed, _ = make_feed()

    def ours() -> list[Any]:
        return [
            handler
            for by_event in _event_support._client_handlers.values()
            for event in ProviderEvent
            for handler in by_event.get(event, ())
            if getattr(handler, "__self__", None) is feed
        ]

    assert len(ours()) == 4
    feed.stop()
    assert ours() == []
    assert not any(t.name == "resilience-flags-openfeature" for t in threading.enumerate())
    feed.stop()  # idempotent


def test_stop_returns_while_an_evaluation_hangs(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    feed, _ = make_feed(refresh_every=0.02)
    provider.hang.set()
    try:
        stopper = threading.Thread(target=feed.stop)
        stopper.start()
        stopper.join(5)
        assert not stopper.is_alive()
    finally:
        provider.release.set()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, Python 3.12+
def test_a_forked_child_restarts_the_feed(
    provider: Provider, make_feed: Callable[..., tuple[OpenFeatureFlagFeed, Seen]]
) -> None:
    _, seen = make_feed(refresh_every=0.05)
    pid = os.fork()
    if pid == 0:  # the child: only a restarted thread can see a change made here
        code = 1
        try:
            provider.put("search.session", string_flag("on"), announce=False)
            code = 0 if wait_for(lambda: seen.value("search.session") == "on", 5) else 2
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 10
        status: int | None = None
        while time.monotonic() < deadline:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
                break
            time.sleep(0.01)
        assert status == 0, f"child exit status {status}"
        assert seen.value("search.session") == "off"  # the parent's provider did not change
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_an_engine_reads_its_flags_from_the_provider_its_policy_declares(domain: str) -> None:
    from resilience import Engine, Reason, RequestContext, load_policies

    provider = Provider({"p": string_flag("off"), "p.profile_only": bool_flag(False)})
    api.set_provider_and_wait(provider, domain)
    text = f"""
version: 1
default_policy: p
settings:
  flags:
    env_prefix: null
    openfeature: {{domain: {domain}, refresh_every: 60s}}
policies:
  p:
    chain:
      - type: profile_only
        source: profile_store
      - unpersonalized
"""
    engine = Engine(load_policies(text), {"profile_store": {}.get})
    try:
        assert engine.flags.get("p").source == "openfeature"
        assert engine.decide(RequestContext(user_id="u")).trace.reason is Reason.SWITCHED_OFF
        provider.put("p", string_flag("on"))  # announced: read at once, not in 60 s
        assert wait_for(lambda: engine.flags.get("p").value.value == "on", 10)
        trace = engine.decide(RequestContext(user_id="u")).trace
        assert trace.steps[0].detail == "flag:openfeature"  # profile_only=switched_off
    finally:
        engine.close()
