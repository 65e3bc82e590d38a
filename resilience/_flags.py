"""Kill switches and flags: where each policy's and step's mode comes from at run time.

Every policy and every step but the terminal tier has a flag: ``<policy>`` and
``<policy>.<step id>``. Its value is a :class:`Mode` (``on``, ``off``, ``shadow``); its default
is the ``mode:`` the policy declares. Flags come from several sources, merged by a fixed
precedence, highest first:

1. ``api``: :meth:`Flags.set` in this process (the embedding code, a test, an admin endpoint);
2. ``redis``: the fleet's flags, written by ``resilience flags set`` (the operator's switch);
3. ``file``: the flags file named by ``settings.flags.file``;
4. ``openfeature``: the application's OpenFeature provider;
5. ``env``: environment variables ``RESILIENCE_FLAG_<POLICY>[__<STEP>]``;
6. ``policy``: the ``mode:`` declared in the policy.

The order follows how directly a person set the value: an operator's flip reaches every
process even where a deployment pinned a value in the environment, and the policy's own
declaration is the floor. A source that cannot be read keeps what it last delivered, reported
stale, so an outage of a flag source never flips a flag.

The request path never reads this module: a change re-plans the engine (a new tuple of steps
per policy, built from objects that already exist), and a request reads its plan once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from ._errors import PolicyError, PolicyIssue, PolicyValidationError
from ._flag_feed import FeedSnapshot, FlagFeed, FlagRecord
from ._flag_settings import FlagSettings
from ._policy import (
    MODES_OF_GUARD,
    MODES_OF_POLICY,
    MODES_OF_POST,
    MODES_OF_TIER,
    Mode,
    PolicySet,
    beside_policy,
)
from ._steps import StepKind
from .events import EventSink, register_event

__all__ = [
    "FLAG_CHANGED",
    "FLAG_REJECTED",
    "FLAG_SOURCE_RECOVERED",
    "FLAG_SOURCE_STALE",
    "PRECEDENCE",
    "EnvFlagFeed",
    "FlagError",
    "FlagSpec",
    "FlagState",
    "Flags",
    "SourceHealth",
    "declared_changes",
    "flag_specs",
    "make_feeds",
    "parse_mode",
]

FLAG_CHANGED = register_event(
    "resilience.flag.changed",
    "warning",
    "A flag's effective value changed (the audit trail); fields: key, old, new, source, "
    "reason, by, at, old_source.",
)
FLAG_REJECTED = register_event(
    "resilience.flag.rejected",
    "warning",
    "A source holds a flag that is unknown or a value the flag cannot take; it is ignored; "
    "fields: key, value, source, problem.",
)
FLAG_SOURCE_STALE = register_event(
    "resilience.flag.source_stale",
    "warning",
    "A flag source cannot be read; its last known values hold, reported stale; fields: "
    "source, error.",
)
FLAG_SOURCE_RECOVERED = register_event(
    "resilience.flag.source_recovered", "info", "A flag source can be read again; fields: source."
)

#: Flag sources, highest precedence first; ``policy`` (the declared mode) is below them all.
PRECEDENCE: tuple[str, ...] = ("api", "redis", "file", "openfeature", "env")

_WORDS = {
    "on": Mode.ON,
    "off": Mode.OFF,
    "shadow": Mode.SHADOW,
    "true": Mode.ON,
    "false": Mode.OFF,
}


class FlagError(PolicyError):
    """A flag key or value that the running policies do not admit."""


class FlagSpec(NamedTuple):
    """What one flag is.

    Attributes:
        key: ``<policy>`` or ``<policy>.<step id>``.
        kind: ``policy``, ``guard``, ``tier`` or ``post``.
        default: the mode the policy declares.
        allowed: the modes it can take (a tier has no shadow mode).
    """

    key: str
    kind: str
    default: Mode
    allowed: frozenset[Mode]


class FlagState(NamedTuple):
    """One flag's effective value and where it came from.

    Attributes:
        key: the flag.
        value: its effective mode.
        source: the source that decided it (``policy`` when none holds it).
        default: the mode the policy declares.
        stale: the deciding source cannot be read now; this is its last known value.
        reason / by / at: why, by whom and when it was set, when the source records it.
    """

    key: str
    value: Mode
    source: str
    default: Mode
    stale: bool = False
    reason: str = ""
    by: str = ""
    at: float = 0.0


class SourceHealth(NamedTuple):
    """How one flag source is doing.

    Attributes:
        source: its name.
        healthy: its last read succeeded.
        error: why its last read failed (or what it refused), else ``""``.
        last_ok: wall time of its last successful read, or ``None``.
        flags: how many flags it holds (its last known snapshot).
    """

    source: str
    healthy: bool
    error: str
    last_ok: float | None
    flags: int


def parse_mode(value: object) -> Mode | None:
    """``value`` as a mode (``on``/``off``/``shadow``; ``true``/``false`` and booleans as on and
    off), or ``None`` if it is none of these."""
    if isinstance(value, bool):
        return Mode.ON if value else Mode.OFF
    if isinstance(value, str):
        return _WORDS.get(value.strip().lower())
    return None


def flag_specs(policies: PolicySet) -> dict[str, FlagSpec]:
    """Every flag the policies define, in file order."""
    allowed = {
        StepKind.GUARD: MODES_OF_GUARD,
        StepKind.TIER: MODES_OF_TIER,
        StepKind.POST: MODES_OF_POST,
    }
    specs: dict[str, FlagSpec] = {}
    for policy in policies.policies.values():
        specs[policy.name] = FlagSpec(policy.name, "policy", policy.mode, MODES_OF_POLICY)
        terminal = policy.chain[-1].step_id if policy.chain else None
        for spec in policy.steps():
            if spec.step_id == terminal and spec.type.kind is StepKind.TIER:
                continue  # the path that always answers has no switch
            key = f"{policy.name}.{spec.step_id}"
            kind = spec.type.kind
            specs[key] = FlagSpec(key, kind.value, spec.mode, allowed[kind])
    return specs


def env_name(prefix: str, key: str) -> str:
    """The environment variable that holds flag ``key``: ``search.session`` ->
    ``RESILIENCE_FLAG_SEARCH__SESSION``."""
    return prefix + key.replace(".", "__").upper()


class EnvFlagFeed:
    """Flags from environment variables ``<prefix><POLICY>[__<STEP>]``, read when the engine
    starts (a process's environment does not change under it).

    Args:
        prefix: the variables' prefix.
        environ: the environment to read; ``os.environ`` by default.
    """

    name = "env"

    def __init__(self, prefix: str, environ: Mapping[str, str] | None = None) -> None:
        self._prefix = prefix
        self._environ = environ
        self._deliver: Callable[[FeedSnapshot], None] | None = None

    def start(
        self, deliver: Callable[[FeedSnapshot], None], keys: Callable[[], Sequence[str]]
    ) -> None:
        self._deliver = deliver
        self.refresh()

    def refresh(self) -> None:
        if self._deliver is None:
            return
        environ = os.environ if self._environ is None else self._environ
        found = {
            name[len(self._prefix) :].lower().replace("__", "."): FlagRecord(
                value, reason=f"environment variable {name}"
            )
            for name, value in environ.items()
            if name.startswith(self._prefix) and len(name) > len(self._prefix)
        }
        self._deliver(FeedSnapshot(self.name, found))

    def stop(self) -> None:
        self._deliver = None


def make_feeds(
    settings: FlagSettings, policy_file: str, only: Iterable[str] | None = None
) -> list[FlagFeed]:
    """The flag sources ``settings.flags`` declares (those named in ``only``, if given), not
    yet started.

    Raises:
        PolicyValidationError: a source cannot be made (an unset ``url_env``, a missing extra).
    """
    feeds: list[FlagFeed] = []
    wanted = set(only) if only is not None else set(_RANKED)
    if settings.env_prefix is not None and "env" in wanted:
        feeds.append(EnvFlagFeed(settings.env_prefix))
    if settings.file is not None and "file" in wanted:
        from ._flags_file import FileFlagFeed  # noqa: PLC0415 - the watcher starts only if used

        feeds.append(FileFlagFeed(beside_policy(policy_file, settings.file)))
    try:
        if settings.redis is not None and "redis" in wanted:
            from ._flags_redis import RedisFlagFeed  # noqa: PLC0415 - the redis extra

            feeds.append(RedisFlagFeed(settings.redis))
        if settings.openfeature is not None and "openfeature" in wanted:
            from ._flags_openfeature import OpenFeatureFlagFeed  # noqa: PLC0415 - optional extra

            feeds.append(OpenFeatureFlagFeed(settings.openfeature))
    except (ValueError, ImportError) as exc:
        for feed in feeds:
            with contextlib.suppress(Exception):
                feed.stop()
        raise PolicyValidationError(
            [
                PolicyIssue(
                    policy_file,
                    0,
                    0,
                    "settings.flags",
                    f"a flag source could not be made: {exc}",
                    "check settings.flags (url/url_env and its environment variable) and that "
                    "the redis or openfeature extra is installed",
                )
            ]
        ) from exc
    return feeds


_RANKED = frozenset(PRECEDENCE) - {"api"}


def _ranked(feeds: Iterable[FlagFeed]) -> list[FlagFeed]:
    """``feeds``, checked: each plays one ranked source, once."""
    fresh = list(feeds)
    names = [feed.name for feed in fresh]
    for name in names:
        if name not in _RANKED:
            raise FlagError(
                f"a flag source must be one of {', '.join(sorted(_RANKED))} (its name gives its "
                f"rank), not {name!r}"
            )
        if names.count(name) > 1:
            raise FlagError(f"two flag sources are named {name!r}; each rank holds one source")
    return fresh


class _Staging:
    """Holds the snapshots new sources deliver while they start, until the board takes them
    all at once; then passes deliveries straight on."""

    def __init__(self, deliver: Callable[[FeedSnapshot], None], lock: threading.RLock) -> None:
        self._deliver = deliver
        self._lock = lock
        self._held: dict[str, FeedSnapshot] | None = {}

    def deliver(self, snapshot: FeedSnapshot) -> None:
        with self._lock:
            if self._held is not None:
                self._held[snapshot.source] = snapshot  # the newest read of each source
                return
        self._deliver(snapshot)

    def release(self) -> list[FeedSnapshot]:
        """The snapshots held (call under the lock); later deliveries pass straight on."""
        held, self._held = self._held or {}, None
        return list(held.values())


def declared_changes(old: FlagSettings, new: FlagSettings) -> set[str]:
    """The sources whose declaration differs between ``old`` and ``new`` settings."""
    pairs = {
        "env": (old.env_prefix, new.env_prefix),
        "file": (old.file, new.file),
        "redis": (old.redis, new.redis),
        "openfeature": (old.openfeature, new.openfeature),
    }
    return {name for name, (before, after) in pairs.items() if before != after}


class _Feed:
    """The board's record of one source: its last good snapshot and its health."""

    __slots__ = ("error", "flags", "healthy", "last_ok")

    def __init__(self) -> None:
        self.flags: Mapping[str, FlagRecord] = {}
        self.healthy = True
        self.error = ""
        self.last_ok: float | None = None


class Flags:
    """The flags of one engine: sources, merge, audit events. Reached as ``engine.flags``.

    Args:
        specs: the flags the running policies define.
        events: where flag events go.
        wall: the wall clock (for ``at`` of in-process changes and source health).
        on_change: called (under ``lock``) after the effective modes changed.
        lock: the engine's lock; every change to flags or plans happens under it.
    """

    def __init__(
        self,
        specs: Mapping[str, FlagSpec],
        events: EventSink,
        wall: Callable[[], float],
        on_change: Callable[[], None],
        lock: threading.RLock,
    ) -> None:
        self._specs = dict(specs)
        self._events = events
        self._wall = wall
        self._on_change = on_change
        self._lock = lock
        self._feeds: dict[str, _Feed] = {"api": _Feed()}
        self._running: list[FlagFeed] = []
        self._api: dict[str, FlagRecord] = {}
        # (source, key, value) already reported as rejected: reported once, not per read
        self._rejected: set[tuple[str, str, str]] = set()
        # why an in-process setting was cleared, for the audit event of what follows it
        self._cleared: dict[str, tuple[str, str]] = {}
        self._order = {name: rank for rank, name in enumerate(PRECEDENCE)}
        self._staging: _Staging | None = None
        self._effective: dict[str, FlagState] = self._merge()

    # --- reading ------------------------------------------------------------------------------

    def modes(self) -> dict[str, Mode]:
        """Flag key -> effective mode (what the engine plans with)."""
        with self._lock:
            return {key: state.value for key, state in self._effective.items()}

    def get(self, key: str) -> FlagState:
        """The effective state of flag ``key``.

        Raises:
            FlagError: no such flag.
        """
        with self._lock:
            state = self._effective.get(key)
            if state is None:
                raise FlagError(self._unknown(key))
            return state

    def states(self) -> list[FlagState]:
        """Every flag's effective state, in policy order."""
        with self._lock:
            return list(self._effective.values())

    def overrides(self) -> list[FlagState]:
        """The flags whose effective value is not the policy's default."""
        return [s for s in self.states() if s.value is not s.default]

    def sources(self) -> list[SourceHealth]:
        """The health of every source, in precedence order."""
        with self._lock:
            return [
                SourceHealth(name, feed.healthy, feed.error, feed.last_ok, len(feed.flags))
                for name, feed in sorted(
                    self._feeds.items(), key=lambda item: self._order.get(item[0], 99)
                )
            ]

    def held(self, key: str) -> dict[str, FlagRecord]:
        """What each source holds for ``key`` (its last known snapshot), in precedence order."""
        with self._lock:
            return {
                name: self._feeds[name].flags[key]
                for name in PRECEDENCE
                if name in self._feeds and key in self._feeds[name].flags
            }

    def specs(self) -> dict[str, FlagSpec]:
        """Every flag the running policies define."""
        with self._lock:
            return dict(self._specs)

    # --- the in-process source ----------------------------------------------------------------

    def set(self, key: str, value: Mode | str | bool, *, reason: str, by: str = "") -> FlagState:
        """Set flag ``key`` in this process (source ``api``, above every other source).

        Args:
            key: ``<policy>`` or ``<policy>.<step id>``.
            value: ``on``, ``off`` or ``shadow`` (where the flag admits it).
            reason: why; it goes into the audit event.
            by: who.

        Returns:
            The flag's new effective state.

        Raises:
            FlagError: an unknown key, or a value the flag cannot take.
        """
        with self._lock:
            mode = self.check(key, value)
            self._api = {
                **self._api,
                key: FlagRecord(mode.value, reason, by, self._wall()),
            }
            self.deliver(FeedSnapshot("api", self._api))
            return self._effective[key]

    def clear(self, key: str, *, reason: str, by: str = "") -> FlagState:
        """Remove this process's own setting of ``key``; the other sources decide again."""
        with self._lock:
            if key not in self._specs:
                raise FlagError(self._unknown(key))
            if key in self._api:
                self._api = {k: r for k, r in self._api.items() if k != key}
                self._cleared[key] = (reason, by)
                self.deliver(FeedSnapshot("api", self._api))
            return self._effective[key]

    def check(self, key: str, value: object) -> Mode:
        """``value`` as a mode that flag ``key`` admits.

        Raises:
            FlagError: an unknown key, or a value the flag cannot take.
        """
        spec = self._specs.get(key)
        if spec is None:
            raise FlagError(self._unknown(key))
        mode = parse_mode(value)
        if mode is None or mode not in spec.allowed:
            names = ", ".join(m.value for m in Mode if m in spec.allowed)
            raise FlagError(f"flag {key!r} ({spec.kind}) cannot be {value!r}; use one of: {names}")
        return mode

    # --- sources ------------------------------------------------------------------------------

    def start(self, feeds: Iterable[FlagFeed]) -> None:
        """Start ``feeds``: each delivers what it knows before this returns.

        Raises:
            FlagError: a source whose name is not one of the ranked sources (``redis``,
                ``file``, ``openfeature``, ``env``: the name gives the rank), or two sources
                with one name.
        """
        fresh = _ranked(feeds)
        for feed in fresh:
            with self._lock:
                self._feeds.setdefault(feed.name, _Feed())
                self._running.append(feed)
            feed.start(self.deliver, self._keys)

    def stop(self) -> None:
        """Stop every source. Idempotent."""
        with self._lock:
            running, self._running = self._running, []
        for feed in running:
            with contextlib.suppress(Exception):
                feed.stop()

    def replace(self, feeds: Iterable[FlagFeed], *, keep: Iterable[str] = ()) -> None:
        """Apply a reload that changed ``settings.flags``: the running sources named in
        ``keep`` (their settings did not change) go on as they are; the others stop, and
        ``feeds`` start in their place.

        A source that takes the place of one of the same name (another file, another Redis)
        starts from its predecessor's values: they hold, reported stale, until the new source's
        first good read replaces them, so that an unreadable new source flips no flag. A source
        no longer declared stops counting. The new sources' first reads all count from one
        moment. Never raises for a source that fails to start: it counts as unreadable.

        Raises:
            FlagError: as :meth:`start`.
        """
        fresh = _ranked(feeds)
        kept = set(keep) - {feed.name for feed in fresh}
        with self._lock:
            running = self._running
            staying = [feed for feed in running if feed.name in kept]
            self._running = staying
        for feed in running:
            if feed not in staying:
                with contextlib.suppress(Exception):
                    feed.stop()
        staging = self._staging = _Staging(self.deliver, self._lock)
        started: list[FlagFeed] = []
        for feed in fresh:
            try:
                feed.start(staging.deliver, self._keys)
            except Exception as exc:  # counted as unreadable: the last values hold
                staging.deliver(FeedSnapshot(feed.name, None, f"could not start: {exc!r}"))
                with contextlib.suppress(Exception):
                    feed.stop()
                continue
            started.append(feed)
        with self._lock:
            names = {"api", *kept, *(feed.name for feed in fresh)}
            self._feeds = {name: f for name, f in self._feeds.items() if name in names}
            for feed in fresh:
                self._feeds.setdefault(feed.name, _Feed())
            self._running = [*staying, *started]
            self._take_staged()
            self._update()

    def _remerge(self) -> None:
        """Merge again, quietly (in a forked child, whose last change may have been cut
        short): the engine plans afresh right after."""
        with self._lock:
            self._take_staged()  # a replace() cut short: take what it held
            self._effective = self._merge()

    def _take_staged(self) -> None:
        """Apply what the sources a replace() started have delivered so far (under the lock)."""
        if self._staging is not None:
            for snapshot in self._staging.release():
                self._apply(snapshot)
            self._staging = None

    def refresh(self) -> None:
        """Read every source now."""
        with self._lock:
            running = list(self._running)
        for feed in running:
            with contextlib.suppress(Exception):
                feed.refresh()

    def deliver(self, snapshot: FeedSnapshot) -> None:
        """Take a source's snapshot (called by the feeds, from their own threads). Never
        raises."""
        try:
            with self._lock:
                if self._apply(snapshot):
                    self._update()
        except Exception as exc:  # a feed's thread must never die of the board
            with contextlib.suppress(Exception):
                self._emit(
                    FLAG_REJECTED, key="", value="", source=snapshot.source, problem=repr(exc)
                )

    def _apply(self, snapshot: FeedSnapshot) -> bool:
        """Record ``snapshot`` (under the lock); returns whether the flags may have changed."""
        feed = self._feeds.setdefault(snapshot.source, _Feed())
        was_healthy = feed.healthy
        if snapshot.flags is None:
            if not was_healthy and feed.error == snapshot.error:
                return False  # told again: nothing new
            feed.healthy = False
            feed.error = snapshot.error or "unreadable"
        else:
            feed.flags = dict(snapshot.flags)
            feed.healthy = not snapshot.stale
            feed.error = snapshot.error or (
                "the source reports stale values" if snapshot.stale else ""
            )
            feed.last_ok = self._wall()
        if was_healthy and not feed.healthy:
            self._emit(FLAG_SOURCE_STALE, source=snapshot.source, error=feed.error)
        elif feed.healthy and not was_healthy:
            self._emit(FLAG_SOURCE_RECOVERED, source=snapshot.source)
        return True

    def respec(self, specs: Mapping[str, FlagSpec]) -> None:
        """Take the flags of newly loaded policies (a reload); re-merges without re-planning
        (the reload plans with :meth:`modes` itself)."""
        with self._lock:
            self._specs = dict(specs)
            self._rejected.clear()
            self._update(replan=False)

    # --- merging ------------------------------------------------------------------------------

    def _keys(self) -> list[str]:
        with self._lock:
            return list(self._specs)

    def _update(self, *, replan: bool = True) -> None:
        merged = self._merge()
        old = self._effective
        self._effective = merged
        changed = False
        for key, state in merged.items():
            before = old.get(key)
            if before is None:
                before = FlagState(key, state.default, "policy", state.default)
            # Staleness alone is no change: the source events report a source's health.
            if (before.value, before.source) == (state.value, state.source):
                continue
            changed = True  # the plan names the deciding source of a switched-off step
            reason, by = state.reason, state.by
            cleared = self._cleared.pop(key, None)
            if cleared is not None and state.source != "api":
                reason, by = cleared
            self._emit(
                FLAG_CHANGED,
                key=key,
                old=before.value.value,
                old_source=before.source,
                new=state.value.value,
                source=state.source,
                reason=reason,
                by=by,
                at=state.at,
            )
        if changed and replan:
            self._on_change()

    def _merge(self) -> dict[str, FlagState]:
        merged: dict[str, FlagState] = {}
        ranked = [(name, self._feeds[name]) for name in PRECEDENCE if name in self._feeds]
        for key, spec in self._specs.items():
            state = FlagState(key, spec.default, "policy", spec.default)
            for name, feed in ranked:
                record = feed.flags.get(key)
                if record is None:
                    continue
                mode = parse_mode(record.value)
                if mode is None or mode not in spec.allowed:
                    continue  # reported by _reject_unknown; the next source decides
                state = FlagState(
                    key,
                    mode,
                    name,
                    spec.default,
                    not feed.healthy,
                    record.reason,
                    record.by,
                    record.at,
                )
                break
            merged[key] = state
        self._reject_unknown(ranked)
        return merged

    def _reject_unknown(self, ranked: list[tuple[str, _Feed]]) -> None:
        rejected = self._rejected
        for name, feed in ranked:
            for key, record in feed.flags.items():
                mark = (name, key, record.value)
                if mark in rejected:
                    continue
                spec = self._specs.get(key)
                mode = parse_mode(record.value)
                if spec is None:
                    problem = self._unknown(key)
                elif mode is None or mode not in spec.allowed:
                    names = ", ".join(m.value for m in Mode if m in spec.allowed)
                    problem = f"flag {key!r} ({spec.kind}) cannot be {record.value!r}; use {names}"
                else:
                    continue
                rejected.add(mark)
                self._emit(FLAG_REJECTED, key=key, value=record.value, source=name, problem=problem)

    def _unknown(self, key: str) -> str:
        policy, _, step = key.partition(".")
        if step and key not in self._specs and f"{policy}" in self._specs:
            return (
                f"no flag {key!r}: policy {policy!r} has no switchable step {step!r} (the "
                "terminal tier has no switch)"
            )
        known = ", ".join(k for k in self._specs if "." not in k) or "none"
        return f"no flag {key!r}; flags are <policy> or <policy>.<step id> (policies: {known})"

    def _emit(self, event: str, **fields: Any) -> None:
        with contextlib.suppress(Exception):
            self._events.emit(event, **fields)
