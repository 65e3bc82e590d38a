"""What a run recorded, turned into the result (plain data) and the terminal summary."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from resilience._diversity import category_coverage
from resilience._lift import lift
from resilience._model import Candidate
from resilience._policy import PolicySet
from resilience._readings import Reading
from resilience._steps import source_fields

from ._scenario import Scenario
from ._world import DEPTH

__all__ = ["Records", "format_summary", "summarize"]

_ERROR_RATIO = "resilience_personalization_error_ratio"
_LAG = "resilience_stream_lag_seconds"


class Records:
    """Everything a run keeps: one row per decision (in columns), scenario marks, state
    sampled at bucket ends, and the engine's events with their virtual times."""

    def __init__(self, policy: str, policies: PolicySet) -> None:
        self.policy = policy
        self.policies = policies
        self.t: list[float] = []
        self.latency_ms: list[float] = []
        self.served: list[str] = []
        self.reason: list[str] = []
        self.group: list[str] = []
        self.user: list[str] = []
        self.clicks: list[int] = []
        self.expected: list[float] = []
        self.base: list[float] = []
        self.coverage: list[float] = []
        self.failed: list[bool] = []
        self.ages: list[float] = []
        self.raised: list[float] = []
        self.marks: list[tuple[float, str]] = []
        self.transitions: list[tuple[float, str, str]] = []
        self.samples: list[tuple[float, float | None, float | None]] = []
        self.events: list[tuple[float, str, dict[str, Any]]] = []

    def decision(
        self,
        t: float,
        latency_ms: float,
        served: str,
        reason: str,
        group: str,
        user: str,
        clicks: int,
        expected: float,
        base: float,
        shown: Sequence[Candidate],
        candidates: Sequence[Candidate],
        ages: list[float],
        failed: bool,
    ) -> None:
        self.t.append(t)
        self.latency_ms.append(latency_ms)
        self.served.append(served)
        self.reason.append(reason)
        self.group.append(group)
        self.user.append(user)
        self.clicks.append(clicks)
        self.expected.append(expected)
        self.base.append(base)
        self.coverage.append(category_coverage(shown[:DEPTH], candidates))
        self.ages.extend(ages)
        self.failed.append(failed)

    def failure(self, t: float) -> None:
        """A decide() call that raised (the engine promises it never does)."""
        self.raised.append(t)

    def mark(self, t: float, label: str) -> None:
        self.marks.append((t, label))

    def transition(self, t: float, what: str, kind: str) -> None:
        self.transitions.append((t, what, kind))

    def sample(self, t: float, readings: Iterable[Reading]) -> None:
        error: float | None = None
        lag: float | None = None
        for reading in readings:
            if reading.labels.get("policy") != self.policy:
                continue
            if reading.name == _ERROR_RATIO and error is None:
                error = _finite(reading.value)
            elif reading.name == _LAG and lag is None:
                lag = _finite(reading.value)
        self.samples.append((t, error, lag))


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    if not ordered:
        return None
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _latency(values: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "p50": _round(percentile(ordered, 0.5), 3),
        "p99": _round(percentile(ordered, 0.99), 3),
        "p999": _round(percentile(ordered, 0.999), 3),
        "max": _round(ordered[-1] if ordered else None, 3),
    }


def _shares(values: Sequence[str], keys: Sequence[str]) -> dict[str, float]:
    counts = dict.fromkeys(keys, 0)
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    total = len(values)
    return {k: round(c / total, 4) if total else 0.0 for k, c in counts.items()}


