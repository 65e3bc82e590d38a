"""Hot reload through :meth:`Engine.reload`: all or nothing, requests in flight finish on their
plan, and what is unchanged carries over."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from resilience import (
    Engine,
    Outcome,
    PluginHost,
    PolicyError,
    Reason,
    RequestContext,
    SessionState,
    Tier,
    TierParams,
    _fork,
    hookimpl,
    load_policies,
)
from resilience._engine import POLICY_RELOADED, RELOAD_FAILED
from resilience.testing import FakeClock, RecordingSink, wait_for, wait_for_child

from .conftest import Stores

RETURNING = RequestContext(user_id="u1", session_id="s1", request_id="r1")


class ExtraTier(Tier):
    name = "extra_tier"
    Params = TierParams

    def run(self, request: RequestContext, timeout: float) -> None:
        return None


class Extra:
    """A plugin registered in code, not by an entry point."""

    @hookimpl
    def resilience_step_types(self) -> list[type[Tier]]:
        return [ExtraTier]


def test_a_valid_change_is_running_after_reload(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    before = engine.config_version()
    result = engine.reload(reference_yaml.replace("budget: 30ms", "budget: 25ms"))
    assert result.ok
    assert result.changed == ("search",)
    assert result.versions == {"search": engine.config_version()} != {"search": before}
    trace = engine.decide(RETURNING).trace
    assert trace.config_version == result.versions["search"]
    assert trace.budget_us == 25_000
    event = recording_sink.of(POLICY_RELOADED)[-1]
    assert event["previous_version"] != event["version"] == result.version
    assert event["kept_sources"] == ["profile_store", "segment_store", "session_store"]


def test_an_invalid_change_keeps_the_last_good_policy(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    before = engine.config_version()
    result = engine.reload(reference_yaml.replace("type: stale_cache", "type: stale_cach"))
    assert not result.ok
    assert result.versions == {"search": before}
    assert "did you mean 'stale_cache'?" in str(result.issues[0])
    failed = recording_sink.of(RELOAD_FAILED)
    assert failed[0]["problems"] == 1
    assert "policies.search.chain[1].type: unknown tier type 'stale_cach'" in failed[0]["errors"][0]
    assert engine.decide(RETURNING).trace.config_version == before
    # ... and the next good change still applies.
    assert engine.reload(reference_yaml.replace("budget: 30ms", "budget: 20ms")).ok


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("source: segment_store", "source: other_store"),  # not bound: found at build time
        ("max_age: 5m", "max_age: 5"),  # a bare number: found at validation
        ("policies:", "policies: 3\nx:"),  # not even the right shape
    ],
)
def test_every_kind_of_bad_change_is_refused_whole(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    change: str,
    message: str,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    before = engine.versions()
    result = engine.reload(reference_yaml.replace(change, message, 1))
    assert not result.ok and result.issues
    assert engine.versions() == before
    assert engine.decide(RETURNING).trace.served == "session"


def test_an_identical_document_changes_nothing(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    recording_sink: RecordingSink,
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    result = engine.reload(reference_yaml + "\n# a comment\n")
    assert result.ok and result.changed == ()
    assert recording_sink.of(POLICY_RELOADED) == []


def test_a_request_in_flight_finishes_on_the_plan_it_started_with(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    results: list[Any] = []
    engine: Engine | None = None

    def session_store(key: str) -> SessionState | None:
        assert engine is not None
        # The policy changes while this request is inside its first tier.
        results.append(engine.reload(reference_yaml.replace("budget: 30ms", "budget: 29ms")))
        return stores.session(key)  # type: ignore[no-any-return]

    engine = make_engine(reference_yaml, {**stores.sync(), "session_store": session_store})
    before = engine.config_version()
    trace = engine.decide(RETURNING).trace
    assert results[0].ok
    assert trace.config_version == before  # its plan, start to end
    assert trace.budget_us == 30_000
    assert engine.decide(RETURNING).trace.config_version == results[0].versions["search"]


def test_a_reload_from_an_asyncio_request_in_flight(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine: Engine | None = None

    async def session_store(key: str) -> SessionState | None:
        assert engine is not None
        engine.reload(reference_yaml.replace("budget: 30ms", "budget: 28ms"))
        await asyncio.sleep(0)
        return stores.session(key)  # type: ignore[no-any-return]

    engine = make_engine(reference_yaml, {**stores.sync(), "session_store": session_store})
    before = engine.config_version()
    trace = asyncio.run(engine.adecide(RETURNING)).trace
    assert trace.config_version == before and trace.served == "session"
    assert engine.config_version() != before


def test_the_breaker_of_an_unchanged_source_survives(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    breaker = engine.breaker("session_store")
    breaker.force_open()
    assert engine.reload(reference_yaml.replace("budget: 30ms", "budget: 25ms")).ok
    assert engine.breaker("session_store") is breaker
    assert engine.decide(RETURNING).trace.outcome_of("session") is Outcome.BREAKER_OPEN
    # A changed declaration is a new breaker, closed.
    changed = reference_yaml.replace(
        "      open_for: 5s\n      half_open_probes: 3",
        "      open_for: 6s\n      half_open_probes: 3",
    )
    assert engine.reload(changed).ok
    assert engine.breaker("session_store") is not breaker
    assert engine.decide(RETURNING).trace.outcome_of("session") is Outcome.OK


def test_the_stale_cache_keeps_its_entries(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.decide(RETURNING)  # the session tier feeds the cache
    assert engine.reload(reference_yaml.replace("budget: 30ms", "budget: 25ms")).ok
    stores.session.raises()
    trace = engine.decide(RETURNING).trace
    assert trace.served == "stale_cache"


def test_a_cache_no_step_uses_any_more_is_closed_after_the_grace(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync(), retire_after=0.01)
    engine.decide(RETURNING)
    cache = next(v for k, v in engine._generation.shared.items() if "cache" in str(k))
    assert len(cache) == 1
    without = reference_yaml.replace("      - type: stale_cache\n        max_age: 5m\n", "")
    without = without.replace(
        "        max_session_weight: 0.8", "        max_session_weight: 0.8\n        cache: null"
    )
    assert engine.reload(without).ok
    assert wait_for(lambda: len(cache) == 0, timeout=10)


def test_the_window_of_an_unchanged_guard_survives_and_a_changed_one_starts_afresh(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    guard: Any = engine._generation.compiled["search"].guards[0]
    guard.breaker.force_open()
    assert engine.reload(reference_yaml.replace("budget: 30ms", "budget: 25ms")).ok
    assert engine.decide(RETURNING).trace.reason is Reason.GUARD
    assert engine.reload(reference_yaml.replace("threshold: 0.05", "threshold: 0.06")).ok
    assert engine.decide(RETURNING).trace.reason is Reason.PRIMARY


def test_flags_survive_a_reload_and_follow_the_steps_it_keeps(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.flags.set("search.session", "off", reason="incident")
    engine.flags.set("search.segment", "off", reason="incident")
    without_segment = reference_yaml.replace(
        "      - type: segment\n        source: segment_store\n", ""
    )
    assert engine.reload(without_segment).ok
    assert engine.decide(RETURNING).trace.outcome_of("session") is Outcome.SWITCHED_OFF
    assert "search.segment" not in engine.flags.specs()
    assert engine.reload(reference_yaml).ok  # the step is back: so is its flag
    assert engine.flags.get("search.segment").source == "api"


def test_settings_flags_changes_restart_the_sources(
    make_engine: Callable[..., Engine],
    reference_yaml: str,
    stores: Stores,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTHER_SEARCH__SESSION", "off")
    engine = make_engine(reference_yaml, stores.sync())
    assert engine.flags.get("search.session").source == "policy"
    text = reference_yaml.replace("settings:\n", "settings:\n  flags:\n    env_prefix: OTHER_\n")
    assert engine.reload(text).ok
    assert engine.flags.get("search.session").source == "env"
    assert engine.decide(RETURNING).trace.outcome_of("session") is Outcome.SWITCHED_OFF


def test_a_closed_engine_refuses_reloads(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.close()
    result = engine.reload(reference_yaml.replace("budget: 30ms", "budget: 25ms"))
    assert not result.ok
    assert "closed" in result.issues[0].message


def test_reload_without_text_rereads_the_file(
    tmp_path: Any, reference_yaml: str, stores: Stores, fake_clock: FakeClock
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(reference_yaml)
    with Engine.from_file(path, stores.sync(), clock=fake_clock, events=RecordingSink()) as engine:
        path.write_text(reference_yaml.replace("budget: 30ms", "budget: 21ms"))
        assert engine.reload().ok
        assert engine.decide(RETURNING).trace.budget_us == 21_000
        path.unlink()
        result = engine.reload()
        assert not result.ok and "cannot read the file" in result.issues[0].message


def test_an_engine_not_built_from_a_file_must_be_told_what_to_watch(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    with pytest.raises(PolicyError, match="pass the path to watch"):
        engine.watch()


def test_a_new_plugin_allowlist_resolves_step_types_anew(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    acme = EntryPoint(name="acme", value="tests.plugin_fixtures.steps", group="resilience.plugins")
    host = PluginHost(allow=[], entry_points_=[acme], extra=[Extra()])
    engine = make_engine(reference_yaml, stores.sync(), plugins=host)
    admitting = reference_yaml.replace("    allow: []", "    allow: [acme]").replace(
        "      - type: error_rate",
        "      - type: off_for\n        users: [u1]\n      - type: error_rate",
    )
    result = engine.reload(admitting)
    assert result.ok, result.issues
    assert engine.decide(RETURNING).trace.reason is Reason.GUARD  # acme's guard is running
    assert "extra_tier" in engine.policies.plugins.step_types  # plugins given in code stay
    assert engine.reload(reference_yaml).ok  # and back: acme no longer admitted
    assert "off_for" not in engine.policies.plugins.step_types


def _fork_and_check(engine: Engine, reference_yaml: str) -> int | None:
    """Fork; the child flips, reloads, decides and closes. Returns the child's exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            engine.flags.set("search", "off", reason="in the child")
            reloaded = engine.reload(reference_yaml.replace("budget: 30ms", "budget: 20ms"))
            off = engine.decide(RETURNING).trace.reason is Reason.SWITCHED_OFF
            engine.close()
            code = 0 if reloaded.ok and off else 2
        finally:
            os._exit(code)
    return wait_for_child(pid, 30)


