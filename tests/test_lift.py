"""Lift analysis: bootstrap coverage, guards against small samples, input errors."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from resilience._lift import lift, main_lift


def _exp(rid: str, user: str, group: str) -> dict[str, Any]:
    return {"kind": "exposure", "request_id": rid, "user": user, "group": group}


def _clk(rid: str, user: str, group: str) -> dict[str, Any]:
    return {"kind": "click", "request_id": rid, "user": user, "group": group}


def _synthetic(
    rng: random.Random, users: int, true_lift: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """1-8 requests per user, per-user CTR ~ Beta(2, 18); treatment CTR x (1 + true_lift)."""
    exposures: list[dict[str, Any]] = []
    clicks: list[dict[str, Any]] = []
    for group, factor in (("holdout", 1.0), ("treatment", 1.0 + true_lift)):
        for u in range(users):
            user = f"{group[0]}{u}"
            p = min(1.0, rng.betavariate(2, 18) * factor)
            for r in range(rng.randint(1, 8)):
                rid = f"{user}-{r}"
                exposures.append(_exp(rid, user, group))
                if rng.random() < p:
                    clicks.append(_clk(rid, user, group))
    return exposures, clicks


def test_interval_covers_true_lift_about_95_percent() -> None:
    rng = random.Random(20240601)
    true_lift = 0.2
    runs = 100
    covered = 0
    for i in range(runs):
        exposures, clicks = _synthetic(rng, 300, true_lift)
        report = lift(exposures, clicks, replicates=300, seed=i)
        assert report.conclusive, report.reason
        assert report.low is not None
        assert report.high is not None
        covered += report.low <= true_lift <= report.high
    assert 90 <= covered <= 99, covered


def test_point_estimate_and_counts() -> None:
    exposures = [_exp(f"h{i}", f"uh{i % 4}", "holdout") for i in range(10)]
    exposures += [_exp(f"t{i}", f"ut{i % 5}", "treatment") for i in range(10)]
    exposures += [_exp("a1", "", ""), _exp("a2", "", "")]
    clicks = [_clk("h0", "uh0", "holdout"), _clk("h1", "uh1", "holdout")]
    clicks += [_clk(f"t{i}", f"ut{i}", "treatment") for i in range(3)]
    clicks += [_clk("a1", "", ""), _clk("nope", "x", "holdout"), _clk("gone", "y", "treatment")]
    r = lift(exposures, clicks, replicates=50)
    assert (r.holdout.users, r.holdout.exposures, r.holdout.clicks) == (4, 10, 2)
    assert (r.treatment.users, r.treatment.exposures, r.treatment.clicks) == (5, 10, 3)
    assert r.lift == pytest.approx(0.5)
    assert r.anonymous_exposures == 2
    assert r.unmatched_clicks == 2
    assert not r.conclusive
    assert "holdout has 4 users (need 100)" in r.reason
    assert "clicks (need 20)" in r.reason
    assert r.sentence().startswith("too small to conclude: ")
    assert r.as_dict()["anonymous_exposures"] == 2


def test_zero_holdout_ctr_is_not_conclusive() -> None:
    exposures = [_exp(f"h{i}", f"uh{i}", "holdout") for i in range(200)]
    exposures += [_exp(f"t{i}", f"ut{i}", "treatment") for i in range(200)]
    clicks = [_clk(f"t{i}", f"ut{i}", "treatment") for i in range(50)]
    r = lift(exposures, clicks, replicates=50, min_clicks=0)
    assert not r.conclusive
    assert "holdout CTR is 0" in r.reason
    assert r.lift is None
    assert r.low is None
    assert r.high is None
    json.dumps(r.as_dict(), allow_nan=False)


def test_conclusive_sentence_and_seeded() -> None:
    exposures, clicks = _synthetic(random.Random(7), 400, 0.5)
    a = lift(exposures, clicks, replicates=200, seed=3)
    b = lift(exposures, clicks, replicates=200, seed=3)
    assert a == b
    assert a.conclusive
    assert a.reason == ""
    assert a.sentence().startswith("personalization lifts CTR by +")
    assert "800 users" in a.sentence()


def _write(path: Path, records: list[Any], extra: str = "") -> str:
    path.write_text("".join(json.dumps(r) + "\n\n" for r in records) + extra, encoding="utf-8")
    return str(path)


def _run(exp: str, clk: str, as_json: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main_lift(exp, clk, as_json, out, err, replicates=50)
    return code, out.getvalue(), err.getvalue()


def test_json_output_parses(tmp_path: Path) -> None:
    exposures, clicks = _synthetic(random.Random(1), 150, 0.2)
    exposures.append(_exp("anon", "", ""))
    exp = _write(tmp_path / "e.jsonl", exposures)
    clk = _write(tmp_path / "c.jsonl", [*clicks, _clk("zzz", "u", "holdout")])
    code, out, err = _run(exp, clk, as_json=True)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["holdout"]["users"] == 150
    assert data["anonymous_exposures"] == 1
    assert data["unmatched_clicks"] == 1
    assert isinstance(data["conclusive"], bool)
    code, text, _ = _run(exp, clk)
    assert code == 0
    assert "holdout" in text
    assert "treatment" in text
    assert "95% CI" in text or "too small to conclude" in text


@pytest.mark.parametrize(
    ("content", "which", "line", "fragment"),
    [
        ("", "e", 1, "is empty"),
        ("\n  \n", "c", 1, "is empty"),
        ("{not json\n", "e", 1, "not valid JSON"),
        ("[1, 2]\n", "c", 1, "expected a JSON object"),
        ('\n{"kind": "exposure", "request_id": "r", "group": "holdout"}\n', "e", 2, "'user'"),
        ('{"kind": "exposure", "request_id": 3, "user": "u", "group": ""}\n', "e", 1, "string"),
        (
            '{"kind": "click", "request_id": "r", "user": "u", "group": "holdout"}\n',
            "e",
            1,
            "swapped",
        ),
        (
            '{"kind": "exposure", "request_id": "r", "user": "u", "group": "control"}\n',
            "e",
            1,
            "group 'control'",
        ),
        (
            '{"kind": "exposure", "request_id": "r", "user": "u", "group": ""}\n'
            '{"kind": "exposure", "request_id": "r", "user": "u", "group": ""}\n',
            "e",
            2,
            "already exposed on line 1",
        ),
    ],
)
def test_bad_files_exit_1_with_file_and_line(
    tmp_path: Path, content: str, which: str, line: int, fragment: str
) -> None:
    good_e = _write(tmp_path / "good_e.jsonl", [_exp("r", "u", "holdout")])
    good_c = _write(tmp_path / "good_c.jsonl", [_clk("r", "u", "holdout")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    exp, clk = (str(bad), good_c) if which == "e" else (good_e, str(bad))
    code, out, err = _run(exp, clk)
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: {bad}:{line}: ")
    assert fragment in err
    assert "; " in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_missing_file_exit_1(tmp_path: Path) -> None:
    code, _, err = _run(str(tmp_path / "nope.jsonl"), str(tmp_path / "nope2.jsonl"))
    assert code == 1
    assert "nope.jsonl: cannot read" in err
    assert "check the path" in err
