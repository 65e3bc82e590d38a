"""The ``resilience`` command: validate, explain, demo. In-process through ``main(argv)``, plus one
subprocess run of the installed console entry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resilience import Engine, PolicyValidationError, load_policies_file
from resilience.cli import main

#: The reference file (as ``conftest.REFERENCE_POLICIES``; conftest is not importable here).
REFERENCE_POLICIES = Path(__file__).resolve().parent.parent / "policies.yaml"
STALE_LINE = next(
    n
    for n, text in enumerate(REFERENCE_POLICIES.read_text().splitlines(), 1)
    if text.strip() == "- type: stale_cache"
)
CHAIN = ["session", "stale_cache", "profile_only", "segment", "unpersonalized"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` with its exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def position_of(text: str, needle: str, key: str) -> tuple[int, int]:
    """1-based line of the first line containing ``needle``, and column of ``key`` on it."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number, line.index(key) + 1
    raise AssertionError(f"{needle!r} not in text")


@pytest.fixture
def misspelled(tmp_path: Path, reference_yaml: str) -> Path:
    """A copy of the reference file with ``stale_cache`` misspelled ``stale_cach``."""
    path = tmp_path / "policies.yaml"
    path.write_text(reference_yaml.replace("type: stale_cache", "type: stale_cach"))
    return path


@pytest.fixture
def swapped(tmp_path: Path, reference_yaml: str) -> Path:
    """A copy of the reference file with ``profile_only`` and ``segment`` swapped."""
    profile = "      - type: profile_only\n        source: profile_store\n"
    segment = "      - type: segment\n        source: segment_store\n"
    assert profile + segment in reference_yaml
    path = tmp_path / "swapped.yaml"
    path.write_text(reference_yaml.replace(profile + segment, segment + profile))
    return path


# --- validate ---------------------------------------------------------------------------------


def test_validate_reference_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", str(REFERENCE_POLICIES))
    assert code == 0
    assert out == f"{REFERENCE_POLICIES}: valid (1 policy: search)\n"
    assert err == ""


def test_validate_reports_file_line_column_and_suggestion(
    capsys: pytest.CaptureFixture[str], misspelled: Path
) -> None:
    code, out, err = run(capsys, "validate", str(misspelled))
    assert code == 1
    assert out == ""
    line, column = position_of(misspelled.read_text(), "stale_cach", "type")
    assert (line, column) == (STALE_LINE, 9)
    assert err.splitlines() == [
        f"{misspelled}:{line}:{column}: policies.search.chain[1].type: "
        "unknown tier type 'stale_cach' (did you mean 'stale_cache'?)",
        f"{misspelled}: 1 problem",
    ]


def test_validate_reports_every_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, reference_yaml: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        reference_yaml.replace("blend_k: 3", "blend_k: 0")
        .replace("max_age: 5m", "max_age: 5")
        .replace("default_policy: search", "default_policy: serch")
    )
    code, _, err = run(capsys, "validate", str(path))
    assert code == 1
    lines = err.splitlines()
    assert lines[-1] == f"{path}: 3 problems"
    assert [line.split(": ")[1] for line in lines[:-1]] == [
        "default_policy",
        "policies.search.chain[0].blend_k",
        "policies.search.chain[1].max_age",
    ]


def test_validate_json_for_an_invalid_file(
    capsys: pytest.CaptureFixture[str], misspelled: Path
) -> None:
    code, out, err = run(capsys, "validate", "--format", "json", str(misspelled))
    assert code == 1
    report = json.loads(out)
    assert report["valid"] is False
    (issue,) = report["issues"]
    assert set(issue) == {"file", "line", "column", "path", "message", "hint"}
    assert issue == {
        "file": str(misspelled),
        "line": STALE_LINE,
        "column": 9,
        "path": "policies.search.chain[1].type",
        "message": "unknown tier type 'stale_cach'",
        "hint": "did you mean 'stale_cache'?",
    }
    assert "did you mean 'stale_cache'" in err  # the text form still goes to stderr


def test_validate_json_for_a_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--format", "json", str(REFERENCE_POLICIES))
    assert code == 0
    report = json.loads(out)
    loaded = load_policies_file(REFERENCE_POLICIES)
    assert report["valid"] is True
    assert report["version"] == loaded.version
    assert report["policies"] == {"search": loaded.policies["search"].version}


