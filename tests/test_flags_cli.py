"""``resilience flags list|get|set|clear|history``: the operator's side of kill switches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resilience.cli import main
from resilience.testing import RedisServer

POLICY = """
version: 1
default_policy: search
settings:
  flags:
{flags}
policies:
  search:
    guards: [error_rate]
    chain:
      - type: profile_only
        source: profile_store
      - unpersonalized
"""


def write_policy(folder: Path, flags: str) -> str:
    path = folder / "policies.yaml"
    path.write_text(POLICY.format(flags=flags))
    return str(path)


@pytest.fixture
def file_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("RESILIENCE_FLAG_SEARCH", raising=False)
    return write_policy(tmp_path, "    file: flags.yaml")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_set_get_and_clear_through_the_flags_file(
    file_policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "flags", "set", "search.error_rate", "shadow", "--reason", "watch it first",
        "--by", "alice", "--policies", file_policy,
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("search.error_rate: on -> shadow (wrote shadow to file ")
    assert out.rstrip().endswith("by alice: watch it first)")

    code, out, _ = run(capsys, "flags", "get", "search.error_rate", "--policies", file_policy)
    assert code == 0
    assert "search.error_rate: shadow (from file)" in out
    assert "file: shadow by alice" in out and "(watch it first)" in out

    code, out, _ = run(capsys, "flags", "list", "--format", "json", "--policies", file_policy)
    rows = {row["key"]: row for row in json.loads(out)["flags"]}
    assert rows["search.error_rate"]["value"] == "shadow"
    assert rows["search"]["source"] == "policy"

    code, out, err = run(
        capsys, "flags", "clear", "search.error_rate", "--reason", "done", "--policies", file_policy
    )
    assert code == 0 and "shadow -> on" in out
    assert err == ""  # the policy's own mode decides again: nothing outranks the file


def test_the_environment_of_the_shell_shows_in_list(
    file_policy: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESILIENCE_FLAG_SEARCH", "off")
    code, out, _ = run(capsys, "flags", "list", "--policies", file_policy)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("search "))
    assert "off" in line and "from env" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["set", "search.unpersonalized", "off"], "terminal tier has no switch"),
        (["set", "search.profile_only", "shadow"], "cannot be 'shadow'"),
        (["set", "serch", "off"], "no flag 'serch'"),
        (["clear", "nope"], "no flag 'nope'"),
    ],
)
def test_a_flag_no_policy_defines_is_refused_and_nothing_is_written(
    file_policy: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "flags", *argv, "--reason", "x", "--policies", file_policy)
    assert code == 1
    assert message in err
    assert not (Path(file_policy).parent / "flags.yaml").exists()


def test_a_reason_is_required(file_policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["flags", "set", "search", "off", "--policies", file_policy])
    assert exit_info.value.code == 2
    assert "--reason" in capsys.readouterr().err
    code, _, err = run(
        capsys, "flags", "set", "search", "off", "--reason", " ", "--policies", file_policy
    )
    assert code == 2 and "--reason must say why" in err


def test_nowhere_to_write_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_policy(tmp_path, "    env_prefix: RESILIENCE_FLAG_")
    code, _, err = run(capsys, "flags", "set", "search", "off", "--reason", "x", "--policies", path)
    assert code == 1
    assert "declares no file" in err


def test_an_invalid_policy_file_is_reported_not_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("version: 1\npolicies: {}\n")
    code, _, err = run(capsys, "flags", "list", "--policies", str(path))
    assert code == 1
    assert "invalid; fix it before using its flags" in err


def test_set_through_redis_with_history(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_policy(
        tmp_path,
        f'    env_prefix: null\n    file: flags.yaml\n    redis:\n      url: "{redis_server.url}"',
    )
    code, out, _ = run(
        capsys,
        "flags",
        "set",
        "search",
        "off",
        "--reason",
        "INC-9",
        "--by",
        "bob",
        "--policies",
        path,
    )
    assert code == 0 and "(wrote off to redis (version 1), by bob: INC-9)" in out
    code, out, _ = run(capsys, "flags", "get", "search", "--policies", path)
    assert "search: off (from redis)" in out

    # The flags file sits below Redis: writing it says who still decides.
    code, out, err = run(
        capsys, "flags", "set", "search", "on", "--to", "file", "--reason", "x", "--policies", path
    )
    assert code == 0
    assert "warning: redis holds 'off' for search and takes precedence over file" in err

    run(
        capsys,
        "flags",
        "clear",
        "search",
        "--reason",
        "INC-9 resolved",
        "--by",
        "bob",
        "--policies",
        path,
    )
    code, out, _ = run(capsys, "flags", "history", "--policies", path)
    lines = out.splitlines()
    assert "search: off -> (cleared)  by bob: INC-9 resolved" in lines[0]
    assert "search: - -> off  by bob: INC-9" in lines[1]


def test_an_unreachable_redis_changes_nothing_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_policy(tmp_path, '    redis:\n      url: "redis://127.0.0.1:1/0"')
    code, out, err = run(
        capsys, "flags", "set", "search", "off", "--reason", "x", "--policies", path
    )
    assert code == 1
    assert "search: not changed:" in err
    code, out, err = run(capsys, "flags", "list", "--policies", path)
    assert code == 0
    assert "warning: redis unreadable" in err
    assert "search " in out and "from policy" in out


def test_writing_below_an_unreadable_source_warns_that_it_may_still_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_policy(
        tmp_path,
        '    env_prefix: null\n    file: flags.yaml\n    redis:\n      url: "redis://127.0.0.1:1/0"',
    )
    code, _, err = run(
        capsys, "flags", "set", "search", "on", "--to", "file", "--reason", "x", "--timeout", "0.2",
        "--policies", path,
    )  # fmt: skip
    assert code == 0
    assert "warning: redis could not be read" in err
    assert "outrank file" in err