@pytest.mark.parametrize("stuck", [False, True], ids=["finishes", "stuck"])
def test_a_fork_during_a_change_gives_a_child_that_can_flip_reload_and_close(
    reference_yaml: str,
    stores: Stores,
    fake_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    stuck: bool,
) -> None:
    """A fork waits for a flag change or a reload in progress; one stuck past FORK_WAIT is
    forked through, and the child's locks are re-initialized all the same."""
    monkeypatch.setattr(_fork, "FORK_WAIT", 0.05 if stuck else 30.0)
    engine = Engine(
        load_policies(reference_yaml), stores.sync(), clock=fake_clock, events=RecordingSink()
    )
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # a flag change and a reload, in progress in the parent at the fork
        with engine._reloading, engine._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    if not stuck:
        threading.Timer(0.1, release.set).start()  # the change finishes while fork() waits
    try:
        status = _fork_and_check(engine, reference_yaml)
        assert status == 0, (
            "the child hung on a lock held at the fork" if status is None else status
        )
    finally:
        release.set()
        holder.join()
        engine.close()


def test_a_refused_reload_leaves_the_running_cache_as_it_was_and_a_good_one_may_shrink_it(
    make_engine: Callable[..., Engine], reference_yaml: str, stores: Stores
) -> None:
    engine = make_engine(reference_yaml, stores.sync())
    engine.decide(RETURNING)
    cache: Any = next(v for k, v in engine._generation.shared.items() if "cache" in str(k))
    before = (cache.max_entries, cache.ttl)
    # Valid YAML whose wiring is refused at build time: a second stale cache nothing feeds.
    refused = reference_yaml.replace(
        "        max_age: 5m\n",
        "        max_age: 720h\n        max_entries: 5000000\n"
        "      - type: stale_cache\n        id: orphan\n        cache: nobody_feeds_this\n",
    )
    result = engine.reload(refused)
    assert not result.ok and "no tier feeds the cache" in str(result.issues[0])
    assert (cache.max_entries, cache.ttl) == before
    assert engine.decide(RETURNING).trace.served == "session"

    smaller = reference_yaml.replace(
        "        max_age: 5m\n", "        max_age: 1m\n        max_entries: 10\n"
    )
    assert engine.reload(smaller).ok
    assert (cache.max_entries, cache.ttl) == (10, 60.0)
    assert len(cache) == 1  # the entries stayed


