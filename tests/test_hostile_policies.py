"""Hostile policy files, each a named case: the loader answers with the project's own
validation error, within bounded memory, and the CLI with a message and exit status 1, never a
traceback. Each case goes through the file path a platform team uses (``resilience validate``,
``load_policies_file``), not only through text in memory."""

from __future__ import annotations

import contextlib
import io
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.hostile import CASES
from resilience import PolicyValidationError
from resilience._policy import load_policies_file
from resilience._yaml import MAX_DEPTH, MAX_FILE_BYTES
from resilience.cli import main

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


_REFERENCE_LINES = (
    (Path(__file__).resolve().parent.parent / "policies.yaml").read_text().splitlines(keepends=True)
)
_HOSTILE_VALUES = (
    ".nan",
    "-.inf",
    "9" * 5_000,
    "*undefined",
    "&anchor x",
    "!!python/object/apply:os.system ['true']",
    "!!binary aGVsbG8=",
    "[",
    "{a: [",
    "~",
    "0x1F",
    "1e999",
    '"\\ud800"',
    "'\\x00'",
    "2024-01-01",
    "-",
)


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_structurally_mutated_reference_files_are_loaded_or_refused_by_the_cli(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lines = list(_REFERENCE_LINES)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        index = data.draw(st.integers(0, len(lines) - 1), label="line")
        kind = data.draw(
            st.sampled_from(("duplicate", "delete", "swap", "indent", "dedent", "value")),
            label="kind",
        )
        line = lines[index]
        if kind == "duplicate":
            lines.insert(index, line)
        elif kind == "delete" and len(lines) > 1:
            del lines[index]
        elif kind == "swap":
            other = data.draw(st.integers(0, len(lines) - 1), label="other")
            lines[index], lines[other] = lines[other], line
        elif kind == "indent":
            lines[index] = "  " + line
        elif kind == "dedent":
            lines[index] = line[2:] if line.startswith("  ") else line
        elif kind == "value" and ":" in line:
            key = line.split(":", 1)[0]
            value = data.draw(st.sampled_from(_HOSTILE_VALUES), label="value")
            lines[index] = f"{key}: {value}\n"
    path = tmp_path_factory.mktemp("mutated") / "policies.yaml"
    path.write_text("".join(lines), encoding="utf-8", errors="surrogatepass")
    issues: tuple[object, ...] = ()
    try:
        load_policies_file(path)
    except PolicyValidationError as exc:  # the project's own error, and nothing else
        issues = tuple(exc.issues)
    accepted = not issues
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["validate", str(path)])
    assert code == (0 if accepted else 1)
    assert "Traceback" not in stdout.getvalue() + stderr.getvalue()