def test_validate_json_for_a_missing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    code, out, _ = run(capsys, "validate", "--format", "json", str(missing))
    assert code == 1
    report = json.loads(out)
    assert report["valid"] is False
    assert report["issues"][0]["file"] == str(missing)
    assert "cannot read the file" in report["issues"][0]["message"]


def test_validate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    code, out, err = run(capsys, "validate", str(missing))
    assert code == 1
    assert out == ""
    assert f"{missing}:0:0: cannot read the file: No such file or directory" in err
    assert "check the path" in err


BROKEN_FILES: dict[str, bytes] = {
    "syntax": b"version: 1\npolicies:\n  a: b: c\n",
    "empty": b"",
    "comments-only": b"# nothing here\n",
    "list": b"- 1\n- 2\n",
    "non-utf8": b"version: 1\n\xff\n",
    "python-tag": b'version: 1\npolicies: !!python/object/apply:os.system ["echo hacked"]\n',
    "alias-bomb": b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
        for i in range(8)
    ),
    "deep": b"x: " + b"[" * 3000 + b"]" * 3000 + b"\n",
    "multi-doc": b"version: 1\n---\nversion: 1\n",
}


@pytest.mark.parametrize("command", ["validate", "explain", "demo"])
@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
def test_broken_files_give_exit_1_and_no_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, kind: str
) -> None:
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(BROKEN_FILES[kind])
    code, out, err = run(capsys, command, str(path))
    assert code == 1
    assert "hacked" not in out
    assert err.startswith(f"{path}:")
    assert re.search(r": \d+ problems?\n\Z", err)


@pytest.mark.parametrize("command", ["validate", "explain", "demo"])
def test_directory_instead_of_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    code, _, err = run(capsys, command, str(tmp_path))
    assert code == 1
    assert "cannot read the file" in err


# --- explain ----------------------------------------------------------------------------------


def test_explain_shows_steps_in_order_with_every_effective_parameter(
    capsys: pytest.CaptureFixture[str], reference_yaml: str
) -> None:
    code, out, err = run(capsys, "explain", str(REFERENCE_POLICIES))
    assert code == 0
    assert err == ""
    loaded = load_policies_file(REFERENCE_POLICIES)
    version = loaded.policies["search"].version
    assert f"policy search [config {version}] budget 30ms" in out
    assert "default policy: search" in out
    headers = [
        line.strip()
        for line in out.splitlines()
        if line.strip()[:2] in {"1.", "2.", "3.", "4.", "5.", "6.", "7.", "8."}
    ]
    assert headers == [
        "1. error_rate (type error_rate, plugin builtin)",
        "2. session (type session, plugin builtin)",
        "3. stale_cache (type stale_cache, plugin builtin)",
        "4. profile_only (type profile_only, plugin builtin)",
        "5. segment (type segment, plugin builtin)",
        "6. unpersonalized (type unpersonalized, plugin builtin, terminal)",
        "7. boost_cap (type boost_cap, plugin builtin)",
        "8. exploration (type exploration, plugin builtin)",
    ]
    assert "guards:\n" in out
    assert "post:\n" in out
    # Defaults the file does not write are shown too.
    assert "max_entries" not in reference_yaml
    assert "max_entries: 100000" in out
    stale = out[out.index("3. stale_cache") : out.index("4. profile_only")]
    assert [line.strip() for line in stale.strip().splitlines()[1:]] == [
        "timeout: 1ms",
        "cache: session",
        "max_age: 5m",
        "max_entries: 100000",
    ]
    session = out[out.index("2. session") : out.index("3. stale_cache")]
    for shown in ("timeout: 10ms", "blend_k: 3.0", "max_clicks: 50", "decay: null"):
        assert shown in session


def test_swapping_two_tiers_changes_the_explained_order(
    capsys: pytest.CaptureFixture[str], swapped: Path
) -> None:
    code, out, _ = run(capsys, "explain", str(REFERENCE_POLICIES))
    assert code == 0
    assert out.index("4. profile_only") < out.index("5. segment")
    code, swapped_out, _ = run(capsys, "explain", str(swapped))
    assert code == 0
    assert "4. segment (type segment" in swapped_out
    assert "5. profile_only (type profile_only" in swapped_out
    assert swapped_out.index("4. segment") < swapped_out.index("5. profile_only")
    # The swap is a different configuration.
    before = load_policies_file(REFERENCE_POLICIES).policies["search"].version
    after = load_policies_file(swapped).policies["search"].version
    assert before != after
    assert f"[config {after}]" in swapped_out


