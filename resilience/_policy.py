"""The policy file: its format, its validation (all or nothing), and the validated result.

Validation is kept apart from execution: :func:`load_policies` turns YAML into a
:class:`PolicySet` of plain, frozen declarations, or raises :class:`PolicyValidationError` with
every problem in the file. Nothing here touches sources or runs a step; the engine compiles a
``PolicySet`` into its per-request plan.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._diversity import MonitoringSettings
from ._durations import FROM_DOCUMENT, Duration, format_duration
from ._errors import PolicyIssue, PolicyValidationError
from ._exposure import ExposureSettings
from ._flag_settings import FlagSettings
from ._holdout import HoldoutOptions
from ._isolation import INLINE, StepIsolation
from ._plugins import RESERVED_KEYS, PluginHost, StepType
from ._sources import SourceOptions
from ._stats import MetricsSettings
from ._steps import StepKind, StepParams, TierParams, source_fields
from ._yaml import Located, Path, format_path, read_limited, read_yaml
from .events import POLICY_LOADED, EventSink, NullSink

__all__ = [
    "FORMAT_VERSION",
    "EventSettings",
    "Mode",
    "PluginSettings",
    "Policy",
    "PolicySet",
    "Settings",
    "StepSpec",
    "beside_policy",
    "holdout_salts",
    "load_policies",
    "load_policies_file",
    "plugin_settings",
    "read_policy_file",
    "unreadable",
]

_DOCUMENT = {FROM_DOCUMENT: True}

#: The policy file format this release reads.
FORMAT_VERSION = 1

_STEP_ID = re.compile(r"[a-z][a-z0-9_]*")
_SECTIONS: tuple[tuple[str, StepKind], ...] = (
    ("guards", StepKind.GUARD),
    ("chain", StepKind.TIER),
    ("post", StepKind.POST),
)


class Mode(StrEnum):
    """Whether a policy or a step acts. Declared as ``mode:`` in the policy (the default a
    flag falls back to) and set at run time by flags."""

    ON = "on"  # it runs and acts
    OFF = "off"  # it does not run (a policy: only its terminal tier answers)
    SHADOW = "shadow"  # it runs and records what it would have done, and changes nothing


#: The values each kind of switchable thing accepts.
MODES_OF_POLICY = frozenset(Mode)
MODES_OF_GUARD = frozenset(Mode)
MODES_OF_POST = frozenset(Mode)
MODES_OF_TIER = frozenset({Mode.ON, Mode.OFF})


class _Strict(BaseModel):
    # strict: YAML already typed every value; "yes", "3" or 5.0 where a number, a whole number
    # or a bool is meant are mistakes to report, not to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)


class PluginSettings(_Strict):
    """``settings.plugins``."""

    allow: list[str] = Field(
        default_factory=list,
        description="Entry-point names of third-party plugins allowed to load. Absent or []: "
        "built-ins only; an installed plugin loads only when named here.",
    )


class EventSettings(_Strict):
    """``settings.events``."""

    decision_sample_rate: float = Field(
        default=0.001,
        ge=0.0,
        le=1.0,
        description="Share of decisions reported as resilience.decision events (0 to 1). "
        "State changes are always reported.",
    )


class Settings(_Strict):
    """``settings``: process-wide options."""

    plugins: PluginSettings = PluginSettings()
    events: EventSettings = EventSettings()
    metrics: MetricsSettings = MetricsSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    flags: FlagSettings = FlagSettings()
    exposures: ExposureSettings | None = None


class _PolicyDecl(_Strict):
    description: str = ""
    mode: Mode = Field(
        default=Mode.ON,
        strict=False,  # the YAML string "off" is the enum member
        description="on, off (only the terminal tier answers) or shadow (runs, records, "
        "applies nothing). The default of the flag named after the policy.",
    )
    budget: Duration = Field(default=0.030, gt=0)
    holdout: HoldoutOptions | None = Field(
        default=None,
        description="A holdout group: users bucketed under salt, percent of them held out "
        "(un-personalized) to measure lift.",
    )
    # Each step is checked by _Checker.step against its own type's model.
    guards: list[Any] = []
    chain: list[Any]
    post: list[Any] = []


class _FileDecl(_Strict):
    version: Literal[1]
    settings: Settings = Settings()
    sources: dict[str, SourceOptions] = {}
    default_policy: str | None = None
    policies: dict[str, _PolicyDecl] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One validated step declaration.

    Attributes:
        step_id: its id in the policy (``id:``, defaulting to the type name).
        type: its step class.
        params: its validated parameters.
        path: where it is in the file, e.g. ``policies.search.chain[0]``.
        line: the line it starts on (1-based).
        column: the column it starts on (1-based).
        mode: its declared mode (``mode:``), the default of its flag ``<policy>.<id>``.
        isolation: its declared ``isolation:``, what a step that blocks or runs slow costs.
    """

    step_id: str
    type: StepType
    params: StepParams
    path: str
    line: int
    column: int
    mode: Mode = Mode.ON
    isolation: StepIsolation = INLINE

    def normalized(self) -> dict[str, Any]:
        """The step with every effective parameter, defaults included, as plain data."""
        found: dict[str, Any] = {"type": self.type.name, "id": self.step_id}
        if self.mode is not Mode.ON:  # versions of policies without modes stay as they were
            found["mode"] = self.mode.value
        if self.isolation != INLINE:  # nor do those of policies without isolation
            found["isolation"] = self.isolation.model_dump(mode="json")
        return {**found, **self.params.model_dump(mode="json")}


