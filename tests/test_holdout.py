"""Deterministic holdout assignment: the documented hash, its statistics and the options."""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess

import pytest
from pydantic import ValidationError

from resilience import Affinities, Engine, Reason, RequestContext, load_policies
from resilience._holdout import BUCKETS, TEST_VECTORS, HoldoutOptions, bucket, in_holdout
from resilience.testing import RecordingSink

from .conftest import ROOT

IDS = [f"user-{i}" for i in range(100_000)]


@pytest.fixture(scope="module")
def buckets_a() -> list[int]:
    return [bucket("salt-a", user) for user in IDS]


@pytest.fixture(scope="module")
def buckets_b() -> list[int]:
    return [bucket("salt-b", user) for user in IDS]


def within_sigmas(count: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count / trials - p) <= sigmas * math.sqrt(p * (1 - p) / trials)


# -- the vectors, against computations that do not use resilience's code -------------------------


def test_there_are_enough_vectors_with_unicode_and_empty_ids() -> None:
    assert len(TEST_VECTORS) >= 8
    ids = [user for _, user, _ in TEST_VECTORS]
    assert any(not user.isascii() for user in ids)
    assert "" in ids and " " in ids
    assert all(0 <= expected < BUCKETS for _, _, expected in TEST_VECTORS)


@pytest.mark.parametrize(("salt", "user", "expected"), TEST_VECTORS)
def test_vector_matches_the_function(salt: str, user: str, expected: int) -> None:
    assert bucket(salt, user) == expected


@pytest.mark.parametrize(("salt", "user", "expected"), TEST_VECTORS)
def test_vector_matches_a_hexdigest_computation(salt: str, user: str, expected: int) -> None:
    # Written out as another language would: hex of the digest, first 16 hex digits, base 16.
    key = (salt + ":" + user).encode("utf-8")
    assert int(hashlib.sha256(key).hexdigest()[:16], 16) % 10000 == expected


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="sha256sum is not installed")
def test_vectors_match_sha256sum() -> None:
    for salt, user, expected in TEST_VECTORS:
        out = subprocess.run(
            ["sha256sum"],  # an outside tool, from PATH on purpose
            input=f"{salt}:{user}".encode(),
            capture_output=True,
            check=True,
        ).stdout
        assert int(out[:16], 16) % 10000 == expected, (salt, user)


# -- statistics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [1.0, 5.0, 12.34, 50.0])
def test_the_declared_share_is_held_out(percent: float, buckets_a: list[int]) -> None:
    threshold = round(percent * 100)
    held = sum(b < threshold for b in buckets_a)
    assert within_sigmas(held, len(IDS), percent / 100)


def test_in_holdout_follows_the_buckets(buckets_a: list[int]) -> None:
    options = HoldoutOptions(salt="salt-a", percent=5.0)
    held = [in_holdout(options, user) for user in IDS[:20_000]]
    assert held == [b < 500 for b in buckets_a[:20_000]]
    assert within_sigmas(sum(held), len(held), 0.05)


def test_deciles_are_uniform(buckets_a: list[int]) -> None:
    counts = [0] * 10
    for b in buckets_a:
        counts[b // 1000] += 1
    expected = len(IDS) / 10
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 27.88  # 9 degrees of freedom, p = 0.001
    assert all(within_sigmas(c, len(IDS), 0.1) for c in counts)


def test_all_buckets_are_uniform(buckets_a: list[int]) -> None:
    counts = [0] * BUCKETS
    for b in buckets_a:
        counts[b] += 1
    expected = len(IDS) / BUCKETS
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    dof = BUCKETS - 1
    assert abs(chi2 - dof) < 5 * math.sqrt(2 * dof)


# -- stability -------------------------------------------------------------------------------------


def test_same_inputs_same_bucket(buckets_a: list[int]) -> None:
    assert [bucket("salt-a", user) for user in IDS[:1000]] == buckets_a[:1000]
    options = HoldoutOptions(salt="salt-a", percent=50.0)
    assert all(in_holdout(options, u) == in_holdout(options, u) for u in IDS[:1000])


def test_raising_the_percent_only_adds_users() -> None:
    small = HoldoutOptions(salt="salt-a", percent=2.0)
    large = HoldoutOptions(salt="salt-a", percent=7.5)
    held_small = {u for u in IDS[:20_000] if in_holdout(small, u)}
    held_large = {u for u in IDS[:20_000] if in_holdout(large, u)}
    assert held_small < held_large


def test_a_new_salt_reassigns_independently(buckets_a: list[int], buckets_b: list[int]) -> None:
    # Same bucket under both salts: 1 in 10,000 by chance.
    same = sum(a == b for a, b in zip(buckets_a, buckets_b, strict=True))
    assert within_sigmas(same, len(IDS), 1 / BUCKETS)
    # Of the users held out under salt a, only ~5 percent stay held out under salt b.
    held_a = [b for a, b in zip(buckets_a, buckets_b, strict=True) if a < 500]
    assert within_sigmas(sum(b < 500 for b in held_a), len(held_a), 0.05)
    # And the held-out group under b has the same size: ~5 percent of everyone.
    assert within_sigmas(sum(b < 500 for b in buckets_b), len(IDS), 0.05)


# -- anonymous traffic -----------------------------------------------------------------------------


def test_anonymous_requests_are_never_held_out() -> None:
    # A salt under which the empty id's own bucket would be held out at 50 percent.
    salt = next(s for s in (f"anon-{i}" for i in range(100)) if bucket(s, "") < 5000)
    options = HoldoutOptions(salt=salt, percent=50.0)
    assert not in_holdout(options, None)
    assert not in_holdout(options, "")


def test_nobody_is_held_out_at_zero_percent() -> None:
    options = HoldoutOptions(salt="salt-a", percent=0)
    assert not any(in_holdout(options, user) for user in IDS[:10_000])


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0, 0.01, 0.07, 5, 12.34, 33.33, 49.99, 50])
def test_percents_in_steps_of_a_bucket_are_accepted(percent: float) -> None:
    options = HoldoutOptions(salt="s", percent=percent)
    assert options.buckets_held_out == round(percent * 100)


