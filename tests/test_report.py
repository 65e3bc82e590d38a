"""The HTML report of ``resilience simulate --report DIR``: a synthetic result (the contract of
``docs/simulation.md``: several tiers, nulls, events, hostile text) rendered and read back with
``html.parser``: every plot drawn, the thresholds and events on them, nothing loaded from
outside the page, every text from the result escaped, and degenerate timelines rendered."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.simulation._report import (
    Chart,
    Marker,
    Series,
    Threshold,
    render_chart,
    render_html,
    render_report,
)

PLOTS = ("plot-served-by", "plot-latency", "plot-error-rate", "plot-lag", "plot-coverage")
TIERS = ("session", "stale_cache", "profile_only", 'seg"ment', "unpersonalized")
HOSTILE = "<script>alert(1)</script>"
N = 24
GAP = (10, 11)  # buckets without a single search


def _series(values: list[float]) -> list[float | None]:
    return [None if i in GAP else v for i, v in enumerate(values)]


def make_result() -> dict[str, Any]:
    """A result per the contract, 2 minutes in 5 s buckets, with a gap, nulls and events."""
    t = [i * 5.0 for i in range(N)]
    served: dict[str, list[float | None]] = {}
    for k, tier in enumerate(TIERS):
        served[tier] = _series([(0.4 if k == 0 else 0.15) for _ in range(N)])
    p50 = _series([2.0 + (i % 3) * 0.5 for i in range(N)])
    p99 = _series([8.0 + (i % 5) for i in range(N)])
    top = _series([12.0 + (i % 4) for i in range(N)])
    top[5] = 250.0  # one slow outlier, far above the budget
    error: list[float | None] = [0.0] * N
    for i in range(12, 17):
        error[i] = 0.04 * (i - 11)
    error[3] = None  # the guard not read in that bucket
    lag: list[float | None] = [0.3] * N
    for i in range(15, 19):
        lag[i] = 15.0 * (i - 14)
    lag[0] = None
    coverage = _series([0.7 + 0.01 * (i % 3) for i in range(N)])
    phases = [
        {
            "name": name,
            "start_s": start,
            "end_s": end,
            "decisions": 200,
            "failed": 0,
            "latency_ms": {"p50": 2.5, "p99": 9.5, "p999": 12.0, "max": 250.0 if start else 14.0},
            "served_by": dict.fromkeys(TIERS, 0.2),
            "ctr": {"treatment": 0.5, "holdout": 0.3},
            "coverage": 0.71,
            "transitions": [],
        }
        for name, start, end in (("warm-up", 0.0, 40.0), (HOSTILE, 40.0, 120.0))
    ]
    return {
        "scenario": f"nightly {HOSTILE}",
        "description": "a <b>bold</b> claim & more",
        "seed": 7,
        "policies": "<bundled>",
        "policy": "search",
        "mode": "virtual",
        "budget_ms": 30.0,
        "duration_s": 120.0,
        "wall_s": 1.5,
        "decisions": 2345,
        "failed": 0,
        "latency_ms": {"p50": 2.51, "p99": 9.87, "p999": 13.4, "max": 250.0},
        "served_by": dict(zip(TIERS, (0.4, 0.15, 0.15, 0.15, 0.15), strict=True)),
        "guardrails": {
            "error_rate": {"kind": "guard", "type": "error_rate", "tripped": 1, "recovered": 1},
            "session_store": {"kind": "breaker", "type": "breaker", "tripped": 2, "recovered": 1},
            "search": {"kind": "flag", "type": "kill switch", "tripped": 0, "recovered": 0},
        },
        "transitions": [
            {"t": 61.2, "what": "breaker session_store opened (failure_rate)", "kind": "breaker"},
            {"t": 66.3, "what": "breaker session_store half-opened", "kind": "breaker"},
            {"t": 90.0, "what": "reload refused (<img src=x onerror=alert(1)>)", "kind": "reload"},
        ],
        "diversity": {"coverage": 0.712, "age_p50_days": 40.0, "age_p90_days": 127.3},
        "ctr": {"treatment": 0.518, "holdout": 0.2899},
        "lift": {
            "estimate": 0.787,
            "ci_low": 0.591,
            "ci_high": 1.017,
            "true": 0.827,
            "ci_contains_true": True,
            "conclusive": True,
            "reason": "",
            "users": {"treatment": 2710, "holdout": 290},
            "exposures": {"treatment": 11063, "holdout": 1103},
        },
        "phases": phases,
        "timeline": {
            "bucket_s": 5.0,
            "t": t,
            "served_by": served,
            "latency_ms": {"p50": p50, "p99": p99, "max": top},
            "error_rate": error,
            "lag_s": lag,
            "coverage": coverage,
            "events": [
                {"t": 20.0, "label": "session store slow"},
                {"t": 60.0, "label": 'all stores <down> & "out"'},
                {"t": 95.0, "label": HOSTILE},
            ],
        },
        "thresholds": {"error_rate": 0.05, "lag_s": 30.0, "budget_ms": 30.0},
    }


# --- reading the page back ----------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    plot: str | None  # the id of the <svg> it is in, if any
    text: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Page(HTMLParser):
    """The page as a flat list of elements, each knowing its plot; unbalanced tags recorded."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []
        self.errors: list[str] = []
        self.feed(text)
        self.close()

    def _open(self, tag: str, attrs: list[tuple[str, str | None]]) -> Element:
        values = {k: v or "" for k, v in attrs}
        plot = values.get("id") if tag == "svg" else (self.stack[-1].plot if self.stack else None)
        element = Element(tag, values, plot)
        self.elements.append(element)
        return element

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = self._open(tag, attrs)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1].tag != tag:
            open_tag = self.stack[-1].tag if self.stack else None
            self.errors.append(f"</{tag}> closes <{open_tag}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        for element in self.stack:
            element.text.append(data)

    def find(
        self, tag: str | None = None, *, plot: str | None = None, cls: str = ""
    ) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag)
            and (plot is None or e.plot == plot)
            and (not cls or cls in e.classes)
        ]

    def by_id(self, ident: str) -> Element:
        (element,) = [e for e in self.elements if e.attrs.get("id") == ident]
        return element

    def root(self) -> Element:
        return next(e for e in self.elements if e.tag == "html")