@dataclass(frozen=True, slots=True)
class Policy:
    """One validated policy.

    Attributes:
        name: its name.
        budget: total seconds for guards, chain and post steps.
        guards / chain / post: its steps in execution order.
        version: a hash of its normalized content; appears in every trace.
        mode: its declared mode, the default of the flag named after it.
    """

    name: str
    description: str
    budget: float
    guards: tuple[StepSpec, ...]
    chain: tuple[StepSpec, ...]
    post: tuple[StepSpec, ...]
    version: str = ""
    mode: Mode = Mode.ON
    holdout: HoldoutOptions | None = None

    def normalized(self, sources: Mapping[str, SourceOptions] | None = None) -> dict[str, Any]:
        """The policy as plain data with every default filled in (what ``version`` hashes),
        with the protection of each source it reads."""
        used = sorted({name for spec in self.steps() for _, name in source_fields(spec.params)})
        declared = sources or {}
        found: dict[str, Any] = {} if self.mode is Mode.ON else {"mode": self.mode.value}
        if self.holdout is not None:  # versions of policies without a holdout stay as they were
            found["holdout"] = self.holdout.model_dump(mode="json")
        return {
            **found,
            "budget": format_duration(self.budget),
            "guards": [s.normalized() for s in self.guards],
            "chain": [s.normalized() for s in self.chain],
            "post": [s.normalized() for s in self.post],
            "sources": {
                name: declared.get(name, _UNDECLARED).model_dump(mode="json") for name in used
            },
        }

    def steps(self) -> tuple[StepSpec, ...]:
        """Every step in execution order."""
        return self.guards + self.chain + self.post


_UNDECLARED = SourceOptions()