def test_close_during_a_reload_leaves_no_thread_running(
    tmp_path: Any, reference_yaml: str, stores: Stores, fake_clock: FakeClock
) -> None:
    (tmp_path / "flags.yaml").write_text("flags: {}\n")
    path = tmp_path / "policies.yaml"
    path.write_text(reference_yaml)
    engine = Engine(
        load_policies(reference_yaml, file=str(path)),
        stores.sync(),
        clock=fake_clock,
        events=RecordingSink(),
    )
    # Catch the reload after its swap, just before it starts the new flag sources.
    swapped, proceed = threading.Event(), threading.Event()
    replace = engine.flags.replace

    def caught(feeds: Any, **options: Any) -> None:
        swapped.set()
        proceed.wait(30)
        replace(feeds, **options)

    engine.flags.replace = caught  # type: ignore[method-assign]
    changed = reference_yaml.replace("settings:\n", "settings:\n  flags:\n    file: flags.yaml\n")
    reloading = threading.Thread(target=engine.reload, args=(changed,))
    reloading.start()
    assert swapped.wait(30)
    closing = threading.Thread(target=engine.close)
    closing.start()
    closing.join(0.2)  # close() must wait for the reload rather than slip in before the start
    proceed.set()
    reloading.join(30)
    closing.join(30)
    assert not reloading.is_alive() and not closing.is_alive()
    assert wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("resilience-flags")], 10
    ), [t.name for t in threading.enumerate()]
    assert engine.decide(RETURNING).trace.reason is Reason.CLOSED


