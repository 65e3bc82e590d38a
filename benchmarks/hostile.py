"""Hostile policy files: how long each named case takes to be refused.

``python -m benchmarks hostile [--json PATH]``: every case of ``CASES`` (the same files the
tests in ``tests/test_hostile_policies.py`` refuse) is written to a temporary file and loaded
with ``load_policies_file``, as ``resilience validate`` loads it; the wall time of the refusal,
median of 5, and the peak memory (tracemalloc, one extra run) are reported. A measurement, not a
ratio: it shows that no case costs more than about a second, whatever the file claims to hold.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resilience import PolicyValidationError
from resilience._policy import load_policies_file
from resilience._yaml import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

__all__ = ["BEYOND_RECURSION", "CASES", "run"]


def _alias_bomb() -> bytes:
    # Nine levels of nine aliases each: 9**9 (387 million) values once expanded.
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(8):
        name, ref = chr(98 + level), chr(97 + level)
        lines.append(f"{name}: &{name} [{', '.join([f'*{ref}'] * 9)}]")
    return ("\n".join(lines) + "\n").encode()


_POLICY = (
    "version: 1\ndefault_policy: p\npolicies:\n  p:\n    budget: {budget}\n"
    "    chain: [unpersonalized]\n"
)


#: case -> (the file's bytes, made on demand; a phrase of the expected message)
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "alias_bomb": (_alias_bomb, f"more than {MAX_NODES} values"),
    "deep_flow_nesting": (
        lambda: b"version: 1\nx: " + b"[" * 200 + b"]" * 200 + b"\n",
        f"nesting deeper than {MAX_DEPTH} levels",
    ),
    "deep_block_nesting": (
        lambda: "".join(f"{'  ' * i}k{i}:\n" for i in range(200)).encode() + b"v: 1\n",
        f"nesting deeper than {MAX_DEPTH} levels",
    ),
    "file_of_50_mb": (
        lambda: b"# " + b"x" * (50 * 1024 * 1024) + b"\n",
        f"larger than the limit of {MAX_FILE_BYTES} bytes",
    ),
    "binary_garbage": (lambda: bytes(range(256)) * 16, "not UTF-8 text"),
    "non_utf8_latin1": (
        lambda: "version: 1\ndescription: caf\xe9\n".encode("latin-1"),
        "not UTF-8 text",
    ),
    "python_object_apply_tag": (
        lambda: b"version: 1\nx: !!python/object/apply:os.system ['touch {marker}']\n",
        "is not allowed",
    ),
    "python_name_tag": (lambda: b"version: 1\nx: !!python/name:os.system\n", "is not allowed"),
    "custom_tag": (lambda: b"version: 1\nx: !include /etc/passwd\n", "is not allowed"),
    "nan": (lambda: _POLICY.format(budget=".nan").encode(), "not a finite number"),
    "infinity": (lambda: _POLICY.format(budget=".inf").encode(), "not a finite number"),
    "negative_infinity": (lambda: _POLICY.format(budget="-.inf").encode(), "not a finite number"),
    "enormous_integer": (
        lambda: _POLICY.format(budget="9" * 100_000).encode(),
        "an integer of 100000 digits is too large",
    ),
}


#: Nesting past the interpreter's recursion limit: refused in about a second, whatever the
#: depth (the tests run it without tracemalloc, which would take minutes here).
BEYOND_RECURSION: dict[str, tuple[Callable[[], bytes], str]] = {
    "deep_flow_nesting_100k": (
        lambda: b"version: 1\nx: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        f"nesting deeper than {MAX_DEPTH} levels",
    ),
}


def run(*, quick: bool = False) -> dict[str, dict[str, Any]]:
    """Per case: ``ms`` (median wall time of the refusal), ``peak_bytes`` and ``message``."""
    repeats = 1 if quick else 5  # quick: the suite checks each case is refused and timed
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for case, (make, expected) in {**CASES, **BEYOND_RECURSION}.items():
            path = Path(folder) / f"{case}.yaml"
            path.write_bytes(make().replace(b"{marker}", str(Path(folder) / "EXECUTED").encode()))
            times = []
            message = ""
            for _ in range(repeats):
                started = time.perf_counter()
                try:
                    load_policies_file(path)
                except PolicyValidationError as exc:
                    message = " / ".join(issue.message for issue in exc.issues)
                times.append(time.perf_counter() - started)
            assert expected in message, (case, message)
            peak = 0
            if case != "deep_flow_nesting_100k":  # tracemalloc makes deep recursion very slow
                tracemalloc.start()
                try:
                    _refuse(path)
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
            results[case] = {
                "ms": round(statistics.median(times) * 1000, 2),
                "peak_bytes": peak,
                "message": message,
            }
    return results


def _refuse(path: Path) -> None:
    try:
        load_policies_file(path)
    except PolicyValidationError:
        return
    raise AssertionError(f"{path} was accepted")
