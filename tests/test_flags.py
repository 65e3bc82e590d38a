"""Kill switches and flags: keys, values, precedence between sources, staleness, the audit trail,
and what each switch does to a decision."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    PRECEDENCE,
    Engine,
    EnvFlagFeed,
    FeedSnapshot,
    FlagError,
    FlagRecord,
    Flags,
    Mode,
    Outcome,
    PolicyValidationError,
    Reason,
    RequestContext,
    load_policies,
)
from resilience._flags import (
    FLAG_CHANGED,
    FLAG_REJECTED,
    FLAG_SOURCE_RECOVERED,
    FLAG_SOURCE_STALE,
    flag_specs,
    parse_mode,
)
from resilience.testing import FakeClock, HandFlags, RecordingSink

from .conftest import REFERENCE_POLICIES, Stores

RETURNING = RequestContext(user_id="u1", session_id="s1", request_id="r1")


def test_every_policy_and_step_but_the_terminal_tier_has_a_flag(reference_yaml: str) -> None:
    specs = flag_specs(load_policies(reference_yaml))
    assert list(specs) == [
        "search",
        "search.error_rate",
        "search.session",
        "search.stale_cache",
        "search.profile_only",
        "search.segment",
        "search.boost_cap",
        "search.exploration",
    ]
    assert specs["search.session"].allowed == {Mode.ON, Mode.OFF}  # a tier has no shadow
    assert specs["search.error_rate"].allowed == set(Mode)


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("on", Mode.ON),
        ("OFF", Mode.OFF),
        (" shadow ", Mode.SHADOW),
        ("true", Mode.ON),
        ("false", Mode.OFF),
        (True, Mode.ON),
        (False, Mode.OFF),
        ("yes", None),
        ("", None),
        (1, None),
        (None, None),
    ],
)
def test_values_a_flag_takes(value: object, mode: Mode | None) -> None:
    assert parse_mode(value) is mode


def test_the_kill_switch_leaves_only_the_terminal_tier(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.flags.set("search", "off", reason="incident 42", by="alice")
    decision = engine.decide(RETURNING)
    assert decision.trace.reason is Reason.SWITCHED_OFF
    assert decision.trace.served == "unpersonalized"
    assert [r.step for r in decision.trace.steps] == ["unpersonalized"]  # no guard, no post step
    assert decision.signals is None
    assert stores.session.calls == stores.profile.calls == 0


def test_the_kill_switch_holds_in_asyncio_too(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.flags.set("search", "off", reason="incident 42")
    decision = asyncio.run(engine.adecide(RETURNING))
    assert decision.trace.reason is Reason.SWITCHED_OFF
    engine.flags.clear("search", reason="resolved")
    assert asyncio.run(engine.adecide(RETURNING)).trace.reason is Reason.PRIMARY


def test_a_switched_off_tier_is_not_called_and_says_where_the_switch_came_from(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    feed = HandFlags("redis", {"search.session": "off"})
    engine = make_engine(reference_yaml, stores.sync(), flag_feeds=[feed])
    decision = engine.decide(RETURNING)
    assert decision.trace.outcome_of("session") is Outcome.SWITCHED_OFF
    assert decision.trace.steps[0].detail == "flag:redis"
    assert decision.trace.served == "profile_only"
    assert decision.trace.reason is Reason.FALLBACK  # the first tier did not serve
    assert stores.session.calls == 0


@pytest.mark.parametrize(
    ("key", "step"), [("search.error_rate", "error_rate"), ("search.boost_cap", "boost_cap")]
)
def test_a_switched_off_guard_or_post_step_does_not_run(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores, key: str, step: str
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.flags.set(key, "off", reason="test")
    trace = engine.decide(RETURNING).trace
    assert [r.outcome for r in trace.steps if r.step == step] == [Outcome.SWITCHED_OFF]
    assert trace.reason is Reason.PRIMARY


def test_a_declared_mode_is_the_default_and_a_flag_overrides_it(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    text = reference_yaml.replace(
        "      - type: stale_cache\n", "      - type: stale_cache\n        mode: 'off'\n"
    )
    text = text.replace("      - type: session\n", "      - type: session\n        mode: off\n")
    engine = make_engine(text, stores.sync())
    trace = engine.decide(RETURNING).trace
    assert trace.outcome_of("session") is Outcome.SWITCHED_OFF
    assert trace.steps[0].detail == "policy"
    assert engine.flags.get("search.session").source == "policy"
    engine.flags.set("search.session", "on", reason="try it")
    assert engine.decide(RETURNING).trace.served == "session"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("search.unpersonalized", "off", "terminal tier has no switch"),
        ("search.sesion", "off", "no switchable step 'sesion'"),
        ("serch", "off", "no flag 'serch'"),
        ("search.session", "shadow", "cannot be 'shadow'; use one of: on, off"),
        ("search", "maybe", "cannot be 'maybe'"),
    ],
)
def test_the_in_process_api_refuses_what_no_flag_admits(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    key: str,
    value: str,
    message: str,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    with pytest.raises(FlagError, match=message):
        engine.flags.set(key, value, reason="test")
    assert engine.flags.overrides() == []


def test_the_terminal_tier_cannot_be_declared_off(reference_yaml: str) -> None:
    text = reference_yaml.replace(
        "      - type: unpersonalized\n", "      - type: unpersonalized\n        mode: off\n"
    )
    with pytest.raises(PolicyValidationError, match="terminal tier cannot be switched off"):
        load_policies(text)


SOURCES = [name for name in PRECEDENCE if name != "api"]


REFERENCE_TEXT = REFERENCE_POLICIES.read_text()


@given(
    held=st.dictionaries(
        st.sampled_from(PRECEDENCE), st.sampled_from(["on", "off", "shadow"]), max_size=5
    ),
    declared=st.sampled_from(["on", "off", "shadow"]),
)
def test_the_highest_source_that_holds_a_flag_decides(held: dict[str, str], declared: str) -> None:
    text = REFERENCE_TEXT.replace(
        "      - type: error_rate", f"      - type: error_rate\n        mode: {declared}"
    )
    feeds = [HandFlags(name) for name in SOURCES]
    for feed in feeds:
        if feed.name in held:
            feed.flags["search.error_rate"] = held[feed.name]
    engine = Engine(
        load_policies(text),
        {"session_store": {}.get, "profile_store": {}.get, "segment_store": {}.get},
        clock=FakeClock(),
        events=RecordingSink(),
        flag_feeds=feeds,
    )
    try:
        if "api" in held:
            engine.flags.set("search.error_rate", held["api"], reason="test")
        state = engine.flags.get("search.error_rate")
        winner = next((name for name in PRECEDENCE if name in held), None)
        if winner is None:
            assert (state.source, state.value) == ("policy", Mode(declared))
        else:
            assert (state.source, state.value) == (winner, Mode(held[winner]))
        assert engine.flags.held("search.error_rate").keys() == {
            name for name in PRECEDENCE if name in held
        }
    finally:
        engine.close()


def test_an_unreachable_source_keeps_its_last_values_reported_stale(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
) -> None:
    redis = HandFlags("redis", {"search": "off"})
    engine = make_engine(reference_yaml, stores.sync(), flag_feeds=[redis])
    assert engine.flags.get("search").value is Mode.OFF
    redis.unreachable()
    redis.unreachable()  # told twice: reported once
    state = engine.flags.get("search")
    assert (state.value, state.source, state.stale) == (Mode.OFF, "redis", True)
    assert engine.decide(RETURNING).trace.reason is Reason.SWITCHED_OFF
    assert [e["source"] for e in recording_sink.of(FLAG_SOURCE_STALE)] == ["redis"]
    health = {h.source: h for h in engine.flags.sources()}
    assert not health["redis"].healthy
    assert "connection refused" in health["redis"].error
    redis.set("search", "on")
    assert recording_sink.of(FLAG_SOURCE_RECOVERED) == [{"source": "redis"}]
    assert not engine.flags.get("search").stale
    assert engine.decide(RETURNING).trace.reason is Reason.PRIMARY


def test_with_nothing_known_the_declared_default_holds(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    redis = HandFlags("redis")
    redis.unreachable("refused")  # from the start: nothing was ever known
    engine = make_engine(reference_yaml, stores.sync(), flag_feeds=[redis])
    state = engine.flags.get("search")
    assert (state.value, state.source, state.stale) == (Mode.ON, "policy", False)
    assert engine.decide(RETURNING).trace.reason is Reason.PRIMARY


def test_a_value_a_flag_cannot_take_is_rejected_once_and_the_next_source_decides(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
) -> None:
    redis = HandFlags("redis", {"search.session": "shadow", "search.nope": "off"})
    env = HandFlags("env", {"search.session": "off"})
    engine = make_engine(reference_yaml, stores.sync(), flag_feeds=[redis, env])
    redis.refresh()  # the same snapshot again: not reported again
    assert engine.flags.get("search.session").source == "env"
    rejected = recording_sink.of(FLAG_REJECTED)
    assert sorted((e["key"], e["source"]) for e in rejected) == [
        ("search.nope", "redis"),
        ("search.session", "redis"),
    ]


def test_every_change_is_an_audit_event(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
    fake_clock: FakeClock,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.flags.set("search.exploration", "shadow", reason="measure first", by="bob")
    engine.flags.clear("search.exploration", reason="measured", by="bob")
    changes = recording_sink.of(FLAG_CHANGED)
    assert changes == [
        {
            "key": "search.exploration",
            "old": "on",
            "old_source": "policy",
            "new": "shadow",
            "source": "api",
            "reason": "measure first",
            "by": "bob",
            "at": fake_clock.wall(),
        },
        {
            "key": "search.exploration",
            "old": "shadow",
            "old_source": "api",
            "new": "on",
            "source": "policy",
            "reason": "measured",
            "by": "bob",
            "at": 0.0,
        },
    ]


def test_environment_variables_name_policies_and_steps() -> None:
    delivered: list[FeedSnapshot] = []
    feed = EnvFlagFeed(
        "RESILIENCE_FLAG_",
        {
            "RESILIENCE_FLAG_SEARCH": "off",
            "RESILIENCE_FLAG_SEARCH__STALE_CACHE": "on",
            "OTHER": "x",
        },
    )
    feed.start(delivered.append, list)
    assert dict(delivered[0].flags or {}) == {
        "search": FlagRecord("off", "environment variable RESILIENCE_FLAG_SEARCH"),
        "search.stale_cache": FlagRecord(
            "on", "environment variable RESILIENCE_FLAG_SEARCH__STALE_CACHE"
        ),
    }


def test_the_environment_is_read_by_default(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESILIENCE_FLAG_SEARCH__SESSION", "off")
    engine = make_engine(reference_yaml, stores.sync())
    assert engine.flags.get("search.session").source == "env"
    text = reference_yaml.replace("settings:\n", "settings:\n  flags:\n    env_prefix: null\n")
    quiet = make_engine(text, stores.sync())
    assert quiet.flags.get("search.session").source == "policy"


def test_the_request_path_takes_no_lock_that_flags_or_reloads_hold(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.flags.set("search.boost_cap", "off", reason="test")
    answered: list[Reason] = []
    with engine._lock:  # a flag change or a reload in progress holds this
        worker = threading.Thread(
            target=lambda: answered.append(engine.decide(RETURNING).trace.reason)
        )
        worker.start()
        worker.join(timeout=30)
        assert answered == [Reason.PRIMARY]


def test_close_stops_every_source(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    feeds = [HandFlags("redis"), HandFlags("file")]
    engine = make_engine(reference_yaml, stores.sync(), flag_feeds=feeds)
    engine.close()
    assert all(feed.stopped for feed in feeds)


def test_flags_change_safely_under_concurrent_decisions(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    stop = threading.Event()
    seen: set[Reason] = set()
    failures: list[object] = []

    def traffic() -> None:
        while not stop.is_set():
            trace = engine.decide(RETURNING).trace
            seen.add(trace.reason)
            if trace.reason is Reason.INTERNAL_ERROR:
                failures.append(trace)

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()
    for value, _ in zip(itertools.cycle(["off", "on", "shadow"]), range(300), strict=False):
        engine.flags.set("search", value, reason="churn")
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert Reason.INTERNAL_ERROR not in seen


def test_a_board_without_sources_still_serves_the_api() -> None:
    policies = load_policies("version: 1\npolicies:\n  p:\n    chain: [unpersonalized]\n")
    changes: list[int] = []
    board = Flags(
        flag_specs(policies),
        RecordingSink(),
        lambda: 0.0,
        lambda: changes.append(1),
        threading.RLock(),
    )
    board.set("p", "off", reason="test")
    assert board.modes() == {"p": Mode.OFF}
    assert changes == [1]


def board(
    text: str = "version: 1\npolicies:\n  p:\n    chain: [unpersonalized]\n",
) -> tuple[Flags, RecordingSink]:
    sink = RecordingSink()
    flags = Flags(
        flag_specs(load_policies(text)), sink, lambda: 0.0, lambda: None, threading.RLock()
    )
    return flags, sink


def test_a_replaced_source_counts_from_its_first_good_read_and_flips_nothing_before() -> None:
    flags, sink = board()
    flags.start([HandFlags("file", {"p": "off"}), HandFlags("env")])
    assert flags.get("p").value is Mode.OFF
    flags.replace([HandFlags("file", {"p": "off"})], keep=["env"])  # another file, same value
    assert [e["new"] for e in sink.of(FLAG_CHANGED)] == ["off"]  # no off -> on -> off
    unreadable = HandFlags("file")
    unreadable.unreachable("no such file")
    flags.replace([unreadable], keep=["env"])  # a new file that cannot be read (yet)
    state = flags.get("p")
    assert (state.value, state.source, state.stale) == (Mode.OFF, "file", True)  # no flip
    unreadable.set("q", "on")  # its first good read: it does not hold p
    assert (flags.get("p").value, flags.get("p").source) == (Mode.ON, "policy")
    assert [e["new"] for e in sink.of(FLAG_CHANGED)] == ["off", "on"]


def test_a_source_no_longer_declared_stops_counting_and_kept_ones_run_on() -> None:
    flags, _ = board()
    env, file = HandFlags("env", {"p": "shadow"}), HandFlags("file", {"p": "off"})
    flags.start([env, file])
    flags.replace([], keep=["env"])
    assert file.stopped and not env.stopped
    assert (flags.get("p").value, flags.get("p").source) == (Mode.SHADOW, "env")


@pytest.mark.parametrize(
    ("names", "message"),
    [(["launchdarkly"], "not 'launchdarkly'"), (["api"], "not 'api'"), (["file", "file"], "two")],
)
def test_a_source_must_play_one_ranked_source_once(
    reference_yaml: str, stores: Stores, names: list[str], message: str
) -> None:
    with pytest.raises(FlagError, match=message):
        Engine(
            load_policies(reference_yaml),
            stores.sync(),
            events=RecordingSink(),
            flag_feeds=[HandFlags(name) for name in names],
        )


def test_values_a_source_reports_stale_count_and_are_marked_stale() -> None:
    flags, sink = board()
    flags.deliver(FeedSnapshot("openfeature", {"p": FlagRecord("off")}, "provider stale", True))
    state = flags.get("p")
    assert (state.value, state.source, state.stale) == (Mode.OFF, "openfeature", True)
    assert sink.of(FLAG_SOURCE_STALE) == [{"source": "openfeature", "error": "provider stale"}]
    flags.deliver(FeedSnapshot("openfeature", {"p": FlagRecord("off")}))
    assert not flags.get("p").stale
    assert sink.of(FLAG_SOURCE_RECOVERED) == [{"source": "openfeature"}]