def test_a_change_to_settings_flags_never_flips_a_flag_it_cannot_read_again(
    tmp_path: Any, reference_yaml: str, stores: Stores, fake_clock: FakeClock
) -> None:
    (tmp_path / "flags.yaml").write_text("flags:\n  search: 'off'\n")
    path = tmp_path / "policies.yaml"
    with_file = reference_yaml.replace("settings:\n", "settings:\n  flags:\n    file: flags.yaml\n")
    path.write_text(with_file)
    engine = Engine.from_file(path, stores.sync(), clock=fake_clock, events=RecordingSink())
    try:
        assert engine.flags.get("search").source == "file"
        running = [t for t in threading.enumerate() if t.name == "resilience-flags-file"]
        # Another environment prefix: the file source is untouched, still running, still read.
        other_env = with_file.replace(
            "    file: flags.yaml\n", "    file: flags.yaml\n    env_prefix: X_\n"
        )
        assert engine.reload(other_env).ok
        assert [t for t in threading.enumerate() if t.name == "resilience-flags-file"] == running
        # Another file, missing: the old file's values hold, stale, until the new one is read.
        moved = with_file.replace("file: flags.yaml", "file: moved.yaml")
        assert engine.reload(moved).ok
        state = engine.flags.get("search")
        assert (state.value.value, state.stale) == ("off", True)
        assert engine.decide(RETURNING).trace.reason is Reason.SWITCHED_OFF
        (tmp_path / "moved.yaml").write_text("flags: {}\n")
        assert wait_for(lambda: engine.flags.get("search").source == "policy", 30)
    finally:
        engine.close()


def test_reloads_for_months_hold_no_more_memory_than_one() -> None:
    """Found by the chaos soak: every reload left a row of counts per counting thread (the
    metrics' per-build layout) and a context variable (the error-rate guard's ticket), about
    two objects per reload, forever. Alternating two texts must hold steady."""
    import gc

    from resilience import NullSink
    from resilience.testing import wait_for

    text = """
version: 1
default_policy: p
policies:
  p:
    budget: BUDGET
    guards: [error_rate]
    chain: [unpersonalized]
"""
    engine = Engine(
        load_policies(text.replace("BUDGET", "30ms")), {}, retire_after=0.0, events=NullSink()
    )

    def reload(times: int) -> None:
        for n in range(times):
            assert engine.reload(text.replace("BUDGET", ("25ms", "30ms")[n % 2])).ok
            engine.decide(RequestContext(user_id="u1"))
        # every replaced build retired (a timer each), then one more row folds them all
        assert wait_for(lambda: not engine._retiring, 5)
        engine.decide(RequestContext(user_id="u1"))

    try:
        reload(20)
        gc.collect()
        before = len(gc.get_objects())
        reload(200)
        gc.collect()
        grown = len(gc.get_objects()) - before
        totals = engine.stats()
    finally:
        engine.close()
    assert grown < 50, f"{grown} objects more after 200 reloads"
    # and the retired builds' counts were kept, by name: 20 + 1 + 200 + 1 decisions
    assert sum(totals.decisions.values()) == 222
