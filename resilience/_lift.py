"""Personalization lift from exposure and click logs (behind ``resilience lift``).

Intention to treat: each exposure counts for the group recorded in the log, whatever was
served. CTR per group is clicks / exposures; the relative lift is
``CTR_treatment / CTR_holdout - 1``. Its 95% interval comes from a user-level bootstrap: users
are resampled with replacement within each group (with their per-user totals of exposures and
clicks) and the ratio is recomputed; the interval is the 2.5th to 97.5th percentile.

Exposures with group ``""`` (anonymous traffic) are left out and counted; clicks whose
``request_id`` matches no exposure are counted as unmatched and not used.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["GroupStats", "LiftInputError", "LiftReport", "lift", "main_lift", "read_log"]

GROUPS = ("holdout", "treatment")


class LiftInputError(ValueError):
    """An input log is missing, empty or malformed; the message is one line for the user."""


@dataclass(frozen=True)
class GroupStats:
    users: int
    exposures: int
    clicks: int
    ctr: float | None  # None without exposures

    def as_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "exposures": self.exposures,
            "clicks": self.clicks,
            "ctr": self.ctr,
        }


@dataclass(frozen=True)
class LiftReport:
    holdout: GroupStats
    treatment: GroupStats
    lift: float | None  # None when CTR_holdout is 0 or a group has no exposures
    low: float | None  # 95% bootstrap percentile interval, None when lift is None
    high: float | None
    conclusive: bool
    reason: str  # "" when conclusive
    anonymous_exposures: int
    unmatched_clicks: int
    replicates: int
    seed: int

    @property
    def users(self) -> int:
        return self.holdout.users + self.treatment.users

    def as_dict(self) -> dict[str, Any]:
        return {
            "holdout": self.holdout.as_dict(),
            "treatment": self.treatment.as_dict(),
            "lift": _finite(self.lift),
            "low": _finite(self.low),
            "high": _finite(self.high),
            "conclusive": self.conclusive,
            "reason": self.reason,
            "anonymous_exposures": self.anonymous_exposures,
            "unmatched_clicks": self.unmatched_clicks,
            "users": self.users,
            "replicates": self.replicates,
            "seed": self.seed,
        }

    def sentence(self) -> str:
        if not self.conclusive or self.lift is None or self.low is None or self.high is None:
            return f"too small to conclude: {self.reason}"
        interval = f"(95% CI {_pct(self.low)} to {_pct(self.high)}), {self.users:,} users"
        if self.low <= 0.0 <= self.high:
            return f"no clear effect: {_pct(self.lift)} {interval}; the interval holds zero"
        verb = "lifts" if self.lift >= 0 else "lowers"
        return (
            f"personalization {verb} CTR by {_pct(self.lift)} "
            f"(95% CI {_pct(self.low)} to {_pct(self.high)}), {self.users:,} users"
        )

    def as_text(self) -> str:
        rows = [f"{'group':<10} {'users':>9} {'exposures':>11} {'clicks':>9} {'CTR':>8}"]
        for name, g in (("holdout", self.holdout), ("treatment", self.treatment)):
            ctr = "-" if g.ctr is None else f"{g.ctr:.2%}"
            rows.append(f"{name:<10} {g.users:>9,} {g.exposures:>11,} {g.clicks:>9,} {ctr:>8}")
        rows.append(
            f"left out: {self.anonymous_exposures:,} anonymous exposures, "
            f"{self.unmatched_clicks:,} unmatched clicks"
        )
        rows.append(self.sentence())
        return "\n".join(rows) + "\n"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _pct(x: float) -> str:
    return f"{x:+.1%}" if math.isfinite(x) else ("+inf%" if x > 0 else "-inf%")


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); tolerates inf."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    a, b = sorted_values[lo], sorted_values[hi]
    frac = pos - lo
    if frac == 0 or a == b:
        return a
    return a + (b - a) * frac


def _bootstrap(
    per_user: dict[str, list[tuple[int, int]]], replicates: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of the lift; each user's (exposures, clicks) is packed into one int
    (exposures shifted above any possible click total) so one C-level ``sum`` gives both."""
    rng = random.Random(seed)
    packed: dict[str, tuple[list[int], int, int]] = {}
    for group in GROUPS:
        users = per_user[group]
        shift = (len(users) * max(c for _, c in users)).bit_length() + 1
        packed[group] = ([(e << shift) | c for e, c in users], shift, len(users))
    mask_h = (1 << packed["holdout"][1]) - 1
    mask_t = (1 << packed["treatment"][1]) - 1
    hold, shift_h, n_h = packed["holdout"]
    treat, shift_t, n_t = packed["treatment"]
    lifts: list[float] = []
    for _ in range(replicates):
        sh = sum(rng.choices(hold, k=n_h))
        st = sum(rng.choices(treat, k=n_t))
        ch, eh = sh & mask_h, sh >> shift_h
        ct, et = st & mask_t, st >> shift_t
        if ch == 0:
            lifts.append(math.inf if ct > 0 else math.nan)
        else:
            lifts.append((ct / et) / (ch / eh) - 1.0)
    finite_or_inf = sorted(x for x in lifts if not math.isnan(x))
    if not finite_or_inf:
        return math.nan, math.nan
    return _percentile(finite_or_inf, 0.025), _percentile(finite_or_inf, 0.975)