def _ctr(groups: Sequence[str], clicks: Sequence[int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in ("treatment", "holdout"):
        shown = [c for g, c in zip(groups, clicks, strict=True) if g == name]
        out[name] = round(sum(shown) / len(shown), 4) if shown else None
    return out


class _Guardrails:
    """Trips and recoveries of every guard, breaker and flag of the policy, from events."""

    def __init__(self, policies: PolicySet, policy: str, flag_keys: Iterable[str]) -> None:
        declared = policies.policies[policy]
        self.entries: dict[str, dict[str, Any]] = {}
        self._by_label: dict[str, str] = {}
        self._state: dict[str, str] = {}
        for spec in declared.guards:
            self._add(spec.step_id, "guard", f"{policy}.{spec.step_id}", spec.type.name)
        used = sorted({name for spec in declared.steps() for _, name in source_fields(spec.params)})
        for name in used:
            if policies.source_options(name).breaker is not None:
                self._add(name, "breaker", name, "breaker")
        for key in dict.fromkeys([policy, *flag_keys]):
            self._add(key, "flag", f"flag:{key}", "kill switch")
        self.transitions: list[dict[str, Any]] = []

    def _add(self, name: str, kind: str, label: str, what: str) -> None:
        key = name if name not in self.entries else f"{kind}:{name}"
        self.entries[key] = {"kind": kind, "type": what, "tripped": 0, "recovered": 0}
        self._by_label[label] = key
        self._state[key] = "closed"

    def _move(self, label: str, state: str) -> str | None:
        key = self._by_label.get(label)
        if key is None:
            return None
        before = self._state[key]
        entry = self.entries[key]
        if state == "open" and before == "closed":
            entry["tripped"] += 1
        elif state == "closed" and before != "closed":
            entry["recovered"] += 1
        self._state[key] = state
        return key

    def feed(self, t: float, name: str, fields: Mapping[str, Any]) -> None:
        what: str | None = None
        kind = "breaker"
        if name.startswith("resilience.breaker."):
            label = str(fields.get("breaker", ""))
            change = name.removeprefix("resilience.breaker.")
            state = {"opened": "open", "half_opened": "half_open", "closed": "closed"}.get(change)
            if state is None:
                return
            key = self._move(label, state)
            kind = self.entries[key]["kind"] if key is not None else "breaker"
            noun = "guard" if kind == "guard" else "breaker"
            reason = fields.get("reason")
            what = f"{noun} {key or label} {change.replace('_', '-')}" + (
                f" ({reason})" if reason else ""
            )
        elif name in ("resilience.stream_lag.tripped", "resilience.stream_lag.recovered"):
            label = str(fields.get("guard", ""))
            tripped = name.endswith("tripped")
            key = self._move(label, "open" if tripped else "closed")
            kind = "guard"
            detail = fields.get("reason") if tripped else f"lag {fields.get('lag_s')}s"
            what = f"guard {key or label} {'tripped' if tripped else 'recovered'} ({detail})"
        elif name == "resilience.flag.changed":
            key_name = str(fields.get("key", ""))
            new, old = str(fields.get("new", "")), str(fields.get("old", ""))
            label = f"flag:{key_name}"
            if new == "off" and old != "off":
                self._move(label, "open")
            elif old == "off" and new != "off":
                self._move(label, "closed")
            kind = "flag"
            what = f"flag {key_name} {old} -> {new} ({fields.get('reason') or 'no reason'})"
        if what is not None:
            self.transitions.append({"t": round(t, 3), "what": what, "kind": kind})


def summarize(
    records: Records,
    scenario: Scenario,
    *,
    seed: int,
    policies: str,
    scale: float,
    replicates: int,
    wall_s: float,
) -> dict[str, Any]:
    """The result of a run: see ``docs/simulation.md`` for every key."""
    policy_set = records.policies
    policy = policy_set.policies[records.policy]
    tiers = [spec.step_id for spec in policy.chain]
    budget_ms = round(policy.budget * 1e3, 3)
    kill_keys = [e.key for e in scenario.events if e.type == "kill_switch" and e.key is not None]
    guardrails = _Guardrails(policy_set, records.policy, kill_keys)
    for t, name, fields in records.events:
        guardrails.feed(t, name, fields)
    transitions = sorted(
        guardrails.transitions
        + [{"t": round(t, 3), "what": w, "kind": k} for t, w, k in records.transitions],
        key=lambda x: x["t"],
    )
    n = len(records.t)
    decisions = n + len(records.raised)
    failed = sum(records.failed) + len(records.raised)
    estimate = _lift(records, scenario, replicates, seed, policy.holdout is not None)

    phases = []
    for name, start, end in scenario.phase_spans():
        rows = [i for i, t in enumerate(records.t) if start <= t < end]
        phase_failed = sum(records.failed[i] for i in rows) + sum(
            1 for t in records.raised if start <= t < end
        )
        phases.append(
            {
                "name": name,
                "start_s": start,
                "end_s": end,
                "decisions": len(rows) + sum(1 for t in records.raised if start <= t < end),
                "failed": phase_failed,
                "latency_ms": _latency([records.latency_ms[i] for i in rows]),
                "served_by": _shares([records.served[i] for i in rows], tiers),
                "ctr": _ctr([records.group[i] for i in rows], [records.clicks[i] for i in rows]),
                "coverage": _round(
                    sum(records.coverage[i] for i in rows) / len(rows) if rows else None
                ),
                "transitions": [x for x in transitions if start <= x["t"] < end],
            }
        )

    ages = sorted(records.ages)
    thresholds: dict[str, float | None] = {
        "error_rate": None,
        "lag_s": None,
        "budget_ms": budget_ms,
    }
    for spec in policy.guards:
        params = spec.params
        if spec.type.name == "error_rate" and thresholds["error_rate"] is None:
            thresholds["error_rate"] = float(getattr(params, "threshold", math.nan))
        if spec.type.name == "stream_lag" and thresholds["lag_s"] is None:
            thresholds["lag_s"] = float(getattr(params, "max_lag", math.nan))

    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": seed,
        "scale": scale,
        "policies": policies,
        "policy": records.policy,
        "config_version": policy.version,
        "mode": "virtual",
        "budget_ms": budget_ms,
        "duration_s": scenario.duration,
        "wall_s": round(wall_s, 3),
        "world": {
            "users": scenario.world.users,
            "rate": scenario.world.rate,
            "candidates": scenario.world.candidates,
        },
        "decisions": decisions,
        "failed": failed,
        "latency_ms": _latency(records.latency_ms),
        "served_by": _shares(records.served, tiers),
        "reasons": _shares(records.reason, []),
        "guardrails": guardrails.entries,
        "transitions": transitions,
        "diversity": {
            "coverage": _round(sum(records.coverage) / n if n else None),
            "age_p50_days": _round(percentile(ages, 0.5), 2),
            "age_p90_days": _round(percentile(ages, 0.9), 2),
        },
        "ctr": _ctr(records.group, records.clicks),
        "lift": estimate,
        "phases": phases,
        "timeline": _timeline(records, scenario, tiers),
        "thresholds": thresholds,
    }


def _lift(
    records: Records, scenario: Scenario, replicates: int, seed: int, has_holdout: bool
) -> dict[str, Any]:
    """The estimate from observed clicks (``resilience lift``'s own estimator: ITT, user-level
    bootstrap) beside the truth from expected clicks, over the same treatment requests."""
    exposures: list[dict[str, str]] = []
    clicks: list[dict[str, str]] = []
    for i, group in enumerate(records.group):
        if not group:
            continue
        rid = f"r{i}"
        exposures.append({"request_id": rid, "user": records.user[i], "group": group})
        clicks.extend({"request_id": rid} for _ in range(records.clicks[i]))
    treated = [i for i, g in enumerate(records.group) if g == "treatment"]
    served = sum(records.expected[i] for i in treated)
    held = sum(records.base[i] for i in treated)
    true = served / held - 1.0 if held > 0 else None
    empty: dict[str, Any] = {
        "estimate": None,
        "ci_low": None,
        "ci_high": None,
        "true": _round(true),
        "ci_contains_true": False,
        "conclusive": False,
        "reason": "",
    }
    if not has_holdout:
        return {**empty, "reason": "the policy declares no holdout: add one to measure lift"}
    if not exposures:
        return {**empty, "reason": "no exposures"}
    report = lift(
        exposures,
        clicks,
        replicates=replicates,
        seed=seed,
        min_users=scenario.world.holdout_min_users,
    )
    low, high = report.low, report.high
    contains = low is not None and high is not None and true is not None and low <= true <= high
    return {
        "estimate": _round(report.lift),
        "ci_low": _round(low),
        "ci_high": _round(high),
        "true": _round(true),
        "ci_contains_true": contains,
        "conclusive": report.conclusive,
        "reason": report.reason,
        "users": {"treatment": report.treatment.users, "holdout": report.holdout.users},
        "exposures": {
            "treatment": report.treatment.exposures,
            "holdout": report.holdout.exposures,
        },
    }


def _timeline(records: Records, scenario: Scenario, tiers: Sequence[str]) -> dict[str, Any]:
    width = scenario.bucket
    count = max(1, math.ceil(scenario.duration / width - 1e-9))
    rows: list[list[int]] = [[] for _ in range(count)]
    for i, t in enumerate(records.t):
        rows[min(int(t // width), count - 1)].append(i)
    served: dict[str, list[float | None]] = {k: [] for k in tiers}
    p50: list[float | None] = []
    p99: list[float | None] = []
    top: list[float | None] = []
    coverage: list[float | None] = []
    for bucket in rows:
        shares = _shares([records.served[i] for i in bucket], tiers)
        for k in tiers:
            served[k].append(shares.get(k, 0.0) if bucket else None)
        ordered = sorted(records.latency_ms[i] for i in bucket)
        p50.append(_round(percentile(ordered, 0.5), 3))
        p99.append(_round(percentile(ordered, 0.99), 3))
        top.append(_round(ordered[-1], 3) if ordered else None)
        coverage.append(
            _round(sum(records.coverage[i] for i in bucket) / len(bucket)) if bucket else None
        )
    # State sampled at each bucket's end, reported for the bucket it closes.
    error_rate: list[float | None] = [None] * count
    lag: list[float | None] = [None] * count
    for t, error, lag_s in records.samples:
        index = min(max(math.ceil(t / width - 1e-9) - 1, 0), count - 1)
        error_rate[index] = _round(error)
        lag[index] = _round(lag_s, 3)
    return {
        "bucket_s": width,
        "t": [round(i * width, 3) for i in range(count)],
        "served_by": served,
        "latency_ms": {"p50": p50, "p99": p99, "max": top},
        "error_rate": error_rate,
        "lag_s": lag,
        "coverage": coverage,
        "events": [{"t": round(t, 3), "label": label} for t, label in sorted(records.marks)],
    }


# --- the terminal summary ---------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _top_served(served: Mapping[str, float], limit: int = 3) -> str:
    ranked = sorted(((v, k) for k, v in served.items() if v > 0), reverse=True)[:limit]
    return ", ".join(f"{k} {v:.0%}" for v, k in ranked) or "-"


def format_summary(result: Mapping[str, Any]) -> str:
    """The terminal summary of a result: per phase, then guardrails, diversity and lift."""
    lines: list[str] = []
    budget = result["budget_ms"]
    lines.append(
        f"scenario {result['scenario']}, seed {result['seed']}, policy {result['policy']} "
        f"({result['policies']}), {result['mode']} clock"
    )
    lines.append(
        f"{result['duration_s']:g}s simulated in {result['wall_s']:.1f}s: "
        f"{result['decisions']:,} decisions, {result['failed']:,} failed, budget {budget:g}ms"
    )
    lines.append("")
    header = (
        f"{'phase':<16}{'decisions':>10}{'failed':>7}{'p50':>7}{'p99':>7}{'p999':>7}"
        f"{'max':>7}  served"
    )
    lines.append(header + "   (latency in ms)")
    for phase in result["phases"]:
        lat = phase["latency_ms"]
        lines.append(
            f"{phase['name'][:15]:<16}{phase['decisions']:>10,}{phase['failed']:>7}"
            f"{_ms(lat['p50']):>7}{_ms(lat['p99']):>7}{_ms(lat['p999']):>7}{_ms(lat['max']):>7}"
            f"  {_top_served(phase['served_by'])}"
        )
        probes = 0
        for x in phase["transitions"]:
            what = x["what"]
            if "half-opened" in what or "(probe_failed)" in what:
                probes += "(probe_failed)" in what
                continue  # the JSON has every one; the terminal shows trips and recoveries
            lines.append(f"{'':<18}{x['t']:7.1f}s  {what}")
        if probes:
            lines.append(f"{'':<27}(and {probes} failed probe round{'s' if probes > 1 else ''})")
    lat = result["latency_ms"]
    lines.append(
        f"{'all':<16}{result['decisions']:>10,}{result['failed']:>7}{_ms(lat['p50']):>7}"
        f"{_ms(lat['p99']):>7}{_ms(lat['p999']):>7}{_ms(lat['max']):>7}"
        f"  {_top_served(result['served_by'], 5)}"
    )
    p999 = lat["p999"]
    if p999 is not None:
        verdict = "within" if p999 <= budget else "OVER"
        lines.append(f"decision latency p999 {p999:.2f}ms: {verdict} the {budget:g}ms budget")
    lines.append("")
    lines.append("guardrails                 tripped  recovered")
    for name, g in result["guardrails"].items():
        label = f"{name} ({g['type']})"
        lines.append(f"  {label:<25}{g['tripped']:>8}{g['recovered']:>11}")
    lines.append("")
    div = result["diversity"]
    cov = div["coverage"]
    lines.append(
        f"diversity: category coverage of the top 10 {'-' if cov is None else f'{cov:.3f}'}, "
        f"item age p50 {div['age_p50_days']} days, p90 {div['age_p90_days']} days"
    )
    ctr = result["ctr"]
    lines.append(
        "CTR (clicks per search): treatment "
        + ("-" if ctr["treatment"] is None else f"{ctr['treatment']:.4f}")
        + ", holdout "
        + ("-" if ctr["holdout"] is None else f"{ctr['holdout']:.4f}")
    )
    lines.append(_lift_line(result["lift"]))
    return "\n".join(lines) + "\n"


def _lift_line(est: Mapping[str, Any]) -> str:
    true = _pct(est.get("true"))
    if est.get("estimate") is None or est.get("ci_low") is None:
        return f"lift: not measured ({est.get('reason') or 'no estimate'}); true lift {true}"
    held = "holds" if est["ci_contains_true"] else "DOES NOT hold"
    line = (
        f"lift: estimated {_pct(est['estimate'])} (95% CI {_pct(est['ci_low'])} to "
        f"{_pct(est['ci_high'])}), true {true}: the interval {held} the true lift"
    )
    if not est.get("conclusive"):
        line += f" (too small to conclude: {est.get('reason')})"
    return line