def test_explain_unknown_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", str(REFERENCE_POLICIES), "--policy", "nope")
    assert code == 1
    assert out == ""
    assert "no policy named 'nope'" in err
    assert "known: search" in err


def test_explain_one_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", str(REFERENCE_POLICIES), "--policy", "search")
    assert code == 0
    assert "policy search" in out


def test_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--format", "json", str(REFERENCE_POLICIES))
    assert code == 0
    report = json.loads(out)
    loaded = load_policies_file(REFERENCE_POLICIES)
    assert list(report) == ["search"]
    search = report["search"]
    assert search["config_version"] == loaded.policies["search"].version
    assert search["budget"] == "30ms"
    assert [step["type"] for step in search["chain"]] == CHAIN
    assert search["chain"][1] == {
        "type": "stale_cache",
        "id": "stale_cache",
        "timeout": "1ms",
        "cache": "session",
        "max_age": "5m",
        "max_entries": 100000,
    }
    assert [g["type"] for g in search["guards"]] == ["error_rate"]
    assert [p["type"] for p in search["post"]] == ["boost_cap", "exploration"]


def test_explain_json_on_an_invalid_file_still_exits_1(
    capsys: pytest.CaptureFixture[str], misspelled: Path
) -> None:
    code, _, err = run(capsys, "explain", "--format", "json", str(misspelled))
    assert code == 1
    assert "did you mean 'stale_cache'" in err


# --- demo -------------------------------------------------------------------------------------


def test_demo_runs_the_reference_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", str(REFERENCE_POLICIES))
    assert code == 0
    assert err == ""
    version = load_policies_file(REFERENCE_POLICIES).policies["search"].version
    assert out.startswith(f"Policies from {REFERENCE_POLICIES}")
    assert out.count(f"search@{version} served ") == 9
    assert "session=error[ConnectionError], stale_cache=ok" in out
    assert "session=timeout[" in out
    assert "cancelled at deadline" in out
    assert "served stale_cache (fallback)" in out