def lift(
    exposures: Iterable[Mapping[str, Any]],
    clicks: Iterable[Mapping[str, Any]],
    *,
    replicates: int = 2000,
    seed: int = 0,
    min_users: int = 100,
    min_clicks: int = 20,
) -> LiftReport:
    """Analyse validated records (see :func:`read_log`). Raises ValueError on a group other
    than holdout/treatment/"" or a request_id exposed twice."""
    group_of: dict[str, tuple[str, str]] = {}  # request_id -> (group, user)
    anonymous: set[str] = set()
    anonymous_exposures = 0
    totals: dict[str, dict[str, list[int]]] = {g: {} for g in GROUPS}  # user -> [exp, clk]
    for rec in exposures:
        # One request may be decided by several policies: a click joins its own policy's.
        rid = f"{rec.get('policy', '')}\x00{rec['request_id']}"
        user, group = str(rec["user"]), str(rec["group"])
        if rid in group_of or rid in anonymous:
            raise ValueError(f"request_id {rec['request_id']!r} is exposed twice")
        if group == "":
            anonymous.add(rid)
            anonymous_exposures += 1
            continue
        if group not in totals:
            raise ValueError(f"group {group!r} is not holdout, treatment or empty")
        group_of[rid] = (group, user)
        totals[group].setdefault(user, [0, 0])[0] += 1
    unmatched = 0
    for rec in clicks:
        rid = f"{rec.get('policy', '')}\x00{rec['request_id']}"
        hit = group_of.get(rid)
        if hit is None:
            if rid not in anonymous:  # clicks on anonymous exposures go with them
                unmatched += 1
            continue
        totals[hit[0]][hit[1]][1] += 1

    stats: dict[str, GroupStats] = {}
    for g in GROUPS:
        e = sum(t[0] for t in totals[g].values())
        c = sum(t[1] for t in totals[g].values())
        stats[g] = GroupStats(len(totals[g]), e, c, c / e if e else None)
    hold, treat = stats["holdout"], stats["treatment"]

    reasons: list[str] = []
    for name, gs in (("holdout", hold), ("treatment", treat)):
        if gs.users < min_users:
            reasons.append(f"{name} has {gs.users:,} users (need {min_users:,})")
        if gs.clicks < min_clicks:
            reasons.append(f"{name} has {gs.clicks:,} clicks (need {min_clicks:,})")
    if hold.exposures and hold.ctr == 0:
        reasons.append("holdout CTR is 0, so the relative lift is undefined")

    value = low = high = None
    if hold.ctr and treat.ctr is not None:
        value = treat.ctr / hold.ctr - 1.0
        if replicates > 0:
            per_user = {g: [(t[0], t[1]) for t in totals[g].values()] for g in GROUPS}
            low, high = _bootstrap(per_user, replicates, seed)
            if math.isnan(low):
                low = high = None
    return LiftReport(
        holdout=hold,
        treatment=treat,
        lift=value,
        low=low,
        high=high,
        conclusive=not reasons and low is not None,
        reason="; ".join(reasons) if reasons else ("" if low is not None else "no interval"),
        anonymous_exposures=anonymous_exposures,
        unmatched_clicks=unmatched,
        replicates=replicates,
        seed=seed,
    )