GEOMETRY = ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height", "points", "d")


def geometry_is_finite(page: Page) -> bool:
    """No coordinate of any drawn element is NaN or infinite."""
    return not any(
        re.search(r"nan|inf", e.attrs[name], re.I)
        for e in page.elements
        for name in GEOMETRY
        if name in e.attrs
    )


def text_of(element: Element) -> str:
    """The text in an element, its pieces and runs of white space (thin spaces too) as one
    space."""
    return " ".join(" ".join(element.text).split())


def drawn_points(page: Page, plot: str) -> int:
    """How many points the data of ``plot`` draws: polyline vertices and path vertices."""
    count = 0
    for e in page.find("polyline", plot=plot):
        count += len(e.attrs["points"].split())
    for e in page.find("path", plot=plot, cls="series"):
        count += len(re.findall(r"[ML]", e.attrs["d"]))
    return count


@pytest.fixture(scope="module")
def html_text() -> str:
    return render_html(make_result())


@pytest.fixture(scope="module")
def page(html_text: str) -> Page:
    return Page(html_text)


# --- the file -------------------------------------------------------------------------------------


def test_render_report_writes_index_html_in_a_new_directory(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "report"
    path = render_report(make_result(), directory)
    assert path == directory / "index.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert 'id="plot-latency"' in text
    # again, over the old one: replaced whole, nothing left beside it
    render_report(make_result(), directory)
    assert sorted(p.name for p in directory.iterdir()) == ["index.html"]


def test_the_page_parses_with_every_tag_closed(page: Page) -> None:
    assert page.errors == []
    assert page.stack == []
    assert [e.tag for e in page.elements[:3]] == ["html", "head", "meta"]


# --- plots ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("plot", PLOTS)
def test_every_plot_is_an_inline_svg_with_data_drawn(page: Page, plot: str) -> None:
    svg = page.by_id(plot)
    assert svg.tag == "svg"
    assert svg.attrs["role"] == "img"
    (title,) = page.find("title", plot=plot)[:1]
    assert text_of(title)  # an accessible name
    assert drawn_points(page, plot) >= 10, plot


def test_the_share_served_is_stacked_one_layer_per_tier(page: Page) -> None:
    layers = page.find("path", plot="plot-served-by", cls="area")
    assert [e.attrs["data-series"] for e in layers] == list(TIERS)  # a quote in a name survives
    # the gap: every layer breaks there, into two pieces
    for layer in layers:
        assert layer.attrs["d"].count("M") == 2


def test_a_null_breaks_a_line(page: Page) -> None:
    (p50,) = [e for e in page.find("g", plot="plot-latency") if e.attrs.get("data-series") == "p50"]
    polylines = [e for e in page.elements if e.tag == "polyline" and e.plot == "plot-latency"]
    assert p50 and len(polylines) == 3 * 2  # p50, p99, max: each split by the gap
    (error,) = page.find("g", plot="plot-error-rate", cls="series")
    assert error.attrs["data-series"] == "error rate"
    assert len(page.find("polyline", plot="plot-error-rate")) == 2  # the null in bucket 3


@pytest.mark.parametrize(
    ("plot", "value", "label"),
    [
        ("plot-latency", "30", "budget 30 ms"),
        ("plot-error-rate", "0.05", "error_rate guard 5%"),
        ("plot-lag", "30", "stream_lag guard 30 s"),
    ],
)
def test_the_threshold_lines_are_drawn(page: Page, plot: str, value: str, label: str) -> None:
    (line,) = page.find("line", plot=plot, cls="threshold")
    assert line.attrs["data-value"] == value
    assert line.attrs["stroke-dasharray"]
    labels = [text_of(e) for e in page.find("text", plot=plot, cls="threshold-label")]
    assert labels == [label]
    # inside the plot: between the top and the bottom gridlines
    grid = [float(e.attrs["y1"]) for e in page.find("line", plot=plot) if "x1" in e.attrs]
    assert min(grid) <= float(line.attrs["y1"]) <= max(grid)


def test_a_threshold_sits_where_the_axis_says(page: Page) -> None:
    """On the lag plot 30 s is drawn at the height the axis' ticks put 30 s."""
    ticks = [
        (float(text_of(e).removesuffix(" s")), float(e.attrs["y"]) - 4)
        for e in page.find("text", plot="plot-lag", cls="tick")
    ]
    (v0, y0), (v1, y1) = ticks[0], ticks[-1]
    assert v0 == 0 and v1 > 30
    (line,) = page.find("line", plot="plot-lag", cls="threshold")
    assert float(line.attrs["y1"]) == pytest.approx(y0 + (y1 - y0) * 30 / v1, abs=0.2)


def test_no_threshold_line_where_the_policy_has_no_such_guard() -> None:
    result = make_result()
    result["thresholds"] = {"error_rate": None, "lag_s": None, "budget_ms": 30.0}
    page = Page(render_html(result))
    assert page.find("line", plot="plot-error-rate", cls="threshold") == []
    assert page.find("line", plot="plot-lag", cls="threshold") == []
    assert len(page.find("line", plot="plot-latency", cls="threshold")) == 1


@pytest.mark.parametrize("plot", PLOTS)
def test_the_scenario_events_are_marked_on_every_plot(page: Page, plot: str) -> None:
    events = page.find("g", plot=plot, cls="event")
    assert len(events) == 3
    labels = [text_of(e) for e in page.find("text", plot=plot, cls="event-label")]
    assert "session store slow" in labels
    assert 'all stores <down> & "out"' in labels
    assert HOSTILE in labels  # as text: escaped in the source
    lines = [e for e in page.find("line", plot=plot) if e.attrs.get("stroke-dasharray") == "3 3"]
    xs = sorted(float(e.attrs["x1"]) for e in lines)
    assert len(xs) == 3 and xs[0] < xs[1] < xs[2]


def test_a_latency_outlier_is_drawn_off_scale_not_squashing_the_plot(page: Page) -> None:
    ticks = [text_of(e) for e in page.find("text", plot="plot-latency", cls="tick")]
    assert ticks[-1] == "60 ms"  # twice the budget, not 250
    assert page.find("path", plot="plot-latency", cls="off-scale")
    assert "max above the scale (peak 250 ms)" in text_of(page.by_id("plot-latency"))


# --- self-contained, escaped ----------------------------------------------------------------------


def test_nothing_is_loaded_from_outside_the_page(html_text: str, page: Page) -> None:
    assert not re.search(r"https?:", html_text, re.I)
    assert not re.search(
        r"""(src|href|xlink:href|action)\s*=\s*["']?\s*(//|[a-z]+:)""", html_text, re.I
    )
    assert not re.search(r"""url\(\s*["']?\s*(?!#)""", html_text, re.I)
    assert "@import" not in html_text
    assert page.find("script") == []
    assert page.find("link") == []
    assert page.find("img") == []
    assert page.find("iframe") == []
    assert [e.attrs for e in page.elements if "src" in e.attrs or "href" in e.attrs] == []


def test_text_from_the_result_is_escaped(html_text: str, page: Page) -> None:
    assert "<script" not in html_text
    assert "<img" not in html_text
    assert "<b>bold</b>" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    # ... and shown as written, not dropped
    assert text_of(page.find("h1")[0]) == f"Scenario nightly {HOSTILE}"
    phase_names = [text_of(e) for e in page.find("strong") if e.plot is None]
    assert HOSTILE in phase_names
    transitions = [text_of(e) for e in page.find("td", cls="what")]
    assert "reload refused (<img src=x onerror=alert(1)>)" in transitions
    assert "a <b>bold</b> claim & more" in text_of(page.root())


def test_the_header_says_what_ran(page: Page) -> None:
    header = text_of(page.find("header")[0])
    for part in ("seed 7", "policy search", "<bundled>", "budget 30 ms", "120 s"):
        assert part in header, part


def test_the_headline_figures(page: Page) -> None:
    decisions = text_of(page.by_id("card-decisions"))
    assert "2,345" in decisions and "failed 0" in decisions and "no search failed" in decisions
    latency = text_of(page.by_id("card-latency"))
    for figure in ("2.51 ms", "9.87 ms", "13.40 ms", "250.00 ms"):
        assert figure in latency
    assert "p99.9 within the 30 ms budget" in latency
    lift = text_of(page.by_id("card-lift"))
    assert "+78.7%" in lift and "+59.1% to +101.7%" in lift and "true lift +82.7%" in lift
    assert "the interval holds the true lift" in lift
    assert page.by_id("plot-lift").tag == "svg"
    ctr = text_of(page.by_id("card-ctr"))
    assert "treatment" in ctr and "0.5180" in ctr and "0.2899" in ctr
    assert "users 2,710 / 290" in ctr and "searches 11,063 / 1,103" in ctr
    assert "0.712" in text_of(page.by_id("card-diversity"))
    served = text_of(page.by_id("card-served"))
    assert "session 40.0%" in served and 'seg"ment 15.0%' in served


def test_a_budget_overrun_and_a_missed_truth_are_flagged() -> None:
    result = make_result()
    result["latency_ms"]["p999"] = 31.5
    result["lift"]["ci_contains_true"] = False
    result["failed"] = 3
    page = Page(render_html(result))
    assert "p99.9 over the 30 ms budget" in text_of(page.by_id("card-latency"))
    assert "misses the true lift" in text_of(page.by_id("card-lift"))
    assert "3 failed" in text_of(page.by_id("card-decisions"))


def test_an_unmeasured_lift_says_why() -> None:
    result = make_result()
    result["lift"] = {
        "estimate": None,
        "ci_low": None,
        "ci_high": None,
        "true": 0.2,
        "ci_contains_true": False,
        "reason": "the policy declares no holdout",
    }
    card = text_of(Page(render_html(result)).by_id("card-lift"))
    assert "not measured" in card and "the policy declares no holdout" in card and "+20.0%" in card


def test_the_phase_guardrail_and_transition_tables(page: Page) -> None:
    tables = page.find("table")
    assert len(tables) == 3
    rows = [text_of(e) for e in page.find("tr")]
    assert any(r.startswith("warm-up 0\u201340 s 200 0 2.50 ms") for r in rows)
    assert any(r.startswith("session_store breaker breaker 2 1 open at the end") for r in rows)
    assert any(r.startswith("error_rate guard error_rate 1 1 recovered") for r in rows)
    assert any(r.startswith("search flag kill switch 0 0 never tripped") for r in rows)
    assert any("61.2 s" in r and "opened (failure_rate)" in r for r in rows)
    muted = [text_of(e) for e in page.find("tr", cls="muted")]
    assert len(muted) == 1 and "half-opened" in muted[0]


# --- degenerate timelines -------------------------------------------------------------------------


def test_an_empty_timeline_renders_every_plot_empty() -> None:
    result = make_result()
    result["timeline"] = {
        "bucket_s": 5.0,
        "t": [],
        "served_by": {tier: [] for tier in TIERS},
        "latency_ms": {"p50": [], "p99": [], "max": []},
        "error_rate": [],
        "lag_s": [],
        "coverage": [],
        "events": [],
    }
    result["phases"] = []
    result["transitions"] = []
    result["guardrails"] = {}
    text = render_html(result)
    page = Page(text)
    assert page.errors == []
    for plot in PLOTS:
        assert drawn_points(page, plot) == 0
        (note,) = page.find("text", plot=plot, cls="no-data")
        assert text_of(note) == "nothing measured"
    assert geometry_is_finite(page)


def test_a_result_with_nothing_in_it_still_renders(tmp_path: Path) -> None:
    path = render_report({}, tmp_path)
    page = Page(path.read_text(encoding="utf-8"))
    assert page.errors == []
    for plot in PLOTS:
        assert page.by_id(plot).tag == "svg"


def test_a_single_bucket_is_drawn_as_points() -> None:
    result = make_result()
    timeline = result["timeline"]
    timeline["t"] = [0.0]
    timeline["served_by"] = {"session": [0.75], "unpersonalized": [0.25]}
    timeline["latency_ms"] = {"p50": [2.0], "p99": [9.0], "max": [11.0]}
    timeline["error_rate"] = [0.01]
    timeline["lag_s"] = [0.3]
    timeline["coverage"] = [0.7]
    result["duration_s"] = 5.0
    page = Page(render_html(result))
    assert len(page.find("circle", plot="plot-latency")) == 3
    assert len(page.find("circle", plot="plot-coverage")) == 1
    assert len(page.find("path", plot="plot-served-by", cls="area")) == 2


def test_an_all_zero_series_is_drawn_along_the_axis() -> None:
    result = make_result()
    result["timeline"]["error_rate"] = [0.0] * N
    page = Page(render_html(result))
    (line,) = page.find("polyline", plot="plot-error-rate")
    ys = {point.split(",")[1] for point in line.attrs["points"].split()}
    assert len(ys) == 1
    axis = [
        e.attrs["y1"]
        for e in page.find("line", plot="plot-error-rate")
        if e.attrs.get("stroke") == "#8c959f" and e.attrs["x1"] != e.attrs["x2"]
    ]
    assert ys == set(axis)


def test_bad_values_are_skipped_not_drawn() -> None:
    result = copy.deepcopy(make_result())
    timeline = result["timeline"]
    timeline["coverage"] = [math.nan, "x", True, 0.5, math.inf, 0.6] + [None] * (N - 6)
    timeline["lag_s"] = "not a list"
    timeline["events"] = [{"t": None, "label": "when?"}, {"label": "no time"}, "junk"]
    timeline["t"][20] = None  # a bucket with no time: its values are drawn nowhere
    page = Page(render_html(result))
    assert page.errors == []
    assert geometry_is_finite(page)
    # only 0.5 and 0.6 are numbers, and the infinity between them breaks the line
    assert page.find("polyline", plot="plot-coverage") == []
    assert len(page.find("circle", plot="plot-coverage")) == 2
    assert page.find("g", plot="plot-lag", cls="event") == []
    # p50 breaks at the gap and at the bucket without a time: three runs
    assert len(page.find("polyline", plot="plot-latency")) == 3 * 3


# --- through the command ------------------------------------------------------------------------

SCENARIO = """
name: tiny
description: a scenario file's text is the user's <em>own</em>
duration: 20s
bucket: 2s
world: {users: 1000, items: 400, candidates: 20, rate: 15, session_searches: 1}
phases:
  - {name: calm, until: 10s}
  - {name: "<script>alert(1)</script>"}
events:
  - {at: 10s, type: outage, store: session_store, for: 5s, label: "<b>store</b> down"}
"""


def test_resilience_simulate_report_writes_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resilience.cli import main

    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "report"
    code = main(["simulate", "--scenario", str(scenario), "--report", str(out), "--quiet"])
    assert code == 0
    assert f"report written to {out / 'index.html'}" in capsys.readouterr().out
    text = (out / "index.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.errors == [] and page.stack == []
    for plot in PLOTS:
        assert drawn_points(page, plot) >= 2, plot
        assert [text_of(e) for e in page.find("text", plot=plot, cls="event-label")] == [
            "<b>store</b> down"
        ]
    assert "<script" not in text and "<em>" not in text and "<b>" not in text
    assert HOSTILE in [text_of(e) for e in page.find("strong")]
    assert not re.search(r"https?:", text)


# --- the chart builder alone ----------------------------------------------------------------------

values = st.lists(
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False)), max_size=40
)


@given(
    lines=st.lists(values, max_size=3),
    t_count=st.integers(0, 40),
    bucket=st.sampled_from([0.5, 1.0, 5.0, 60.0]),
    threshold=st.one_of(st.none(), st.floats(0.001, 1e3)),
    events=st.lists(st.tuples(st.floats(0, 3000), st.text(max_size=30)), max_size=8),
)
def test_any_chart_renders_finite_and_balanced(
    lines: list[list[float | None]],
    t_count: int,
    bucket: float,
    threshold: float | None,
    events: list[tuple[float, str]],
) -> None:
    chart = Chart(
        id="plot-x",
        title="x",
        description="x",
        t=[i * bucket for i in range(t_count)],
        bucket=bucket,
        x_end=t_count * bucket,
        y_format=lambda v: f"{v:g}",
        lines=[Series(f"s{i}", v, "#000") for i, v in enumerate(lines)],
        thresholds=[Threshold(threshold, "limit")] if threshold is not None else [],
        markers=[Marker(t, label) for t, label in events],
        y_cap=100.0,
    )
    svg = render_chart(chart)
    page = Page(svg)
    assert page.errors == [] and page.stack == []
    assert geometry_is_finite(page)
    assert len(page.find("g", cls="event")) == len(events)
