"""Durations as the policy file writes them: ``250us``, ``10ms``, ``1.5s``, ``5m``, ``1h``.

A bare number is refused on purpose: ``timeout: 10`` could mean 10 ms or 10 s, and a wrong guess
here is the difference between a safe cutoff and a three-second hang.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, ValidationInfo, WithJsonSchema

__all__ = ["FROM_DOCUMENT", "Duration", "format_duration", "parse_duration"]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)\s*$")


#: Validation context key set when a document is validated: bare numbers are refused there.
FROM_DOCUMENT = "resilience.document"


def parse_duration(value: Any, info: ValidationInfo | None = None) -> float:
    """Parse a duration into seconds: a string with a unit, or (from Python code only) a
    number of seconds.

    Raises:
        ValueError: with a message that says how to write it, for anything else.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as '10ms' or '5s', got {value!r}")
    if isinstance(value, int | float):
        from_document = info is not None and bool((info.context or {}).get(FROM_DOCUMENT))
        if not from_document:
            return float(value)  # Python callers pass seconds, as the rest of Python does
        raise ValueError(
            f"a bare number is ambiguous; write it with a unit, e.g. '{value}ms' or '{value}s'"
        )
    match = _PATTERN.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration; write a number and a unit (us, ms, s, m, h), e.g. '10ms'"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is too large")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the file's own units (for ``explain``)."""
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        count = seconds / scale
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    micros = seconds / 1e-6
    if abs(micros - round(micros)) < 1e-6:
        return f"{round(micros)}us"
    return f"{seconds * 1e3:g}ms"


def _validate(value: Any, info: ValidationInfo) -> float:
    # pydantic passes ValidationInfo only to a validator whose signature requires it.
    return parse_duration(value, info)


#: A duration parameter: written as ``'10ms'`` in YAML, held as float seconds.
Duration = Annotated[
    float,
    BeforeValidator(_validate),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*\d+(\.\d+)?\s*(us|ms|s|m|h)\s*$",
            "description": "A duration with a unit: us, ms, s, m or h (e.g. '10ms').",
        }
    ),
]