def read_log(path: str, kind: str, *, may_be_empty: bool = False) -> list[dict[str, Any]]:
    """Read one JSON Lines log of ``kind`` ("exposure" or "click"); raises LiftInputError
    with a one-line ``file:line: what; how to fix`` message."""
    what = "exposure log" if kind == "exposure" else "click log"
    fix = (
        f'write one JSON object per line: {{"kind": "{kind}", '
        '"request_id": ..., "user": ..., "group": ...}'
    )
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise LiftInputError(
            f"{path}: cannot read the {what} ({exc.strerror or exc}); check the path"
        ) from None
    except UnicodeDecodeError:
        raise LiftInputError(f"{path}: not UTF-8 text; pass the {what} as JSON Lines") from None
    records: list[dict[str, Any]] = []
    others = 0
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LiftInputError(f"{where}: not valid JSON ({exc.msg}); {fix}") from None
        if not isinstance(rec, dict):
            raise LiftInputError(
                f"{where}: expected a JSON object, got {type(rec).__name__}; {fix}"
            )
        for field in ("kind", "request_id", "user", "group"):
            if not isinstance(rec.get(field), str):
                problem = "is missing" if field not in rec else "must be a string"
                raise LiftInputError(f"{where}: field {field!r} {problem}; {fix}")
        if rec["kind"] != kind:
            if rec["kind"] in ("exposure", "click"):
                # The engine's exposure log holds both kinds: one file may be passed twice.
                others += 1
                continue
            raise LiftInputError(
                f"{where}: kind is {rec['kind']!r}, expected {kind!r}; pass the {what} here"
            )
        if not rec["request_id"]:
            raise LiftInputError(f"{where}: request_id is empty; {fix}")
        if kind == "exposure":
            if rec["group"] not in ("holdout", "treatment", ""):
                raise LiftInputError(
                    f'{where}: group {rec["group"]!r} is not "holdout", "treatment" or ""; '
                    "fix the group or drop the record"
                )
            first = seen.setdefault(f"{rec.get('policy', '')}\x00{rec['request_id']}", n)
            if first != n:
                raise LiftInputError(
                    f"{where}: request_id {rec['request_id']!r} already exposed on line "
                    f"{first}; keep one exposure per request"
                )
        records.append(rec)
    if not records and may_be_empty and others:
        return records  # a log with no clicks yet: zero clicks, reported as too small
    if not records:
        if others:
            raise LiftInputError(
                f"{path}:1: the {what} holds no {kind} records, only {others} of the other "
                "kind; were EXPOSURES and CLICKS swapped?"
            )
        raise LiftInputError(f"{path}:1: the {what} is empty; {fix}")
    return records


def main_lift(
    exposures_path: str,
    clicks_path: str,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    *,
    replicates: int = 2000,
    seed: int = 0,
) -> int:
    """``resilience lift EXPOSURES CLICKS [--json]``: 0 on a report (conclusive or not), 1 on
    bad input, with one line on ``err``."""
    try:
        exposures = read_log(exposures_path, "exposure")
        clicks = read_log(clicks_path, "click", may_be_empty=True)
        report = lift(exposures, clicks, replicates=replicates, seed=seed)
    except (LiftInputError, ValueError) as exc:
        err.write(f"error: {exc}\n")
        return 1
    if as_json:
        out.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        out.write(report.as_text())
    return 0
