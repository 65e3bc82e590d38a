"""Two processes sharing one Redis: a kill switch flipped with the CLI reaches both; with that
Redis stopped, both keep the last known value and report it stale."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.flag_propagation import Worker, policy_text, start_worker
from resilience.cli import main
from resilience.testing import RedisServer


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Path, list[Worker]]]:
    path = tmp_path / "policies.yaml"
    path.write_text(policy_text(redis_server.url))
    started = [start_worker(str(path)) for _ in range(2)]
    try:
        yield path, started
    finally:
        for worker in started:
            worker.stop()


def test_a_flag_flipped_with_the_cli_switches_both_processes_off_and_survives_redis_stopping(
    workers: tuple[Path, list[Worker]],
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, processes = workers
    for worker in processes:
        assert worker.wait_for(lambda line: line.get("reason") == "primary", 30) is not None

    code = main(
        [
            "flags",
            "set",
            "search",
            "off",
            "--reason",
            "INC-7 test",
            "--by",
            "ci",
            "--policies",
            str(path),
        ]
    )
    assert code == 0
    assert "search: on -> off (wrote off to redis" in capsys.readouterr().out
    for worker in processes:
        seen = worker.wait_for(lambda line: line.get("reason") == "switched_off", 30)
        assert seen is not None and seen["stale"] is False

    marks = [len(worker.lines) for worker in processes]
    redis_server.stop()
    for worker, mark in zip(processes, marks, strict=True):
        seen = worker.wait_for(lambda line: line.get("stale") is True, 30, mark)
        assert seen is not None, worker.lines
        assert seen["reason"] == "switched_off"  # the last known value holds
    for worker, mark in zip(processes, marks, strict=True):
        assert all(line["reason"] == "switched_off" for line in worker.lines[mark:])
