"""Memory: bytes per decision, sync and asyncio, and the stale cache at its bound.

Per decision, with ``tracemalloc``, on the happy path (the reference policy without post steps,
plus a 10% holdout; in-memory stores), after a warm-up:

- ``retained_bytes``: what a returned decision holds (its signals, candidates reference and
  trace): the growth of traced memory while ``decisions`` decisions are kept in a list
  allocated beforehand, divided by their number;
- ``transient_peak_bytes``: the traced peak during one decision above the memory before it
  (``tracemalloc.reset_peak``), the decision returned included; median over ``samples``
  decisions;
- ``leak_bytes_per_decision``: the growth of traced memory over ``decisions`` decisions that
  are discarded, divided by their number (``gc.collect()`` before each reading); about 0.

The baseline is ``HandWritten`` (``benchmarks.happy_path``: the same work written out),
measured the same way in the same run; ``ratio`` holds the engine's figures over it.

The stale cache (``resilience_plugins.signal_cache.SignalCache``, which the ``session`` tier
feeds and ``stale_cache`` serves) at its bound: the bound is the largest ``max_entries`` the
reference policy's ``stale_cache`` tiers declare (its default, 100,000, unless the file sets
one). A cache sized and timed as the engine sizes it is filled to its bound with signals built
as the session tier builds them (``blend`` of six clicks with a profile, one distinct session
id each), then another 10% are inserted: it stays at its bound. ``tracemalloc_bytes`` is the
traced growth; ``rss_bytes`` the growth of the resident set for the same fill in a fresh
subprocess (``/proc/self/statm``), so that this process's heap does not blur it. These two are
measurements, not ratios: the cache has no hand-written counterpart (the baseline uses the
same class).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resilience_plugins.signal_cache import SignalCache
from resilience_plugins.tiers.session import SessionParams, blend
from resilience_plugins.tiers.stale_cache import StaleCacheParams

from resilience import (
    Click,
    Decision,
    Engine,
    NullSink,
    PolicySet,
    RequestContext,
    SessionState,
    Signals,
    load_policies,
)

from .happy_path import PROFILES, REQUEST, HandWritten, async_sources, policy_text, sync_sources

__all__ = ["cache_bound", "fill_cache", "run"]

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = tuple(f"category-{n}" for n in range(40))
CATALOG = 200_000  # item ids are drawn from a catalog this large
_DRAIN = 200  # decisions kept alive before sampling transient peaks
QUICK_CACHE_ENTRIES = 20_000  # the stale cache's bound in quick mode (see _stale_cache)


def cache_bound(policies: PolicySet) -> tuple[int, float, bool]:
    """The bound and TTL the engine gives the ``session`` stale cache under ``policies``, and
    whether the bound is declared in the file (else it is the tier's default)."""
    params = [
        spec.params
        for policy in policies.policies.values()
        for spec in policy.chain
        if isinstance(spec.params, StaleCacheParams) and spec.params.cache == "session"
    ]
    assert params, "no stale_cache tier reads the session cache"
    declared = any("max_entries" in p.model_fields_set for p in params)
    return max(p.max_entries for p in params), max(p.max_age for p in params), declared


def _session(n: int, now: float) -> SessionState:
    """Session ``n``: six clicks on items of a large catalog, in a few categories."""
    clicks = tuple(
        Click(
            f"item-{(n * 7919 + k * 104_729) % CATALOG}",
            CATEGORIES[(n + k * 3) % len(CATEGORIES)],
            now - 60.0 + k,
        )
        for k in range(6)
    )
    return SessionState(clicks, now - 1.0)


def fill_cache(bound: int, ttl: float, inserts: int) -> SignalCache:
    """A cache sized ``bound`` with TTL ``ttl`` (as the engine sizes it), after ``inserts``
    sessions' signals were remembered in it, each built as the session tier builds them."""
    cache = SignalCache()
    cache.ensure_capacity(bound)
    cache.ensure_ttl(ttl)
    params = SessionParams()
    profile = PROFILES("u1")
    notes: dict[float, str] = {}
    now = time.time()
    for n in range(inserts):
        state = _session(n, now)
        categories, items, weight = blend(state, profile, params, now)
        note = notes.get(weight)
        if note is None:
            note = notes[weight] = f"w={weight:.2f}"
        signals = Signals(
            categories,
            items,
            "session",
            ("session_store", "profile_store"),
            weight,
            state.event_time,
            note,
        )
        cache.remember(f"session-{n:08d}", signals, now)
    return cache


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_child(bound: int, ttl: float, inserts: int) -> None:
    """In a fresh interpreter: the growth of the resident set while filling a cache."""
    gc.collect()
    before = _resident()
    cache = fill_cache(bound, ttl, inserts)
    gc.collect()
    grown = _resident() - before
    print(json.dumps({"rss_bytes": grown, "entries": len(cache)}))


def _rss_growth_started(bound: int, ttl: float, inserts: int) -> subprocess.Popen[str]:
    """Start the fresh interpreter that measures the resident set's growth (read it with
    :func:`_rss_growth`); it runs while this process fills its own cache under tracemalloc."""
    code = f"from benchmarks.memory import _rss_child; _rss_child({bound}, {ttl!r}, {inserts})"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rss_growth(child: subprocess.Popen[str]) -> dict[str, int]:
    out, err = child.communicate(timeout=300)
    if child.returncode != 0:
        raise RuntimeError(f"the RSS subprocess failed ({child.returncode}): {err}")
    found: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return found


@contextmanager
def _tracing() -> Iterator[None]:
    """Trace allocations; the objects alive before are frozen out of the collector's reach
    (``gc.freeze``), so that the ``gc.collect()`` before each reading stays cheap."""
    started = not tracemalloc.is_tracing()
    frozen = gc.get_freeze_count() == 0
    if frozen:
        gc.collect()
        gc.freeze()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()
        if frozen:
            gc.unfreeze()


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _stale_cache(policies: PolicySet, quick: bool, bound_override: int | None) -> dict[str, Any]:
    policy_bound, ttl, declared = cache_bound(policies)
    where = (
        "policies.yaml: stale_cache max_entries"
        if declared
        else "policies.yaml declares none: the stale_cache tier's default max_entries"
    )
    if bound_override is not None:
        bound, source = bound_override, "override (smoke test)"
        rss_bound = bound
    elif quick and policy_bound > QUICK_CACHE_ENTRIES:
        # Filling 100,000 entries under tracemalloc takes 10-25 s here: quick mode traces
        # fewer. The resident set is still measured at the real bound (untraced, in the child).
        bound = QUICK_CACHE_ENTRIES
        rss_bound = policy_bound
        source = f"{where}; quick mode traces {bound:,} entries"
    else:
        bound = rss_bound = policy_bound
        source = where
    child = _rss_growth_started(rss_bound, ttl, rss_bound + rss_bound // 10)
    try:
        with _tracing():
            before = _traced()
            cache = fill_cache(bound, ttl, bound + bound // 10)
            traced = _traced() - before
            traced_entries = len(cache)
            del cache
    except BaseException:
        child.kill()
        child.communicate()
        raise
    rss = _rss_growth(child)
    assert rss["entries"] == rss_bound, rss  # overfilled by 10%, and still at its bound
    assert traced_entries == bound, traced_entries
    return {
        "entries": rss["entries"],
        "max_entries": rss_bound,
        "policy_max_entries": policy_bound,
        "inserted": rss_bound + rss_bound // 10,
        "rss_bytes": rss["rss_bytes"],
        "rss_bytes_per_entry": round(rss["rss_bytes"] / rss["entries"], 1),
        "traced_entries": traced_entries,
        "tracemalloc_bytes": traced,
        "bytes_per_entry": round(traced / traced_entries, 1),
        "bound_source": source,
    }


def _sync_figures(
    decide: Callable[[RequestContext], Decision], decisions: int, samples: int
) -> dict[str, float]:
    request = REQUEST
    for _ in range(max(decisions // 4, 50)):  # warm-up: caches, notes, the metrics' rows
        decide(request)
    kept: list[Decision | None] = [None] * decisions
    before = _traced()
    for n in range(decisions):
        kept[n] = decide(request)
    retained = (_traced() - before) / decisions
    del kept
    # Decisions kept alive while sampling, so that the objects of the previous one do not come
    # back from the interpreter's free lists unseen; the first ones drain what is there.
    alive = [decide(request) for _ in range(min(_DRAIN, decisions))]
    peaks: list[int] = []
    for _ in range(samples):
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        alive.append(decide(request))
        peaks.append(tracemalloc.get_traced_memory()[1] - start)
    del alive
    before = _traced()
    for _ in range(decisions):
        decide(request)
    leak = (_traced() - before) / decisions
    return _rounded(retained, statistics.median(peaks), leak)


async def _async_figures(
    decide: Callable[[RequestContext], Awaitable[Decision]], decisions: int, samples: int
) -> dict[str, float]:
    # After each decision the loop gets a turn (``sleep(0)``), as a service's loop does between
    # requests: it drops the timers that each decision's timeouts scheduled and cancelled,
    # which would otherwise pile up on its heap and count as retained.
    request = REQUEST
    pause = asyncio.sleep
    for _ in range(max(decisions // 4, 50)):
        await decide(request)
        await pause(0)
    kept: list[Decision | None] = [None] * decisions
    before = _traced()
    for n in range(decisions):
        kept[n] = await decide(request)
        await pause(0)
    retained = (_traced() - before) / decisions
    del kept
    alive = [await decide(request) for _ in range(min(_DRAIN, decisions))]
    await pause(0)
    peaks: list[int] = []
    for _ in range(samples):
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        alive.append(await decide(request))
        peaks.append(tracemalloc.get_traced_memory()[1] - start)
        await pause(0)
    del alive
    before = _traced()
    for _ in range(decisions):
        await decide(request)
        await pause(0)
    leak = (_traced() - before) / decisions
    return _rounded(retained, statistics.median(peaks), leak)


def _rounded(retained: float, peak: float, leak: float) -> dict[str, float]:
    return {
        "retained_bytes": round(retained, 1),
        "transient_peak_bytes": round(peak, 1),
        "leak_bytes_per_decision": round(leak, 2),
    }


def _side_by_side(
    engine: dict[str, float], hand: dict[str, float], decisions: int, samples: int
) -> dict[str, Any]:
    return {
        "engine": engine,
        "hand_written": hand,
        "ratio": {
            "retained": round(engine["retained_bytes"] / hand["retained_bytes"], 3),
            "transient_peak": round(
                engine["transient_peak_bytes"] / hand["transient_peak_bytes"], 3
            ),
        },
        "decisions": decisions,
        "samples": samples,
    }


def _per_decision(policies: PolicySet, decisions: int, samples: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with Engine(policies, sync_sources(), events=NullSink(), seed=1) as engine, _tracing():
        reference = HandWritten(engine.config_version())
        check = engine.decide(REQUEST)
        assert check.trace.served == "session", check.trace
        assert check.signals == reference.decide(REQUEST).signals
        results["sync"] = _side_by_side(
            _sync_figures(engine.decide, decisions, samples),
            _sync_figures(reference.decide, decisions, samples),
            decisions,
            samples,
        )
    loop = asyncio.new_event_loop()
    try:
        with Engine(policies, async_sources(), events=NullSink(), seed=1) as engine, _tracing():
            reference = HandWritten(engine.config_version())
            check = loop.run_until_complete(engine.adecide(REQUEST))
            assert check.trace.served == "session", check.trace
            results["async"] = _side_by_side(
                loop.run_until_complete(_async_figures(engine.adecide, decisions, samples)),
                loop.run_until_complete(_async_figures(reference.adecide, decisions, samples)),
                decisions,
                samples,
            )
    finally:
        loop.close()
    return results


def run(
    *,
    quick: bool,
    decisions: int | None = None,
    samples: int | None = None,
    cache_entries: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Bytes per decision and the stale cache at its bound:
    ``{"sync": {...}, "async": {...}, "stale_cache": {...}}``.

    ``sync`` and ``async`` each hold ``engine`` and ``hand_written`` (``retained_bytes``,
    ``transient_peak_bytes``, ``leak_bytes_per_decision``), ``ratio`` (engine over
    hand-written: ``retained``, ``transient_peak``), ``decisions`` and ``samples``.
    ``stale_cache`` holds ``entries``, ``max_entries``, ``policy_max_entries``, ``inserted``,
    ``rss_bytes`` and ``rss_bytes_per_entry`` (a fresh interpreter filled to the policy's
    bound), ``traced_entries``, ``tracemalloc_bytes`` and ``bytes_per_entry`` (quick mode traces
    20,000 entries, full mode the policy's bound), and ``bound_source``.
    ``cache_entries`` replaces the bound (smoke tests only); the other overrides shorten the
    run.
    """
    default_decisions, default_samples = (1_000, 51) if quick else (5_000, 201)
    policies = load_policies(policy_text())
    return {
        **_per_decision(policies, decisions or default_decisions, samples or default_samples),
        "stale_cache": _stale_cache(policies, quick, cache_entries),
    }
