"""Scenarios: a world, named phases and a timeline of faults and operations, read from YAML.

A scenario file is read with the policy file's own reader (:func:`resilience._yaml.read_yaml`:
safe, positions kept, duplicate keys and tags refused) and validated by strict pydantic models.
Every problem is reported at once, each as ``FILE:LINE:COL: path: what is wrong (how to fix
it)``, in a :class:`ScenarioError`. See ``docs/simulation.md`` for the format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from resilience._durations import FROM_DOCUMENT, Duration, format_duration
from resilience._errors import PolicyIssue, ResilienceError
from resilience._policy import _field_names, _hint, _suggest
from resilience._yaml import Located, Path, format_path, read_yaml

__all__ = [
    "STORES",
    "BadReload",
    "Event",
    "Flapping",
    "Hang",
    "KillSwitch",
    "Latency",
    "NewUsers",
    "Outage",
    "Phase",
    "Scenario",
    "ScenarioError",
    "StreamLag",
    "WorldOptions",
    "builtin_scenarios",
    "load_scenario",
]

#: The stores the simulated world serves, by the source names policies bind.
STORES = ("session_store", "profile_store", "segment_store")

StoreName = Literal["session_store", "profile_store", "segment_store"]

_DEFER = "resilience.scenario.defer_checks"

#: Longest scenario accepted: a day of virtual time.
MAX_DURATION = 86_400.0


class ScenarioError(ResilienceError):
    """A scenario is invalid or cannot be read; ``issues`` holds every problem found."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = tuple(sorted(issues, key=lambda i: (i.file, i.line, i.column, i.path)))
        count = len(self.issues)
        lines = "\n".join(str(i) for i in self.issues)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in scenario:\n{lines}")


_HEALTHY_LATENCY: dict[StoreName, float] = {
    "session_store": 0.001,
    "profile_store": 0.002,
    "segment_store": 0.001,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class WorldOptions(_Strict):
    """``world``: the synthetic population and its traffic."""

    users: int = Field(default=3000, ge=10, le=1_000_000, description="Users at the start.")
    categories: int = Field(default=8, ge=2, le=100, description="Catalog categories.")
    items: int = Field(default=2000, ge=20, le=1_000_000, description="Catalog size.")
    segments: int = Field(default=8, ge=1, le=10_000, description="Segments users fall into.")
    favourite_share: float = Field(
        default=0.7, ge=0, le=1, description="Share of a user's preference on one category."
    )
    new_user_share: float = Field(
        default=0.2, ge=0, le=1, description="Share of users without a long-term profile."
    )
    rate: float = Field(
        default=20.0, gt=0, le=10_000, description="Searches per virtual second (Poisson)."
    )
    candidates: int = Field(default=50, ge=10, le=1000, description="Candidates per search.")
    click_scale: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="Click probability = position bias x preference x click_scale.",
    )
    session_searches: float = Field(
        default=6.0, ge=1, le=1000, description="Mean searches per session (geometric)."
    )
    think: Duration = Field(
        default=15.0, gt=0, le=3600, description="Mean time between a session's searches."
    )
    latency: dict[StoreName, Duration] = Field(
        default_factory=lambda: dict(_HEALTHY_LATENCY),
        description="Median latency of each healthy store (log-normal, sigma 0.5).",
    )
    stream_delay: Duration = Field(
        default=0.3,
        ge=0,
        le=60,
        description="Normal lag of the stream processor: click to searchable (brief: 100-500ms).",
    )
    holdout_min_users: int = Field(
        default=100, ge=1, description="Users each group needs before the lift is conclusive."
    )


class _Event(_Strict):
    at: Duration = Field(ge=0, description="When it happens, from the start.")
    label: str | None = Field(default=None, description="Shown on the timeline.")


class _StoreEvent(_Event):
    store: StoreName | list[StoreName] = Field(description="The store(s) it hits.")
    lasting: Duration = Field(alias="for", gt=0, description="How long it lasts.")

    @property
    def stores(self) -> tuple[str, ...]:
        return (self.store,) if isinstance(self.store, str) else tuple(self.store)

    @property
    def end(self) -> float:
        return self.at + self.lasting