def test_defaults() -> None:
    options = HoldoutOptions(salt="s")
    assert options.percent == 5.0
    assert options.buckets_held_out == 500
    assert HoldoutOptions.model_fields["salt"].description == (
        "Permanent salt of the holdout (no ':'); changing it reassigns every user"
    )


@pytest.mark.parametrize("percent", [0.005, 5.005, 12.345, 1 / 3])
def test_percents_between_buckets_are_refused(percent: float) -> None:
    with pytest.raises(ValidationError, match=r"not a whole multiple of 0\.01.*; round it"):
        HoldoutOptions(salt="s", percent=percent)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({}, "salt"),
        ({"salt": ""}, "at least 1 character"),
        ({"salt": "s", "percent": -0.01}, "greater than or equal to 0"),
        ({"salt": "s", "percent": 50.01}, "less than or equal to 50"),
        ({"salt": "s", "percent": "5"}, "valid number"),
        ({"salt": 7}, "valid string"),
        ({"salt": "s", "pct": 5}, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_refused(settings: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        HoldoutOptions.model_validate(settings)


def test_options_are_frozen() -> None:
    options = HoldoutOptions(salt="s")
    with pytest.raises(ValidationError, match="frozen"):
        options.percent = 10.0  # type: ignore[misc]


def test_a_salt_with_a_colon_is_refused_and_odd_ids_still_have_a_bucket() -> None:
    with pytest.raises(ValidationError, match="pattern"):
        HoldoutOptions(salt="a:b")
    assert 0 <= bucket("s", "\udc80") < 10_000  # a lone surrogate, as JSON can carry


ENGINE_POLICY = """
version: 1
default_policy: search
settings:
  monitoring: {sample_rate: 1.0}
policies:
  search:
    holdout: {salt: search-holdout-1, percent: 10}
    guards: [{type: error_rate, minimum_requests: 1}]
    chain:
      - type: profile_only
        source: profile_store
      - unpersonalized
"""


def _engine(text: str = ENGINE_POLICY) -> Engine:
    profiles = {f"u{n}": Affinities({"books": 1.0}) for n in range(2000)}
    return Engine(load_policies(text), {"profile_store": profiles.get}, events=RecordingSink())


def test_holdout_users_get_the_terminal_tier_before_any_guard_and_are_marked() -> None:
    options = HoldoutOptions(salt="search-holdout-1", percent=10)
    with _engine() as engine:
        held = [f"u{n}" for n in range(2000) if in_holdout(options, f"u{n}")]
        treated = [f"u{n}" for n in range(2000) if not in_holdout(options, f"u{n}")]
        assert 150 < len(held) < 250
        trace = engine.decide(RequestContext(user_id=held[0])).trace
        assert (trace.reason, trace.group, trace.served) == (
            Reason.HOLDOUT,
            "holdout",
            "unpersonalized",
        )
        assert trace.steps == (trace.steps[0],) and trace.steps[0].step == "unpersonalized"
        treated_trace = engine.decide(RequestContext(user_id=treated[0])).trace
        assert (treated_trace.group, treated_trace.reason) == ("treatment", Reason.PRIMARY)
        anonymous = engine.decide(RequestContext()).trace
        assert anonymous.group == ""
        # Intention to treat: a treatment user switched off stays in the treatment group.
        engine.flags.set("search", "off", reason="test")
        off = engine.decide(RequestContext(user_id=treated[0])).trace
        assert (off.group, off.reason) == ("treatment", Reason.SWITCHED_OFF)
        assert str(trace).endswith("[holdout]") or "[holdout]" in str(trace).splitlines()[0]


def test_groups_are_stable_across_reloads_unless_the_salt_changes() -> None:
    users = [RequestContext(user_id=f"u{n}") for n in range(300)]
    with _engine() as engine:
        before = [engine.decide(r).trace.group for r in users]
        assert engine.reload(ENGINE_POLICY.replace("minimum_requests: 1", "minimum_requests: 2")).ok
        assert [engine.decide(r).trace.group for r in users] == before
        assert engine.reload(ENGINE_POLICY.replace("search-holdout-1", "search-holdout-2")).ok
        assert [engine.decide(r).trace.group for r in users] != before


def test_diversity_and_ctr_aggregates_carry_the_group() -> None:
    with _engine() as engine:
        for n in range(400):
            decision = engine.decide(RequestContext(user_id=f"u{n}"))
            engine.record_click(decision.trace)
        rows = {(row.served, row.group): row for row in engine.monitor.snapshot()}
        assert set(rows) == {("profile_only", "treatment"), ("unpersonalized", "holdout")}
        assert (
            rows[("unpersonalized", "holdout")].clicks
            == rows[("unpersonalized", "holdout")].impressions
        )


def test_the_published_vectors_are_in_the_docs() -> None:
    text = (ROOT / "docs" / "policies.md").read_text()
    for salt, user_id, expected in TEST_VECTORS:
        row = f"| `{salt}` | `{user_id.encode('unicode_escape').decode()}` | {expected} |"
        assert row in text, row
