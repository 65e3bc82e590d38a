"""The exposure log: one record per decision and per click, written off the request path through
a bounded queue whose drops are counted."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from resilience import (
    Affinities,
    Candidate,
    Engine,
    PolicyValidationError,
    RequestContext,
    load_policies,
)
from resilience._exposure import user_hash
from resilience._holdout import bucket
from resilience.testing import RecordingSink, wait_for_child

from .conftest import REFERENCE_POLICIES

TEXT = (
    REFERENCE_POLICIES.read_text()
    .replace(
        "settings:\n",
        "settings:\n  exposures: {path: exposures.jsonl, user_salt: s3cret}\n",
    )
    .replace("  search:\n", "  search:\n    holdout: {salt: h1, percent: 20}\n", 1)
)
STORES = {
    "session_store": {}.get,
    "profile_store": {f"u{n}": Affinities({"books": 1.0}) for n in range(50)}.get,
    "segment_store": {}.get,
}
CANDIDATES = tuple(
    Candidate(f"i{n}", 100.0 - n, ("books", "shoes", "toys")[n % 3]) for n in range(20)
)


def engine_in(folder: Path, text: str = TEXT, **options: Any) -> Engine:
    path = folder / "policies.yaml"
    path.write_text(text)
    return Engine(load_policies(text, file=str(path)), STORES, events=RecordingSink(), **options)


def test_every_decision_and_click_is_a_record_without_the_user_id(tmp_path: Path) -> None:
    engine = engine_in(tmp_path)
    decisions = [
        engine.decide(RequestContext(user_id=f"u{n}", request_id=f"r{n}", candidates=CANDIDATES))
        for n in range(50)
    ]
    engine.record_click(decisions[0].trace, user_id="u0", item_id="i3")
    engine.close()
    lines = [json.loads(line) for line in (tmp_path / "exposures.jsonl").read_text().splitlines()]
    exposures = [r for r in lines if r["kind"] == "exposure"]
    clicks = [r for r in lines if r["kind"] == "click"]
    assert len(exposures) == 50 and len(clicks) == 1
    first = exposures[0]
    assert first["request_id"] == "r0"
    assert first["user"] == user_hash("s3cret", "u0") and "u0" not in json.dumps(first)
    assert first["bucket"] == bucket("h1", "u0")
    assert first["group"] == ("holdout" if bucket("h1", "u0") < 2000 else "treatment")
    assert first["config_version"] == decisions[0].trace.config_version
    assert {r["group"] for r in exposures} == {"holdout", "treatment"}
    treated = [r for r in exposures if r["group"] == "treatment"]
    assert treated[0]["served"] == "profile_only"
    slots = treated[0]["exploration"]
    assert slots and all(0.0 < slot["propensity"] <= 1.0 for slot in slots)
    assert clicks[0] == {
        "kind": "click",
        "at": clicks[0]["at"],
        "request_id": "r0",
        "user": user_hash("s3cret", "u0"),
        "group": first["group"],
        "policy": "search",
        "served": decisions[0].trace.served,
        "item": "i3",
    }


class Stuck:
    """A sink whose disk hangs until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.records: list[Any] = []

    def write(self, record: Any) -> None:
        self.release.wait(30)
        self.records.append(record)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_a_stuck_sink_costs_records_never_a_decision(tmp_path: Path) -> None:
    sink = Stuck()
    text = TEXT.replace("user_salt: s3cret}", "user_salt: s3cret, capacity: 5}")
    engine = engine_in(tmp_path, text, exposure_sink=sink)
    for n in range(50):
        engine.decide(RequestContext(user_id=f"u{n}"))  # returns although the sink is stuck
    assert engine.exposures is not None
    assert engine.exposures.dropped >= 50 - 5 - 1
    sink.release.set()
    engine.close()
    assert len(sink.records) + engine.exposures.dropped == 50


def test_a_salt_that_cannot_be_had_is_a_build_error(tmp_path: Path) -> None:
    text = TEXT.replace("user_salt: s3cret", "user_salt_env: NO_SUCH_SALT_VARIABLE")
    with pytest.raises(PolicyValidationError, match="NO_SUCH_SALT_VARIABLE"):
        engine_in(tmp_path, text)


def test_a_reload_that_moves_the_log_writes_the_rest_to_the_new_file(tmp_path: Path) -> None:
    engine = engine_in(tmp_path)
    engine.decide(RequestContext(user_id="u1"))
    assert engine.reload(TEXT.replace("exposures.jsonl", "moved.jsonl")).ok
    engine.decide(RequestContext(user_id="u2"))
    engine.close()
    assert len((tmp_path / "exposures.jsonl").read_text().splitlines()) == 1
    assert len((tmp_path / "moved.jsonl").read_text().splitlines()) == 1


def test_validate_neither_creates_the_log_nor_needs_its_salt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resilience.cli import main

    path = tmp_path / "policies.yaml"
    path.write_text(TEXT.replace("user_salt: s3cret", "user_salt_env: NO_SUCH_SALT_VARIABLE"))
    assert main(["validate", str(path)]) == 0
    assert not (tmp_path / "exposures.jsonl").exists()


def test_the_lift_report_reads_the_engines_own_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resilience.cli import main

    engine = engine_in(tmp_path)
    for n in range(50):
        for visit in range(3):
            decision = engine.decide(RequestContext(user_id=f"u{n}", request_id=f"r{n}-{visit}"))
            if decision.personalized or visit == 0:  # treatment users click more
                engine.record_click(decision.trace, user_id=f"u{n}", item_id="i1")
    engine.close()
    log = str(tmp_path / "exposures.jsonl")
    assert main(["lift", log, log, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["holdout"]["exposures"] + report["treatment"]["exposures"] == 150
    assert report["treatment"]["ctr"] > report["holdout"]["ctr"]
    assert report["conclusive"] is False  # 50 users: too few to conclude, and it says so
    assert main(["lift", str(tmp_path / "missing.jsonl"), log]) == 1
    assert "cannot read the exposure log" in capsys.readouterr().err


class Kept:
    """A sink the application owns."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.closed = False

    def write(self, record: Any) -> None:
        assert not self.closed
        self.records.append(record)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def test_requests_without_an_id_get_one_and_the_applications_sink_is_never_closed(
    tmp_path: Path,
) -> None:
    sink = Kept()
    engine = engine_in(tmp_path, exposure_sink=sink)
    first = engine.decide(RequestContext(user_id="u1"))
    engine.record_click(first.trace, user_id="u1")
    assert len(first.trace.request_id) == 16
    assert engine.reload(TEXT.replace("user_salt: s3cret}", "user_salt: s3cret, capacity: 9}")).ok
    engine.decide(RequestContext(user_id="u2"))
    engine.close()
    assert not sink.closed
    ids = [r["request_id"] for r in sink.records]
    assert len(ids) == 3 and ids[0] == ids[1] != ids[2]


def test_a_forked_child_writes_its_own_records(tmp_path: Path) -> None:
    engine = engine_in(tmp_path)
    busy = threading.Event()

    def traffic() -> None:
        while not busy.is_set():
            engine.decide(RequestContext(user_id="u1", request_id="parent"))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                engine.decide(RequestContext(user_id="u2", request_id="child"))
                engine.close()
                code = 0
            finally:
                os._exit(code)
        status = wait_for_child(pid, 30)
    finally:
        busy.set()
        worker.join()
        engine.close()
    assert status == 0
    lines = (tmp_path / "exposures.jsonl").read_text().splitlines()
    assert any(json.loads(line)["request_id"] == "child" for line in lines)
    assert all(json.loads(line) for line in lines)  # no torn line