class Latency(_StoreEvent):
    """Every read of the store takes ``latency`` (jittered like healthy latency)."""

    type: Literal["latency"]
    latency: Duration = Field(gt=0, description="Median latency during the spike.")


class Outage(_StoreEvent):
    """Every read of the store raises ConnectionError at once."""

    type: Literal["outage"]


class Hang(_StoreEvent):
    """Every read of the store hangs (3 s): it ends at the reader's socket timeout."""

    type: Literal["hang"]


class Flapping(_StoreEvent):
    """The store alternates: down (an outage) for ``down``, up for ``up``."""

    type: Literal["flapping"]
    down: Duration = Field(default=2.0, gt=0, description="Each outage.")
    up: Duration = Field(default=3.0, gt=0, description="Each healthy spell between them.")


class StreamLag(_Event):
    """The stream processor stalls: its lag grows one second per second up to ``lag`` and
    stays there until ``for`` has passed, then it catches up in ``catch_up``. Clicks become
    searchable only once the watermark passes them."""

    type: Literal["stream_lag"]
    lag: Duration = Field(gt=0, description="Largest lag reached.")
    lasting: Duration = Field(alias="for", gt=0, description="How long it stays behind.")
    catch_up: Duration = Field(default=10.0, gt=0, description="Time to catch up afterwards.")

    @property
    def end(self) -> float:
        return self.at + self.lasting + self.catch_up


class KillSwitch(_Event):
    """An operator sets a flag ``off`` (``engine.flags.set``), then clears it after ``for``."""

    type: Literal["kill_switch"]
    key: str | None = Field(default=None, description="Flag key; default: the policy's.")
    lasting: Duration = Field(alias="for", gt=0, description="How long it stays off.")

    @property
    def end(self) -> float:
        return self.at + self.lasting


class BadReload(_Event):
    """An operator reloads a broken policy (``engine.reload``): it must be refused and the
    running policy must keep serving."""

    type: Literal["bad_reload"]
    text: str | None = Field(
        default=None,
        description="The broken policy text; default: the running one with a step type misspelt.",
    )

    @property
    def end(self) -> float:
        return self.at


class NewUsers(_Event):
    """``count`` users the world has never seen arrive over ``for`` and make ``share`` of the
    traffic meanwhile; they stay in the world afterwards."""

    type: Literal["new_users"]
    count: int = Field(ge=1, le=1_000_000, description="How many new users.")
    lasting: Duration = Field(alias="for", gt=0, description="How long the burst lasts.")
    share: float = Field(default=0.5, gt=0, le=1, description="Their share of searches.")

    @property
    def end(self) -> float:
        return self.at + self.lasting


Event = Annotated[
    Latency | Outage | Hang | Flapping | StreamLag | KillSwitch | BadReload | NewUsers,
    Field(discriminator="type"),
]

EVENT_TYPES = (
    "latency",
    "outage",
    "hang",
    "flapping",
    "stream_lag",
    "kill_switch",
    "bad_reload",
    "new_users",
)


class Phase(_Strict):
    """A named stretch of the run, reported on its own."""

    name: str = Field(min_length=1, max_length=40)
    until: Duration | None = Field(default=None, gt=0, description="End; the last: the run's.")


