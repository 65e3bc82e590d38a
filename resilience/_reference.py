"""Reference tables generated from the step parameter models, for the docs.

The pages under ``docs/`` (one per built-in step in ``docs/steps/``, the options models in
the others) embed tables between markers; the test suite regenerates them and fails when a
committed table drifts from its model.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ._breaker import BreakerOptions
from ._durations import format_duration
from ._flag_settings import FlagSettings
from ._flags_openfeature import OpenFeatureOptions
from ._flags_redis import RedisFlagOptions
from ._fleet import FleetOptions
from ._plugins import PluginHost, StepType
from ._redis import RedisOptions, SessionFormat
from ._retry import RetryOptions
from ._sources import SourceOptions
from ._stats import MetricsSettings
from ._steps import _is_source_annotation
from .events import EVENTS
from .metrics import METRICS

__all__ = ["parameter_table", "render_parameter_tables", "telemetry_table"]


def parameter_table(step_type: StepType | type[BaseModel]) -> str:
    """A Markdown table of a step type's (or an options model's) parameters: name, type,
    default, meaning."""
    model = step_type.Params if hasattr(step_type, "Params") else step_type
    assert isinstance(model, type)
    assert issubclass(model, BaseModel)
    properties = model.model_json_schema()["properties"]
    rows = ["| parameter | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        kind = _schema_type(properties[name])
        if _is_source_annotation(info.annotation, info.metadata):
            kind = kind.replace("string", "source name")
        rows.append(
            f"| `{name}` | {kind} | {_default(info, duration='duration' in kind)} | "
            f"{(info.description or '').replace('|', '/')} |"
        )
    return "\n".join(rows)


def _schema_type(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return " or ".join(_schema_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return "mapping"
    if "(us|ms|s|m|h)" in prop.get("pattern", ""):
        return "duration"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(prop.get('items', {}))}"
    return str(kind)


def _default(info: FieldInfo, *, duration: bool) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value: Any = info.get_default(call_default_factory=True)
    if duration and isinstance(value, float):
        return f"`{format_duration(value)}`"
    if duration and isinstance(value, tuple | list):  # a list of durations, as YAML writes it
        return f"`[{', '.join(format_duration(float(v)) for v in value)}]`"
    if isinstance(value, BaseModel):
        return "see below"  # a nested options model: its own table follows
    return f"`{json.dumps(value)}`"


_MARKER = re.compile(
    r"(<!-- (?P<kind>params|telemetry):(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)"
    r"(<!-- /(?P=kind) -->)",
    re.S,
)


_OPTION_MODELS: dict[str, type[BaseModel]] = {
    "sources": SourceOptions,
    "breaker": BreakerOptions,
    "retry": RetryOptions,
    "redis": RedisOptions,
    "redis_format": SessionFormat,
    "fleet": FleetOptions,
    "flags": FlagSettings,
    "flags_redis": RedisFlagOptions,
    "flags_openfeature": OpenFeatureOptions,
    "metrics_settings": MetricsSettings,
}


def event_table() -> str:
    """The project's events (``resilience.*``; the built-in plugins must be loaded): name,
    level, meaning. A third-party plugin's events are for its own docs."""
    rows = ["| event | level | meaning and fields |", "| --- | --- | --- |"]
    for name, spec in sorted(EVENTS.items()):
        if not name.startswith("resilience."):
            continue
        rows.append(f"| `{name}` | {spec.level} | {spec.description.replace('|', '/')} |")
    return "\n".join(rows)


def metric_table() -> str:
    """The project's metrics (``resilience_*``): name, type, labels, meaning."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for name, spec in sorted(METRICS.items()):
        if not name.startswith("resilience_"):
            continue
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
        rows.append(f"| `{name}` | {spec.kind} | {labels} | {spec.help.replace('|', '/')} |")
    return "\n".join(rows)


_GENERATED = {"events": event_table, "metrics": metric_table}


def telemetry_table(step_type: StepType) -> str:
    """A Markdown table of what a step type emits beyond every step's trace entry and outcome
    counter (:attr:`Step.telemetry`): events with their level, metrics with their type and
    labels, and what each means."""
    rows = ["| name | kind | meaning |", "| --- | --- | --- |"]
    for name in step_type.telemetry:
        event = EVENTS.get(name)
        metric = METRICS.get(name)
        if event is not None:
            kind, meaning = f"event, {event.level}", event.description
        elif metric is not None:
            labels = ", ".join(f"`{label}`" for label in metric.labels)
            kind, meaning = f"{metric.kind} ({labels})", metric.help
        else:
            raise LookupError(
                f"{step_type.name}.telemetry names {name!r}, which no register_event or "
                "register_metric declared"
            )
        rows.append(f"| `{name}` | {kind} | {meaning.replace('|', '/')} |")
    if len(rows) == 2:
        rows.append("| - | - | nothing beyond the trace entry and the outcome counter |")
    return "\n".join(rows)


def render_parameter_tables(markdown: str, host: PluginHost) -> str:
    """``markdown`` with every ``<!-- params:NAME -->`` block regenerated from its model."""

    def table(match: re.Match[str]) -> str:
        name = match.group("name")
        opening, closing = match.group(1), match.group(5)
        if match.group("kind") == "telemetry":
            return f"{opening}{telemetry_table(host.step_types[name])}\n{closing}"
        generated = _GENERATED.get(name)
        if generated is not None:
            return f"{opening}{generated()}\n{closing}"
        documented = _OPTION_MODELS.get(name) or host.step_types[name]
        return f"{opening}{parameter_table(documented)}\n{closing}"

    return _MARKER.sub(table, markdown)


def main(argv: list[str] | None = None) -> int:
    """``python -m resilience._reference FILE...``: regenerate the tables in place."""
    host = PluginHost(allow=None)  # tooling: a plugin's own docs name its step types too
    for name in argv if argv is not None else sys.argv[1:]:
        path = Path(name)
        try:
            path.write_text(render_parameter_tables(path.read_text(), host))
        except KeyError as exc:
            print(
                f"{name}: no installed step type or options model {exc.args[0]!r} "
                "(install the plugin that provides it, or fix the marker)",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