@dataclass(frozen=True, slots=True)
class PolicySet:
    """A validated policy file.

    Attributes:
        file: where it was read from.
        settings: its process-wide settings.
        policies: name -> policy, in file order.
        default_policy: the policy a request without a name runs, or ``None``.
        plugins: the plugin host its steps were resolved with.
    """

    file: str
    settings: Settings
    policies: Mapping[str, Policy]
    default_policy: str | None
    plugins: PluginHost = field(repr=False, compare=False)
    sources: Mapping[str, SourceOptions] = field(default_factory=dict)
    #: things valid but unusual, each with its place: ``resilience validate`` prints them
    warnings: tuple[PolicyIssue, ...] = ()

    def source_options(self, name: str) -> SourceOptions:
        """How source ``name`` is protected (inline, no breaker, no retry when undeclared)."""
        return self.sources.get(name) or _UNDECLARED

    def source_names(self) -> dict[str, list[str]]:
        """Every source name the policies use -> the parameters that name it (dotted paths)."""
        found: dict[str, list[str]] = {}
        for policy in self.policies.values():
            for spec in policy.steps():
                for field_name, source in source_fields(spec.params):
                    found.setdefault(source, []).append(f"{spec.path}.{field_name}")
        return found

    @property
    def version(self) -> str:
        """A hash over every policy's version and the settings."""
        blob = json.dumps(
            [
                self.settings.model_dump(mode="json"),
                {n: o.model_dump(mode="json") for n, o in self.sources.items()},
                self.default_policy,
                {n: p.version for n, p in self.policies.items()},
            ],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def plugin_settings(text: str | bytes) -> PluginSettings | None:
    """The ``settings.plugins`` a policy document asks for, read without validating the rest
    (which needs the plugins); ``None`` if it cannot be read."""
    located, _ = read_yaml(text)
    if located is None or not isinstance(located.data, dict):
        return None
    settings = located.data.get("settings", {})
    raw = settings.get("plugins", {}) if isinstance(settings, dict) else None
    try:
        return PluginSettings.model_validate(raw, context=_DOCUMENT)
    except ValidationError:
        return None


def beside_policy(policy_file: str, path: str) -> str:
    """``path`` as a policy file names it: relative to that file's folder (to the working
    folder for a document that did not come from a file); an absolute path as it is."""
    base = os.path.dirname(policy_file) if os.path.isfile(policy_file) else os.getcwd()
    return os.path.join(base, path)


def holdout_salts(policies: PolicySet) -> dict[str, str]:
    """Policy name -> the salt of its holdout, for the policies that declare one."""
    return {
        name: policy.holdout.salt
        for name, policy in policies.policies.items()
        if policy.holdout is not None
    }


def unreadable(
    file: str, exc: OSError, hint: str = "check the path and its permissions"
) -> PolicyIssue:
    """The issue of a policy file that cannot be read."""
    return PolicyIssue(file, 0, 0, "", f"cannot read the file: {exc.strerror or exc}", hint)


def read_policy_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the policy file at ``path``.

    Raises:
        PolicyValidationError: the file cannot be read (the issue says why).
    """
    name = os.fspath(path)
    try:
        return read_limited(name)
    except OSError as exc:
        raise PolicyValidationError([unreadable(name, exc)]) from exc


def load_policies_file(
    path: str | os.PathLike[str],
    *,
    plugins: PluginHost | None = None,
    events: EventSink | None = None,
) -> PolicySet:
    """Read and validate a policy file. See :func:`load_policies`."""
    name = os.fspath(path)
    data = read_policy_file(name)
    return load_policies(data, file=name, plugins=plugins, events=events)


def load_policies(
    text: str | bytes,
    *,
    file: str = "<string>",
    plugins: PluginHost | None = None,
    events: EventSink | None = None,
) -> PolicySet:
    """Validate a policy document, all or nothing.

    Args:
        text: the YAML text.
        file: the name to report errors under.
        plugins: the plugin host to resolve step types with; by default one is built from the
            file's ``settings.plugins``.
        events: where ``resilience.policy.loaded`` goes.

    Returns:
        The validated policies.

    Raises:
        PolicyValidationError: with every problem in the file, each with line and column.
        PluginError: a plugin the settings admit failed to load.
    """
    located, issues = read_yaml(text, file)
    if located is None:
        raise PolicyValidationError(issues)
    checker = _Checker(file, located, issues, events)
    result = checker.check(plugins)
    if checker.issues or result is None:
        raise PolicyValidationError(checker.issues)
    (events or NullSink()).emit(
        POLICY_LOADED,
        file=file,
        policies=list(result.policies),
        versions={n: p.version for n, p in result.policies.items()},
    )
    return result


class _Checker:
    def __init__(
        self, file: str, located: Located, issues: list[PolicyIssue], events: EventSink | None
    ) -> None:
        self.file = file
        self.located = located
        self.issues = issues
        self.events = events
        self.warnings: list[PolicyIssue] = []

    def add(self, path: Path, message: str, hint: str = "") -> None:
        line, col = self.located.position(path)
        self.issues.append(PolicyIssue(self.file, line, col, format_path(path), message, hint))

    def check(self, plugins: PluginHost | None) -> PolicySet | None:
        data = self.located.data
        if not isinstance(data, dict):
            self.add(
                (),
                "the file must be a mapping with 'version' and 'policies'",
                "start it with 'version: 1'",
            )
            return None
        raw_version = data.get("version")
        if "version" in data and (type(raw_version) is not int or raw_version != FORMAT_VERSION):
            self.add(
                ("version",),
                f"unknown format version {raw_version!r}",
                f"this release reads version {FORMAT_VERSION}",
            )
            data = {**data, "version": FORMAT_VERSION}
        try:
            decl = _FileDecl.model_validate(data, context=_DOCUMENT)
        except ValidationError as exc:
            self.pydantic_issues(exc, (), _FileDecl)
            decl = None
        settings = self.settings(data)
        if plugins is None:
            plugins = PluginHost(allow=settings.plugins.allow, events=self.events)
        policies = self.policies(data.get("policies"), decl, plugins)
        default = data.get("default_policy")
        if isinstance(default, str) and isinstance(data.get("policies"), dict):
            known = list(data["policies"])
            if default not in known:
                self.add(
                    ("default_policy",),
                    f"no policy named {default!r}",
                    _suggest(default, known, "policy"),
                )
        if decl is None or self.issues:
            return None
        self.unused_sources(decl, policies)
        if self.issues:
            return None
        return PolicySet(
            self.file,
            decl.settings,
            policies,
            decl.default_policy,
            plugins,
            decl.sources,
            tuple(self.warnings),
        )

    @staticmethod
    def declared_sources(decl: _FileDecl | None) -> Mapping[str, SourceOptions]:
        return decl.sources if decl is not None else {}

    def unused_sources(self, decl: _FileDecl, policies: Mapping[str, Policy]) -> None:
        # A misspelt name here would leave the real source unprotected: refuse it.
        used = {
            name
            for p in policies.values()
            for spec in p.steps()
            for _, name in source_fields(spec.params)
        }
        for name in decl.sources:
            if name not in used:
                self.add(
                    ("sources", name),
                    f"source {name!r} is declared but no step reads it",
                    _suggest(name, sorted(used), "source"),
                )

    def settings(self, data: dict[str, Any]) -> Settings:
        # Plugins must load before steps can be checked, so settings are read on their own;
        # their errors were already reported by the file-level validation. An invalid part
        # must not widen what loads: a broken allowlist admits built-ins only.
        raw = data.get("settings")
        if raw is None:
            return Settings()
        try:
            return Settings.model_validate(raw, context=_DOCUMENT)
        except ValidationError:
            pass
        if not isinstance(raw, dict):
            return Settings(plugins=PluginSettings(allow=[]))
        try:
            allowed = PluginSettings.model_validate(raw.get("plugins", {}), context=_DOCUMENT)
        except ValidationError:
            allowed = PluginSettings(allow=[])
        return Settings(plugins=allowed)

    def policies(self, raw: Any, decl: _FileDecl | None, plugins: PluginHost) -> dict[str, Policy]:
        out: dict[str, Policy] = {}
        if not isinstance(raw, dict):
            return out
        for name, body in raw.items():
            path: Path = ("policies", name)
            if not isinstance(name, str) or not _STEP_ID.fullmatch(name):
                self.add(
                    path,
                    f"policy name {name!r} is not valid",
                    "use lowercase letters, digits and '_', starting with a letter",
                )
            if not isinstance(body, dict):
                continue
            budget = decl.policies[name].budget if decl and name in decl.policies else None
            ids: dict[str, Path] = {}
            sections: dict[str, tuple[StepSpec, ...]] = {}
            for section, kind in _SECTIONS:
                steps = body.get(section, [])
                if not isinstance(steps, list):
                    sections[section] = ()
                    continue
                specs = []
                for index, step in enumerate(steps):
                    spec = self.step((*path, section, index), step, kind, plugins, ids)
                    if spec is not None:
                        specs.append(spec)
                sections[section] = tuple(specs)
            self.chain_rules(path, body, sections.get("chain", ()), budget)
            if budget is None:
                continue
            policy = Policy(
                name=name,
                description=str(body.get("description", "")),
                mode=decl.policies[name].mode if decl else Mode.ON,
                holdout=decl.policies[name].holdout if decl else None,
                budget=budget,
                guards=sections["guards"],
                chain=sections["chain"],
                post=sections["post"],
            )
            digest = hashlib.sha256(
                json.dumps(policy.normalized(self.declared_sources(decl)), sort_keys=True).encode()
            ).hexdigest()[:12]
            out[name] = replace(policy, version=digest)
        return out

    def step(
        self,
        path: Path,
        raw: Any,
        kind: StepKind,
        plugins: PluginHost,
        ids: dict[str, Path],
    ) -> StepSpec | None:
        if isinstance(raw, str):
            raw = {"type": raw}
        if not isinstance(raw, dict):
            if path not in self.located.reported:
                self.add(
                    path,
                    f"a step is a type name or a mapping, not {_kind_of(raw)}",
                    "write '- unpersonalized' or '- {type: session, timeout: 10ms}'",
                )
            return None
        type_name = raw.get("type")
        if not isinstance(type_name, str):
            self.add(
                path,
                "step has no 'type'",
                _known(
                    f"add 'type:' with one of: {', '.join(plugins.names(kind))}",
                    plugins.names(kind),
                    kind,
                ),
            )
            return None
        step_type = plugins.step_types.get(type_name)
        if step_type is None or step_type.kind is not kind:
            self.unknown_type((*path, "type"), type_name, kind, plugins, step_type)
            return None
        step_id = raw.get("id", type_name)
        if not isinstance(step_id, str) or not _STEP_ID.fullmatch(step_id):
            self.add(
                (*path, "id"),
                f"step id {step_id!r} is not valid",
                "use lowercase letters, digits and '_', starting with a letter",
            )
            return None
        if step_id in ids:
            self.add(
                (*path, "id") if "id" in raw else path,
                f"step id {step_id!r} is used twice in this policy "
                f"(also at {format_path(ids[step_id])})",
                "give one of them its own 'id:'",
            )
            return None
        ids[step_id] = path
        mode = self.step_mode(path, raw, kind, step_type)
        isolation = self.step_isolation(path, raw, step_type)
        params_raw = {k: v for k, v in raw.items() if k not in RESERVED_KEYS}
        try:
            params = step_type.Params.model_validate(params_raw, context=_DOCUMENT)
        except ValidationError as exc:
            self.pydantic_issues(exc, path, step_type.Params)
            return None
        line, col = self.located.position(path)
        for advice in params.advice():
            self.warnings.append(PolicyIssue(self.file, line, col, format_path(path), advice))
        if mode is None or isolation is None:
            return None
        return StepSpec(step_id, step_type, params, format_path(path), line, col, mode, isolation)

    def step_isolation(
        self, path: Path, raw: dict[str, Any], step_type: StepType
    ) -> StepIsolation | None:
        """The step's ``isolation:``; ``None`` if invalid."""
        value = raw.get("isolation", INLINE.mode)
        where = (*path, "isolation")
        if isinstance(value, str):
            value = {"mode": value}
        try:
            isolation = StepIsolation.model_validate(value, context=_DOCUMENT)
        except ValidationError as exc:
            self.pydantic_issues(exc, where, StepIsolation)
            return None
        if not isolation.bulkhead and isinstance(value, dict) and len(value) > 1:
            extra = ", ".join(sorted(k for k in value if k != "mode"))
            self.add(
                where,
                f"{extra} apply to isolation mode bulkhead only",
                "write 'mode: bulkhead', or remove them",
            )
            return None
        if isolation.timeout is not None and step_type.kind is StepKind.TIER:
            self.add(
                (*where, "timeout"),
                "a tier in a bulkhead is waited for as long as its own timeout",
                "set 'timeout:' on the step itself, not under 'isolation:'",
            )
            return None
        refusal = getattr(step_type, "bulkhead_refusal", None)
        if isolation.bulkhead and refusal:
            self.add(
                where,
                f"step type {step_type.name!r} cannot run in a bulkhead: {refusal}",
                "remove 'isolation:' from it",
            )
            return None
        if isolation.bulkhead and getattr(step_type, "terminal", False):
            self.add(
                where,
                "the terminal tier cannot run in a bulkhead: it is the path that always "
                "answers, and a full bulkhead would refuse it",
                "remove 'isolation:' from it",
            )
            return None
        return isolation

    def step_mode(
        self, path: Path, raw: dict[str, Any], kind: StepKind, step_type: StepType
    ) -> Mode | None:
        """The step's ``mode:``, checked against what its kind can do; ``None`` if invalid."""
        value = raw.get("mode", Mode.ON.value)
        allowed = MODES_OF_TIER if kind is StepKind.TIER else MODES_OF_GUARD
        names = ", ".join(sorted(m.value for m in allowed))
        if not isinstance(value, str) or value not in {m.value for m in Mode}:
            self.add(
                (*path, "mode"),
                f"mode {value!r} is not one of on, off, shadow",
                f"write one of: {names}",
            )
            return None
        mode = Mode(value)
        if getattr(step_type, "terminal", False) and mode is not Mode.ON:
            self.add(
                (*path, "mode"),
                f"the terminal tier cannot be switched {mode.value}: it is the path that "
                "always answers",
                "remove 'mode:' from it; switch the whole policy off instead",
            )
            return None
        if mode not in allowed:
            self.add(
                (*path, "mode"),
                f"a {kind.value} cannot run in {mode.value} mode",
                f"write one of: {names}",
            )
            return None
        return mode

    def unknown_type(
        self,
        path: Path,
        name: str,
        kind: StepKind,
        plugins: PluginHost,
        found: StepType | None,
    ) -> None:
        if found is not None:
            section = {StepKind.GUARD: "guards", StepKind.TIER: "chain", StepKind.POST: "post"}
            self.add(
                path,
                f"{name!r} is a {found.kind.value} step, not a {kind.value}",
                f"move it under '{section[found.kind]}'",
            )
            return
        hint = _suggest(name, plugins.names(kind), f"{kind.value} type")
        if plugins.not_allowed and not hint.startswith("did you mean"):
            # Installed is not admitted (settings.plugins.allow): say so, without importing.
            hint = (
                f"{hint}; installed but not in settings.plugins.allow: "
                f"{', '.join(plugins.not_allowed)} (add the plugin that provides it)"
            ).lstrip("; ")
        self.add(path, f"unknown {kind.value} type {name!r}", hint)

    def chain_rules(
        self, path: Path, body: dict[str, Any], chain: tuple[StepSpec, ...], budget: float | None
    ) -> None:
        raw_chain = body.get("chain")
        if isinstance(raw_chain, list) and not raw_chain:
            self.add(
                (*path, "chain"),
                "the chain is empty",
                "list its tiers, ending with a terminal one such as 'unpersonalized'",
            )
            return
        if not chain or not isinstance(raw_chain, list) or len(chain) != len(raw_chain):
            return  # the broken steps were reported; ordering rules would only add noise
        for spec in chain[:-1]:
            if getattr(spec.type, "terminal", False):
                self.add(
                    _parse(spec.path),
                    f"terminal tier {spec.step_id!r} is not last: the tiers after it can never run",
                    "move it to the end of the chain",
                )
        last = chain[-1]
        if not getattr(last.type, "terminal", False):
            self.add(
                _parse(last.path),
                f"the chain ends with {last.step_id!r}, which can fail",
                "end the chain with a terminal tier such as 'unpersonalized'",
            )
        if budget is None:
            return
        for spec in chain:
            if isinstance(spec.params, TierParams) and spec.params.timeout > budget:
                self.add(
                    (*_parse(spec.path), "timeout"),
                    f"timeout {spec.params.timeout * 1e3:g}ms is above the policy budget "
                    f"{budget * 1e3:g}ms",
                    "lower the timeout or raise the budget",
                )

    def data_path(self, base: Path, loc: Path) -> Path:
        """``loc`` without the parts pydantic adds that are not in the data (union members)."""
        current: Any = self.located.data
        for part in base:
            current = _child(current, part)
        kept: list[str | int] = []
        for index, part in enumerate(loc):
            child = _child(current, part)
            if child is not _ABSENT:
                current = child
            elif index == len(loc) - 1:
                current = None  # a missing key: keep it, the message names it
            else:
                continue  # e.g. "dict[str,any]": the union member pydantic tried
            kept.append(part)
        return tuple(kept)

    def pydantic_issues(self, exc: ValidationError, base: Path, model: type[BaseModel]) -> None:
        for err in exc.errors():
            loc = self.data_path(base, tuple(err["loc"]))
            path = (*base, *loc)
            kind = err["type"]
            if path in self.located.reported:
                continue  # the reader already said what is wrong with this value
            if kind == "extra_forbidden":
                key = str(loc[-1]) if loc else ""
                allowed = _field_names(model, loc[:-1])
                self.add(path, f"unknown parameter {key!r}", _suggest(key, allowed, "parameter"))
            elif kind == "missing":
                self.add(path, f"missing required key {str(loc[-1])!r}", f"add '{loc[-1]}:'")
            elif kind == "literal_error" and loc == ("version",):
                continue  # reported above with its own message
            elif kind in ("model_type", "dict_type"):
                self.add(
                    path,
                    f"expected a mapping, not {_kind_of(err.get('input'))}",
                    "write 'key: value' lines under it",
                )
            else:
                message = str(err["msg"]).removeprefix("Value error, ")
                hint = _hint(kind, err.get("ctx"))
                if kind == "value_error" and "; " in message:
                    # Our validators write "what is wrong; how to fix it".
                    message, hint = message.split("; ", 1)
                self.add(path, message, hint)


def _field_names(model: type[BaseModel], loc: Path) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        current = info.annotation
    return list(getattr(current, "model_fields", {}))


_ABSENT = object()


def _kind_of(value: Any) -> str:
    names = {
        type(None): "null",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(type(value), type(value).__name__)


def _child(node: Any, part: str | int) -> Any:
    """``node[part]`` in parsed YAML, or ``_ABSENT``."""
    if isinstance(node, dict):
        return node.get(part, _ABSENT) if isinstance(part, str) else _ABSENT
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _ABSENT


def _known(hint: str, names: Sequence[str], kind: StepKind) -> str:
    return hint if names else f"no {kind.value} types are installed; remove the step"


def _suggest(word: str, choices: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if choices:
        return f"known {what}s: {', '.join(sorted(choices))}"
    return ""


def _hint(kind: str, ctx: Any) -> str:
    ctx = ctx or {}
    hints = {
        "greater_than": f"use a value above {ctx.get('gt')}",
        "greater_than_equal": f"use a value of at least {ctx.get('ge')}",
        "less_than": f"use a value below {ctx.get('lt')}",
        "less_than_equal": f"use a value of at most {ctx.get('le')}",
        "string_type": "write a string",
        "int_type": "write a whole number",
        "int_parsing": "write a whole number",
        "int_from_float": "write a whole number",
        "float_type": "write a number",
        "float_parsing": "write a number",
        "bool_type": "write true or false",
        "bool_parsing": "write true or false",
        "dict_type": "write a mapping (key: value lines)",
        "list_type": "write a list ('- item' lines)",
        "too_short": "add at least one entry",
        "string_too_short": "write a non-empty string",
        "value_error": "",
    }
    return hints.get(kind, "")


def _parse(dotted: str) -> Path:
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return tuple(parts)