class Scenario(_Strict):
    """A scenario: the world, its duration, phases and events."""

    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    duration: Duration = Field(gt=0, le=MAX_DURATION, description="Virtual time simulated.")
    bucket: Duration = Field(default=5.0, gt=0, description="Timeline resolution.")
    world: WorldOptions = WorldOptions()
    phases: list[Phase] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)

    @model_validator(mode="after")
    def _timeline(self, info: ValidationInfo) -> Self:
        if (info.context or {}).get(_DEFER):
            return self  # load_scenario reports them, each at its line
        for _, message in self.problems():
            raise ValueError(message)
        return self

    def problems(self) -> list[tuple[Path, str]]:
        """Problems across fields (phase order, events after the end), each with its path and
        a message ``what is wrong; how to fix it``."""
        found: list[tuple[Path, str]] = []
        last = 0.0
        for n, phase in enumerate(self.phases):
            end = self.duration if phase.until is None else phase.until
            if phase.until is None and n != len(self.phases) - 1:
                found.append(
                    (
                        ("phases", n),
                        f"phase {phase.name!r} has no 'until' but is not the last; give every "
                        "phase but the last an 'until'",
                    )
                )
                continue
            if end <= last:
                found.append(
                    (
                        ("phases", n, "until"),
                        f"phase {phase.name!r} ends at {format_duration(end)}, not after the "
                        f"previous one ({format_duration(last)}); list phases in order",
                    )
                )
            elif end > self.duration:
                found.append(
                    (
                        ("phases", n, "until"),
                        f"phase {phase.name!r} ends at {format_duration(end)}, after the end "
                        f"of the run ({format_duration(self.duration)}); end it earlier or "
                        "lengthen duration",
                    )
                )
            last = max(last, end)
        names = [p.name for p in self.phases]
        for n, name in enumerate(names):
            if name in names[:n]:
                found.append((("phases", n, "name"), f"two phases are named {name!r}; rename one"))
        for n, event in enumerate(self.events):
            if event.at >= self.duration:
                found.append(
                    (
                        ("events", n, "at"),
                        f"the {event.type} event at {format_duration(event.at)} is at or after "
                        f"the end of the run ({format_duration(self.duration)}); move it "
                        "earlier",
                    )
                )
        return found

    def phase_spans(self) -> list[tuple[str, float, float]]:
        """``(name, start, end)`` for every phase; one phase ``all`` when none are declared."""
        if not self.phases:
            return [("all", 0.0, self.duration)]
        spans = []
        start = 0.0
        for phase in self.phases:
            end = self.duration if phase.until is None else phase.until
            spans.append((phase.name, start, end))
            start = end
        if start < self.duration:
            spans.append(("rest", start, self.duration))
        return spans


@dataclass(frozen=True)
class _Source:
    text: str
    file: str


