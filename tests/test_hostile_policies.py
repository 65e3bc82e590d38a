"""Hostile policy files, each a named case: the loader answers with the project's own
validation error, within bounded memory, and the CLI with a message and exit status 1, never a
traceback. Each case goes through the file path a platform team uses (``resilience validate``,
``load_policies_file``), not only through text in memory."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from resilience import PolicyValidationError
from resilience._policy import load_policies_file
from resilience._yaml import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from resilience.cli import main

_POLICY = (
    "version: 1\ndefault_policy: p\npolicies:\n  p:\n    budget: {budget}\n"
    "    chain: [unpersonalized]\n"
)


def _alias_bomb() -> bytes:
    # Nine levels of nine aliases each: 9**9 (387 million) values once expanded.
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(8):
        name, ref = chr(98 + level), chr(97 + level)
        lines.append(f"{name}: &{name} [{', '.join([f'*{ref}'] * 9)}]")
    return ("\n".join(lines) + "\n").encode()


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

#: Peak memory a hostile file may cost the loader (tracemalloc), whatever its size.
PEAK_LIMIT = 16 * 1024 * 1024


def _write(tmp_path: Path, case: str) -> Path:
    make, _ = CASES[case]
    path = tmp_path / f"{case}.yaml"
    data = make().replace(b"{marker}", str(tmp_path / "EXECUTED").encode())
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_file_is_refused_with_our_error_in_bounded_memory(
    case: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, case)
    tracemalloc.start()
    try:
        with pytest.raises(PolicyValidationError) as caught:
            load_policies_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    messages = " / ".join(issue.message for issue in caught.value.issues)
    assert CASES[case][1] in messages, messages
    assert all(issue.file == str(path) for issue in caught.value.issues)
    assert peak < PEAK_LIMIT, f"{case}: peak {peak:,} bytes"
    assert not (tmp_path / "EXECUTED").exists()  # no tag ran anything


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_cli_reports_a_hostile_file_without_a_traceback(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, case)
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert f"{path}:" in out + err  # where
    assert CASES[case][1] in out + err  # what
    assert not (tmp_path / "EXECUTED").exists()


def test_an_endless_file_is_read_no_further_than_the_limit() -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    with pytest.raises(PolicyValidationError) as caught:
        load_policies_file("/dev/zero")
    assert f"larger than the limit of {MAX_FILE_BYTES} bytes" in caught.value.issues[0].message


def test_nesting_past_the_interpreters_recursion_limit_is_refused_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 100,000 levels: the YAML composer recurses until Python's limit, which is caught (it
    # costs about a second, whatever the depth; tracemalloc would make it minutes, so the
    # bounded-memory case above stops at 200 levels).
    path = tmp_path / "deep.yaml"
    path.write_bytes(b"version: 1\nx: " + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert f"nesting deeper than {MAX_DEPTH} levels" in out + err