@pytest.mark.parametrize(
    ("replace", "by"),
    [
        ("source: segment_store", "source: other_store"),
        ("max_session_weight: 0.8", "max_session_weight: 0.8\n        cache: null"),
    ],
    ids=["unbound-source", "unfed-stale-cache"],
)
def test_demo_reports_engine_build_errors_without_traceback(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    reference_yaml: str,
    replace: str,
    by: str,
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(reference_yaml.replace(replace, by))
    code, _, err = run(capsys, "demo", str(path))
    assert code == 1
    assert f"{path}:" in err


# --- usage ------------------------------------------------------------------------------------


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("usage: resilience")
    for command in ("validate", "explain", "demo"):
        assert command in err


@pytest.mark.parametrize("command", ["validate", "explain"])
def test_commands_without_arguments_read_policies_yaml_in_cwd(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.chdir(REFERENCE_POLICIES.parent)
    code, out, _ = run(capsys, command)
    assert code == 0
    assert "policies.yaml" in out


@pytest.mark.parametrize("command", ["validate", "explain", "demo"])
def test_commands_without_arguments_and_no_policies_yaml(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, command)
    assert code == 1
    assert out == ""
    assert err.startswith("policies.yaml:0:0: cannot read the file: No such file or directory")


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["validate", "--format", "xml"],
        ["explain", "--policy"],
        ["validate", "a.yaml", "b.yaml"],
        ["--nope"],
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "usage: resilience" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("command", ["validate", "explain", "demo"])
def test_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: resilience {command}" in capsys.readouterr().out


# --- the console entry ------------------------------------------------------------------------


def test_console_entry_runs_without_traceback(misspelled: Path) -> None:
    script = Path(sys.executable).with_name("resilience")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "resilience"]
    valid = subprocess.run(
        [*command, "validate", str(REFERENCE_POLICIES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert valid.returncode == 0, valid.stderr
    assert "valid (1 policy: search)" in valid.stdout
    invalid = subprocess.run(
        [sys.executable, "-m", "resilience", "validate", str(misspelled)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert invalid.returncode == 1
    assert "Traceback" not in invalid.stdout + invalid.stderr
    assert f"{misspelled}:{STALE_LINE}:9: " in invalid.stderr
    assert "did you mean 'stale_cache'" in invalid.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # Far more output than a pipe buffers, so the write after `head` exits really fails.
    policies = "".join(
        f"  p{n}:\n    chain: [profile_only, segment, unpersonalized]\n" for n in range(600)
    )
    path = tmp_path / "big.yaml"
    path.write_text(f"version: 1\npolicies:\n{policies}")
    command = f"{sys.executable} -m resilience explain {path} | head -c 10 >/dev/null"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
    assert "Traceback" not in done.stderr
    assert "BrokenPipe" not in done.stderr


def test_validate_also_checks_wiring_across_steps(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, reference_yaml: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        reference_yaml.replace(
            "max_session_weight: 0.8", "max_session_weight: 0.8\n        cache: x"
        )
    )
    code, _, err = run(capsys, "validate", str(path))
    assert code == 1
    assert "no tier feeds the cache 'session'" in err


def test_validate_accepts_redis_declared_sources_and_flags_without_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1 answers nothing: validating must neither connect nor refuse the declaration.
    text = REFERENCE_POLICIES.read_text()
    text = text.replace(
        "  session_store:\n",
        '  session_store:\n    redis: {url: "redis://127.0.0.1:1/0"}\n',
        1,
    ).replace("settings:\n", 'settings:\n  flags: {redis: {url: "redis://127.0.0.1:1/0"}}\n', 1)
    path = tmp_path / "policies.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 0
    assert "valid (1 policy: search)" in capsys.readouterr().out


def reference_with(tmp_path: Path, *insertions: tuple[str, str]) -> Path:
    """The reference file with each ``(after, lines)`` inserted after the first ``after``."""
    text = REFERENCE_POLICIES.read_text()
    for after, lines in insertions:
        assert after in text, after
        text = text.replace(after, after + lines, 1)
    path = tmp_path / "policies.yaml"
    path.write_text(text)
    return path


def test_validate_needs_neither_the_fleets_redis_nor_the_variable_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CI job validating the file has no FLEET_REDIS_URL: the fleet's settings are checked
    # when the file is read, and the breaker is built local.
    monkeypatch.delenv("FLEET_REDIS_URL", raising=False)
    path = reference_with(
        tmp_path, ("  profile_store:\n    breaker:\n", "      fleet: {url_env: FLEET_REDIS_URL}\n")
    )
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert "valid (1 policy: search)" in capsys.readouterr().out


def test_validate_reads_no_variable_a_step_s_redis_names_but_the_service_build_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAM_REDIS_URL", raising=False)
    path = reference_with(
        tmp_path,
        ("    guards:\n", "      - {type: stream_lag, redis: {url_env: STREAM_REDIS_URL}}\n"),
    )
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    # A service building it for real still refuses it, naming the variable.
    stores = dict.fromkeys(["session_store", "profile_store", "segment_store"], lambda key: None)
    with pytest.raises(PolicyValidationError, match="STREAM_REDIS_URL"):
        Engine.from_file(str(path), stores, flag_feeds=()).close()


def test_validate_refuses_redis_declarations_without_the_redis_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offline, nothing else imports the client: without this check the service's start-up
    # would be the first to find it missing.
    path = reference_with(
        tmp_path,
        ("  session_store:\n", '    redis: {url: "redis://h:1/0"}\n'),
        ("    guards:\n", '      - {type: stream_lag, redis: {url: "redis://h:1/0"}}\n'),
    )
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now raises ImportError
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "sources.session_store.redis: needs the redis extra" in err, err
    assert "pip install 'search-resilience[redis]'" in err
    monkeypatch.setattr(
        "resilience.cli._redis_extra_for", lambda policies: None
    )  # the sources' check off: the guard's own still refuses
    assert main(["validate", str(path)]) == 1
    assert "the watermark's Redis needs the redis extra" in capsys.readouterr().err