def builtin_scenarios() -> dict[str, str]:
    """Name -> description of the scenarios shipped with the package."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files(__package__).joinpath("scenarios").iterdir(), key=str):
        if entry.name.endswith(".yaml"):
            name = entry.name.removesuffix(".yaml")
            try:
                found[name] = load_scenario(name).description
            except ScenarioError:  # pragma: no cover - the shipped files are tested
                found[name] = "(invalid)"
    return found


def _read(name_or_path: str | os.PathLike[str]) -> _Source:
    text = os.fspath(name_or_path)
    builtin = resources.files(__package__).joinpath("scenarios", f"{text}.yaml")
    if "/" not in text and os.sep not in text and not text.endswith((".yaml", ".yml")):
        if builtin.is_file():
            return _Source(builtin.read_text(encoding="utf-8"), f"<scenario {text}>")
        names = sorted(
            e.name.removesuffix(".yaml")
            for e in resources.files(__package__).joinpath("scenarios").iterdir()
            if e.name.endswith(".yaml")
        )
        raise ScenarioError(
            [
                PolicyIssue(
                    text,
                    0,
                    0,
                    "",
                    f"no built-in scenario named {text!r}",
                    f"{_suggest(text, names, 'scenario')} Or give the path of a YAML file",
                )
            ]
        )
    try:
        data = FilePath(text).read_bytes()
    except OSError as exc:
        raise ScenarioError(
            [
                PolicyIssue(
                    text, 0, 0, "", f"cannot read it ({exc.strerror or exc})", "check the path"
                )
            ]
        ) from None
    try:
        return _Source(data.decode("utf-8"), text)
    except UnicodeDecodeError:
        raise ScenarioError(
            [PolicyIssue(text, 0, 0, "", "not UTF-8 text", "save the file as UTF-8")]
        ) from None


def load_scenario(name_or_path: str | os.PathLike[str], *, text: str | None = None) -> Scenario:
    """Read a scenario: a built-in one by name (``default``), a YAML file by path, or
    ``text`` (then ``name_or_path`` only names it in messages).

    Raises:
        ScenarioError: with every problem found, each with file, line and column.
    """
    source = _Source(text, os.fspath(name_or_path)) if text is not None else _read(name_or_path)
    located, issues = read_yaml(source.text, source.file)
    if located is None or issues:
        raise ScenarioError(issues)
    if not isinstance(located.data, dict):
        raise ScenarioError(
            [
                PolicyIssue(
                    source.file,
                    1,
                    1,
                    "",
                    "a scenario is a mapping",
                    "start it with 'name:', 'duration:' and 'events:'",
                )
            ]
        )
    try:
        scenario = Scenario.model_validate(
            located.data, context={FROM_DOCUMENT: True, _DEFER: True}
        )
    except ValidationError as exc:
        raise ScenarioError(_issues(exc, located, source.file)) from None
    problems = scenario.problems()
    if problems:
        issues = []
        for path, text_ in problems:
            message, hint = text_.split("; ", 1)
            line, column = located.position(path)
            issues.append(PolicyIssue(source.file, line, column, format_path(path), message, hint))
        raise ScenarioError(issues)
    return scenario


def _issues(exc: ValidationError, located: Located, file: str) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []
    seen: set[Path] = set()
    for err in exc.errors():
        raw = tuple(err["loc"])
        kind = err["type"]
        loc = _data_path(located.data, raw, keep_last=kind == "missing")
        message = str(err["msg"]).removeprefix("Value error, ")
        hint = _hint(kind, err.get("ctx"))
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            message = f"unknown key {key!r}"
            hint = _suggest(key, _known_keys(located.data, loc[:-1]), "key")
        elif kind == "missing":
            message = f"missing required key {str(loc[-1])!r}"
            hint = f"add '{loc[-1]}:'"
        elif kind == "union_tag_invalid":
            tag = str((err.get("ctx") or {}).get("tag", ""))
            message = f"unknown event type {tag!r}"
            hint = _suggest(tag, EVENT_TYPES, "event type")
            loc = (*loc, "type")
        elif kind == "union_tag_not_found":
            message = "an event needs a 'type'"
            hint = f"add 'type:', one of {', '.join(EVENT_TYPES)}"
        elif kind in ("model_type", "dict_type"):
            message = "expected a mapping"
            hint = "write 'key: value' lines under it"
        elif loc and loc[-1] == "store":
            value = err.get("input")
            message = f"unknown store {value!r}" if isinstance(value, str) else "not a store"
            close = _suggest(str(value), STORES, "store") if isinstance(value, str) else ""
            hint = (
                close
                if close.startswith("did you mean")
                else (f"name one of {', '.join(STORES)}, or a list of them")
            )
        elif kind == "value_error" and "; " in message:
            message, hint = message.split("; ", 1)
        if loc in seen:
            continue  # one problem per place: a union reports each member's complaint
        seen.add(loc)
        line, column = located.position(loc)
        issues.append(PolicyIssue(file, line, column, format_path(loc), message, hint))
    return issues


_MODELS: dict[str, type[BaseModel]] = {
    "latency": Latency,
    "outage": Outage,
    "hang": Hang,
    "flapping": Flapping,
    "stream_lag": StreamLag,
    "kill_switch": KillSwitch,
    "bad_reload": BadReload,
    "new_users": NewUsers,
}


def _known_keys(data: Any, loc: Path) -> list[str]:
    """The keys allowed where ``loc`` points (for a "did you mean")."""
    if len(loc) == 2 and loc[0] == "events" and isinstance(loc[1], int):
        events = data.get("events") if isinstance(data, dict) else None
        event = events[loc[1]] if isinstance(events, list) and loc[1] < len(events) else None
        model = _MODELS.get(str(event.get("type"))) if isinstance(event, dict) else None
        if model is None:
            return ["at", "type", "label"]
        return [f.alias or n for n, f in model.model_fields.items()]
    return _field_names(Scenario, loc)


_ABSENT = object()


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part, _ABSENT) if isinstance(part, str) else _ABSENT
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _ABSENT


def _data_path(data: Any, loc: Path, *, keep_last: bool) -> Path:
    """``loc`` without the parts pydantic adds that are not in the data (union tags and
    members); a last part absent from the data is kept when ``keep_last`` (a missing key)."""
    current = data
    kept: list[str | int] = []
    for index, part in enumerate(loc):
        child = _child(current, part)
        if child is not _ABSENT:
            current = child
        elif index == len(loc) - 1 and keep_last:
            current = None
        else:
            continue
        kept.append(part)
    return tuple(kept)
