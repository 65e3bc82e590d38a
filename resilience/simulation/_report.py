"""The HTML report of ``resilience simulate --report DIR``: one self-contained page.

:func:`render_report` writes ``DIR/index.html`` from a simulation result (the dict
:func:`resilience.simulation.simulate` returns, see ``docs/simulation.md``): a header saying what
ran, the headline figures, five plots over virtual time (share served by each tier, decision
latency against the budget, the error rate and the stream lag against their guards' thresholds,
category coverage), with the scenario's events marked on each, and the tables per phase, per
guardrail and per transition.

The page references nothing outside itself: no script, font, stylesheet or image is loaded, the
plots are inline SVG drawn here, and it needs no JavaScript. Every text taken from the result is
escaped, since scenario files (phase names, event labels) are written by users.
"""

from __future__ import annotations

import html
import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["render_html", "render_report"]


def render_report(result: Mapping[str, Any], directory: Path) -> Path:
    """Write the report of ``result`` to ``directory/index.html`` (creating the directory) and
    return that path. The file is replaced atomically: a reader never sees half a report."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "index.html"
    scratch = directory / ".index.html.tmp"
    scratch.write_text(render_html(result), encoding="utf-8")
    os.replace(scratch, path)
    return path


def render_html(result: Mapping[str, Any]) -> str:
    """The report of ``result`` as one HTML document."""
    return _Report(result).render()


# --- reading the result defensively -----------------------------------------------------------
# The result is the simulator's, but a report is also rendered from JSON files written by other
# versions: a missing or malformed value shows as a dash, never as a traceback.


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _num(value: object) -> float | None:
    """A finite number, or None (for null, NaN, booleans and anything else)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _series(value: object) -> list[float | None]:
    return [_num(v) for v in _list(value)]


def _esc(value: object) -> str:
    """Text from the result, escaped for element content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


# --- formatting ---------------------------------------------------------------------------------

DASH: Final = "\u2013"


def _fmt_ms(value: float | None, digits: int = 2) -> str:
    return DASH if value is None else f"{value:,.{digits}f}\u2009ms"


def _fmt_pct(value: float | None, digits: int = 1, *, signed: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:+.{digits}%}" if signed else f"{value:.{digits}%}"


def _fmt_count(value: object) -> str:
    number = _num(value)
    return DASH if number is None else f"{round(number):,}"


def _fmt_ratio(value: float | None, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _fmt_s(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:,.1f}\u2009s" if value % 1 else f"{value:,.0f}\u2009s"


def _fmt_time(value: float | None) -> str:
    """A moment of the run, to the tenth of a second, aligned in a column."""
    return DASH if value is None else f"{value:,.1f}\u2009s"


def _fmt_span(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return DASH
    return f"{start:g}{DASH}{end:g}\u2009s"


def _fmt_duration(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 120:
        minutes = value / 60
        return f"{_fmt_s(value)} ({minutes:.3g}\u2009min)"
    return _fmt_s(value)


def _g(value: float) -> str:
    """A threshold as written in a policy: 30, 0.5, 2.5."""
    return f"{value:g}"


# --- colours --------------------------------------------------------------------------------------
# Text colours pass WCAG AA on white; series colours are distinguishable in print and for the
# common colour-vision deficiencies (a blue/orange/purple base, never red against green alone).

INK: Final = "#1f2328"
MUTED: Final = "#57606a"
GRID: Final = "#e6eaef"
AXIS: Final = "#8c959f"
THRESHOLD: Final = "#c9252d"
EVENT: Final = "#57606a"
BAND: Final = "#f4f6f8"
TIER_COLOURS: Final = (
    "#0a5cc2",  # blue
    "#6cb4f5",  # light blue
    "#1f8a4c",  # green
    "#e0a526",  # amber
    "#b5418b",  # magenta
    "#7b52d3",  # purple
    "#c45a0f",  # orange
    "#0f7c8c",  # teal
)
UNPERSONALIZED: Final = "#aab3bd"
REASON_COLOURS: Final = ("#0a5cc2", "#7b52d3", "#e0a526", "#b5418b", "#aab3bd", "#0f7c8c")


def _tier_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per tier, in chain order; the un-personalized fallback is grey."""
    colours: dict[str, str] = {}
    index = 0
    for name in names:
        if name.lower() in {"unpersonalized", "unpersonalised", "none"}:
            colours[name] = UNPERSONALIZED
        else:
            colours[name] = TIER_COLOURS[index % len(TIER_COLOURS)]
            index += 1
    return colours


# --- the SVG chart builder ----------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One line (or one layer of a stacked area) of a chart."""

    label: str
    values: Sequence[float | None]
    colour: str
    width: float = 2.0
    dash: str = ""
    fill: bool = False  # shade the area under the line


@dataclass(frozen=True)
class Threshold:
    """A horizontal line: a budget or a guard's limit."""

    value: float
    label: str


@dataclass(frozen=True)
class Marker:
    """A vertical line at a moment: a scenario event."""

    t: float
    label: str


@dataclass(frozen=True)
class Band:
    """A shaded span of time: a phase."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class Chart:
    """A chart over virtual time. ``t`` holds bucket starts; each value is drawn at the middle
    of its bucket (lines) or across it (stacked areas)."""

    id: str
    title: str
    description: str
    t: Sequence[float]
    bucket: float
    x_end: float
    y_format: Callable[[float], str]
    lines: Sequence[Series] = ()
    stacked: Sequence[Series] = ()
    thresholds: Sequence[Threshold] = ()
    markers: Sequence[Marker] = ()
    bands: Sequence[Band] = ()
    y_max: float | None = None  # a fixed top (shares: 1.0)
    y_cap: float | None = None  # never scale above this: higher values are drawn off scale


WIDTH: Final = 1100
LEFT: Final = 64
RIGHT: Final = 20
PLOT_HEIGHT: Final = 155
FONT: Final = 12
LABEL_FONT: Final = 10.5  # event labels and phase names
CHAR_WIDTH: Final = 6.9  # a conservative mean advance at 12 px, for laying labels out
ROW: Final = 13
STRIP: Final = 16  # the row of phase names above the plot
MAX_ROWS: Final = 4


def _f(value: float) -> str:
    """A coordinate."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _text_width(text: str, size: float = FONT) -> float:
    return len(text) * CHAR_WIDTH * size / FONT


def nice_step(span: float, count: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about ``count`` ticks."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(count, 1)
    if not raw > 0:  # a subnormal span divides to zero
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= factor * power * (1 + 1e-9):
            return factor * power
    return 10 * power


def nice_ticks(top: float, count: int = 5) -> tuple[list[float], float]:
    """Ticks from 0 up to ``top`` rounded up to a whole step, and that rounded top."""
    step = nice_step(top, count)
    ceiling = max(math.ceil(top / step - 1e-9), 1) * step  # never a zero-height axis
    ticks = [i * step for i in range(round(ceiling / step) + 1)]
    return ticks, ceiling


_TIME_STEPS: Final = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)


def time_ticks(end: float, count: int = 10) -> tuple[list[float], Callable[[float], str], str]:
    """Ticks over ``[0, end]`` virtual seconds, their format, and the axis title."""
    step: float = next((s for s in _TIME_STEPS if end / s <= count), 0.0)
    if not step:
        step = nice_step(end, count)
    ticks = [i * step for i in range(math.floor(end / step + 1e-9) + 1)]
    if end >= 120 and step >= 60:

        def minutes(t: float) -> str:
            whole = round(t)
            return f"{whole // 60}:{whole % 60:02d}"

        return ticks, minutes, "virtual time (min:s)"
    return ticks, (lambda t: f"{t:g}"), "virtual time (s)"


def _runs(points: Iterable[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Contiguous runs of known values: a null breaks the line."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for x, y in points:
        if y is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((x, y))
    if current:
        runs.append(current)
    return runs


@dataclass(frozen=True)
class _Placed:
    marker: Marker
    x: float
    row: int
    anchor: str  # "start": the label runs right of the line; "end": left of it


def _place_labels(markers: Sequence[Marker], x_of: Callable[[float], float]) -> list[_Placed]:
    """Give each marker's label the first row where it overlaps no other label. A label runs
    right of its line; only where the plot ends does it run left of it."""
    rows: list[list[tuple[float, float]]] = []  # per row, the spans taken
    placed: list[_Placed] = []

    def free(row: int, lo: float, hi: float) -> bool:
        return row >= len(rows) or all(hi + 8 <= a or lo >= b + 8 for a, b in rows[row])

    for marker in sorted(markers, key=lambda m: m.t):
        x = x_of(marker.t)
        width = _text_width(marker.label, LABEL_FONT)
        right = (x + 4, x + 4 + width) if x + 4 + width <= WIDTH - RIGHT else None
        left = None if right is not None else (x - 4 - width, x - 4)
        choice: tuple[int, str, tuple[float, float]] | None = None
        for row in range(MAX_ROWS):
            for anchor, span in (("start", right), ("end", left)):
                if span is not None and free(row, *span):
                    choice = (row, anchor, span)
                    break
            if choice is not None:
                break
        if choice is None:  # too crowded: overlap in the last row
            span = right or left or (x, x)
            choice = (MAX_ROWS - 1, "start" if right else "end", span)
        row, anchor, span = choice
        while len(rows) <= row:
            rows.append([])
        rows[row].append(span)
        placed.append(_Placed(marker, x, row, anchor))
    return placed


def _fit(text: str, width: float, size: float) -> str:
    """``text`` cut to ``width`` with an ellipsis, or nothing when not even 3 characters fit."""
    if _text_width(text, size) <= width:
        return text
    keep = int(width / (CHAR_WIDTH * size / FONT)) - 1
    return text[:keep].rstrip() + "\u2026" if keep >= 3 else ""


def _legend(items: Sequence[tuple[str, str, str]], y: float) -> list[str]:
    """Swatches in a row: (label, colour, kind) with kind "line", "dash" or "area"."""
    out: list[str] = ['<g class="legend">']
    x = float(LEFT)
    for label, colour, kind in items:
        if kind == "area":
            out.append(
                f'<rect x="{_f(x)}" y="{_f(y - 9)}" width="14" height="10" rx="2" fill="{colour}"/>'
            )
        elif kind == "marker":
            out.append(_triangle(x + 7, y - 4, colour))
        else:
            dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
            out.append(
                f'<line x1="{_f(x)}" y1="{_f(y - 4)}" x2="{_f(x + 16)}" y2="{_f(y - 4)}" '
                f'stroke="{colour}" stroke-width="2.5"{dash}/>'
            )
        out.append(f'<text x="{_f(x + 21)}" y="{_f(y)}" fill="{INK}">{_esc(label)}</text>')
        x += 21 + _text_width(label) + 22
    out.append("</g>")
    return out


def _triangle(x: float, y: float, colour: str) -> str:
    return (
        f'<path class="off-scale" d="M{_f(x - 4)},{_f(y + 3)}L{_f(x)},{_f(y - 4)}'
        f'L{_f(x + 4)},{_f(y + 3)}Z" fill="{colour}"/>'
    )


def render_chart(chart: Chart) -> str:
    """The chart as an inline ``<svg>`` element with a title and a description."""
    x_end = chart.x_end if chart.x_end > 0 else 1.0
    plot_width = WIDTH - LEFT - RIGHT
    half = chart.bucket / 2

    def x_of(t: float) -> float:
        return LEFT + min(max(t, 0.0), x_end) / x_end * plot_width

    # the y scale: the data, the thresholds, a little headroom; capped; rounded up to a tick
    known = [v for s in chart.lines for v in s.values if v is not None]
    if chart.stacked:
        known.append(1.0)
    top = max([*known, *(th.value for th in chart.thresholds), 0.0]) * 1.08
    if chart.y_cap is not None:
        top = min(top, chart.y_cap)
    if chart.y_max is not None:
        top = chart.y_max
    if top <= 0:
        top = 1.0
    y_ticks, y_top = nice_ticks(top, 4)
    if chart.y_max is not None:
        y_top = chart.y_max
        y_ticks = [t for t in y_ticks if t <= y_top + 1e-12]

    legend_items: list[tuple[str, str, str]] = [(s.label, s.colour, "area") for s in chart.stacked]
    legend_items += [(s.label, s.colour, "dash" if s.dash else "line") for s in chart.lines]
    off_scale = [
        (s, [(i, v) for i, v in enumerate(s.values) if v is not None and v > y_top])
        for s in chart.lines
    ]
    for series, above in off_scale:
        if above:
            peak = max(v for _, v in above)
            legend_items.append(
                (
                    f"{series.label} above the scale (peak {chart.y_format(peak)})",
                    series.colour,
                    "marker",
                )
            )

    placed = _place_labels(chart.markers, x_of)
    rows = max((p.row for p in placed), default=-1) + 1
    legend_height = 4  # the legend is drawn under the axis, beside its title
    strip_y = legend_height + rows * ROW + (6 if rows else 2)
    top_y = strip_y + (STRIP if chart.bands else 0)
    bottom_y = top_y + PLOT_HEIGHT
    height = bottom_y + 46

    def y_of(v: float) -> float:
        return bottom_y - min(max(v, 0.0), y_top) / y_top * PLOT_HEIGHT

    out: list[str] = [
        f'<svg id="{_esc(chart.id)}" class="chart" viewBox="0 0 {WIDTH} {_f(height)}" '
        f'width="100%" role="img" aria-labelledby="{_esc(chart.id)}-title '
        f'{_esc(chart.id)}-desc" font-size="{FONT}">',
        f'<title id="{_esc(chart.id)}-title">{_esc(chart.title)}</title>',
        f'<desc id="{_esc(chart.id)}-desc">{_esc(chart.description)}</desc>',
    ]

    # phases: named in a strip above the plot, alternate ones shaded
    out.append('<g class="phases">')
    for i, band in enumerate(chart.bands):
        if band.end <= band.start:
            continue
        x0, x1 = x_of(band.start), x_of(band.end)
        if i % 2:
            out.append(
                f'<rect x="{_f(x0)}" y="{_f(strip_y)}" width="{_f(x1 - x0)}" '
                f'height="{_f(bottom_y - strip_y)}" fill="{BAND}">'
                f"<title>phase {_esc(band.label)}</title></rect>"
            )
        name = _fit(band.label, x1 - x0 - 6, LABEL_FONT - 0.5)
        if name:
            halo = BAND if i % 2 else "#fff"
            out.append(
                f'<text x="{_f((x0 + x1) / 2)}" y="{_f(strip_y + 12)}" text-anchor="middle" '
                f'fill="{MUTED}" font-size="{LABEL_FONT - 0.5:g}" stroke="{halo}" '
                f'stroke-width="4" paint-order="stroke">{_esc(name)}</text>'
            )
    out.append("</g>")

    # grid and y axis
    out.append('<g class="y-axis">')
    for tick in y_ticks:
        y = y_of(tick)
        out.append(
            f'<line x1="{LEFT}" y1="{_f(y)}" x2="{WIDTH - RIGHT}" y2="{_f(y)}" '
            f'stroke="{GRID}" stroke-width="1"/>'
        )
        out.append(
            f'<text class="tick" x="{LEFT - 8}" y="{_f(y + 4)}" text-anchor="end" '
            f'fill="{MUTED}">'
            f"{_esc(chart.y_format(tick))}</text>"
        )
    out.append("</g>")

    # x axis
    x_ticks, x_format, x_title = time_ticks(x_end)
    out.append('<g class="x-axis">')
    out.append(
        f'<line x1="{LEFT}" y1="{_f(bottom_y)}" x2="{WIDTH - RIGHT}" y2="{_f(bottom_y)}" '
        f'stroke="{AXIS}" stroke-width="1"/>'
    )
    for tick in x_ticks:
        x = x_of(tick)
        out.append(
            f'<line x1="{_f(x)}" y1="{_f(bottom_y)}" x2="{_f(x)}" y2="{_f(bottom_y + 5)}" '
            f'stroke="{AXIS}"/>'
        )
        out.append(
            f'<text x="{_f(x)}" y="{_f(bottom_y + 18)}" text-anchor="middle" fill="{MUTED}">'
            f"{_esc(x_format(tick))}</text>"
        )
    out.append(
        f'<text x="{WIDTH - RIGHT}" y="{_f(bottom_y + 38)}" text-anchor="end" '
        f'fill="{MUTED}">{_esc(x_title)}</text>'
    )
    out.append("</g>")
    out += _legend(legend_items, bottom_y + 38) if legend_items else []

    drawn = 0
    # stacked areas: each layer a step shape across its buckets, gaps left empty
    if chart.stacked:
        out.append('<g class="areas">')
        count = max((len(s.values) for s in chart.stacked), default=0)
        present = [
            i < len(chart.t)
            and math.isfinite(chart.t[i])
            and any(i < len(s.values) and s.values[i] is not None for s in chart.stacked)
            for i in range(count)
        ]
        below = [0.0] * count
        for series in chart.stacked:
            level = [
                below[i] + (series.values[i] or 0.0) if i < len(series.values) else below[i]
                for i in range(count)
            ]
            pieces: list[str] = []
            i = 0
            while i < count:
                if not present[i]:
                    i += 1
                    continue
                j = i
                while j + 1 < count and present[j + 1]:
                    j += 1
                top_edge: list[str] = []
                bottom_edge: list[str] = []
                for k in range(i, j + 1):
                    x0, x1 = x_of(chart.t[k]), x_of(chart.t[k] + chart.bucket)
                    top_edge += [f"{_f(x0)},{_f(y_of(level[k]))}", f"{_f(x1)},{_f(y_of(level[k]))}"]
                    bottom_edge += [
                        f"{_f(x0)},{_f(y_of(below[k]))}",
                        f"{_f(x1)},{_f(y_of(below[k]))}",
                    ]
                if any(level[k] > below[k] for k in range(i, j + 1)):
                    pieces.append("M" + "L".join(top_edge + bottom_edge[::-1]) + "Z")
                i = j + 1
            if pieces:
                drawn += 1
                out.append(
                    f'<path class="series area" data-series="{_esc(series.label)}" '
                    f'd="{"".join(pieces)}" fill="{series.colour}">'
                    f"<title>{_esc(series.label)}</title></path>"
                )
            below = level
        out.append("</g>")

    # thresholds, under the lines so that the data stays on top
    out.append('<g class="thresholds">')
    for th in chart.thresholds:
        y = y_of(th.value)
        out.append(
            f'<line class="threshold" data-value="{_g(th.value)}" x1="{LEFT}" y1="{_f(y)}" '
            f'x2="{WIDTH - RIGHT}" y2="{_f(y)}" stroke="{THRESHOLD}" stroke-width="1.5" '
            f'stroke-dasharray="7 4"><title>{_esc(th.label)}</title></line>'
        )
        out.append(
            f'<text class="threshold-label halo" x="{WIDTH - RIGHT - 4}" y="{_f(y - 6)}" '
            f'text-anchor="end" fill="{THRESHOLD}" font-weight="600">{_esc(th.label)}</text>'
        )
    out.append("</g>")

    # lines
    if chart.lines:
        out.append('<g class="lines">')
        for series, above in off_scale:
            # a bucket without a time cannot be placed: it breaks the line like a null
            points = [
                (x_of(chart.t[i] + half), v) if math.isfinite(chart.t[i]) else (0.0, None)
                for i, v in enumerate(series.values[: len(chart.t)])
            ]
            runs = _runs(points)
            dash = f' stroke-dasharray="{series.dash}"' if series.dash else ""
            parts: list[str] = []
            for run in runs:
                coords = " ".join(f"{_f(x)},{_f(y_of(v))}" for x, v in run)
                if len(run) == 1:
                    x, v = run[0]
                    parts.append(
                        f'<circle cx="{_f(x)}" cy="{_f(y_of(v))}" r="3" fill="{series.colour}"/>'
                    )
                    continue
                if series.fill:
                    first, last = run[0][0], run[-1][0]
                    parts.append(
                        f'<path class="fill" d="M{_f(first)},{_f(bottom_y)}L'
                        + "L".join(f"{_f(x)},{_f(y_of(v))}" for x, v in run)
                        + f'L{_f(last)},{_f(bottom_y)}Z" fill="{series.colour}" '
                        'fill-opacity="0.12"/>'
                    )
                parts.append(
                    f'<polyline points="{coords}" fill="none" stroke="{series.colour}" '
                    f'stroke-width="{_g(series.width)}" stroke-linejoin="round" '
                    f'stroke-linecap="round"{dash}/>'
                )
            for i, _ in above:
                if i < len(chart.t) and math.isfinite(chart.t[i]):
                    parts.append(_triangle(x_of(chart.t[i] + half), top_y + 5, series.colour))
            if runs:
                drawn += 1
                out.append(
                    f'<g class="series line" data-series="{_esc(series.label)}">'
                    f"<title>{_esc(series.label)}</title>{''.join(parts)}</g>"
                )
        out.append("</g>")

    # events: a dashed line each, labelled in the band above the plot
    out.append('<g class="events">')
    for p in placed:
        label_y = legend_height + p.row * ROW + 11
        text_x = p.x + 4 if p.anchor == "start" else p.x - 4
        out.append(
            f'<g class="event"><title>{_esc(_fmt_s(p.marker.t))}: {_esc(p.marker.label)}</title>'
            f'<line x1="{_f(p.x)}" y1="{_f(label_y - 10)}" x2="{_f(p.x)}" y2="{_f(bottom_y)}" '
            f'stroke="{EVENT}" stroke-width="1" stroke-dasharray="3 3"/>'
            f'<text class="event-label halo" x="{_f(text_x)}" y="{_f(label_y)}" '
            f'text-anchor="{p.anchor}" fill="{INK}" font-size="{LABEL_FONT}">'
            f"{_esc(p.marker.label)}</text></g>"
        )
    out.append("</g>")

    if not drawn:
        out.append(
            f'<text class="no-data" x="{_f(LEFT + plot_width / 2)}" '
            f'y="{_f(top_y + PLOT_HEIGHT / 2)}" text-anchor="middle" fill="{MUTED}" '
            f'font-size="14">nothing measured</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def describe(
    label: str, values: Sequence[float | None], t: Sequence[float], fmt: Callable[[float], str]
) -> str:
    """One sentence on a series for the chart's description: its range and when it peaked."""
    known = [
        (v, t[i])
        for i, v in enumerate(values)
        if v is not None and i < len(t) and math.isfinite(t[i])
    ]
    if not known:
        return f"{label}: nothing measured."
    low = min(v for v, _ in known)
    high, when = max(known, key=lambda p: p[0])
    return f"{label} from {fmt(low)} to {fmt(high)} (peak at {_fmt_s(when)})."


# --- the page -----------------------------------------------------------------------------------

CSS: Final = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body {
  margin: 0; background: #f4f6f8; color: #1f2328;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Liberation Sans", "DejaVu Sans", sans-serif;
}
.page { max-width: 1180px; margin: 0 auto; padding: 24px 24px 48px; }
header.top { border-bottom: 1px solid #d0d7de; padding-bottom: 14px; margin-bottom: 4px; }
.eyebrow { margin: 0; color: #57606a; font-size: 13px; letter-spacing: .06em;
  text-transform: uppercase; font-weight: 600; }
h1 { margin: 2px 0 4px; font-size: 28px; line-height: 1.25; font-weight: 650; }
h1 .name { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono",
  "DejaVu Sans Mono", monospace; font-weight: 600; }
.description { margin: 0 0 14px; color: #424a53; font-size: 16px; }
dl.meta { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 0; }
dl.meta div { display: flex; gap: 6px; align-items: baseline; }
dl.meta dt { color: #57606a; font-size: 13px; }
dl.meta dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
h2 { font-size: 19px; margin: 24px 0 10px; font-weight: 650; }
h2 .aside, h3 .aside { font-weight: 400; color: #57606a; font-size: 14px; margin-left: 8px; }
h3 { font-size: 16px; margin: 0 0 2px; font-weight: 620; }
.cards { display: grid; grid-template-columns: repeat(12, 1fr); gap: 14px; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 10px; padding: 12px 16px;
  grid-column: span 3; }
.card.c4 { grid-column: span 4; }
.card.c5 { grid-column: span 5; }
.card.c9 { grid-column: span 9; }
.card h3 { color: #57606a; font-size: 13px; font-weight: 600; text-transform: uppercase;
  letter-spacing: .05em; margin-bottom: 6px; }
.big { font-size: 30px; font-weight: 650; line-height: 1.15; font-variant-numeric: tabular-nums; }
.sub { color: #57606a; font-size: 14px; }
.kv { display: grid; grid-template-columns: auto 1fr; gap: 2px 12px; margin: 8px 0 0;
  font-variant-numeric: tabular-nums; }
.kv dt { color: #57606a; }
.kv dd { margin: 0; font-weight: 600; text-align: right; }
.kv.small { font-size: 13px; margin-top: 10px; }
.kv.small dd.head { color: #57606a; font-weight: 400; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12.5px;
  font-weight: 600; border: 1px solid transparent; white-space: nowrap; }
.badge.ok { background: #dafbe1; color: #116329; border-color: #aceebb; }
.badge.bad { background: #ffebe9; color: #a40e26; border-color: #ffcecb; }
.badge.warn { background: #fff8c5; color: #7d4e00; border-color: #eed888; }
.badge.neutral { background: #eaeef2; color: #424a53; border-color: #d0d7de; }
.kind-breaker { background: #fff1e5; color: #953800; border-color: #ffd8b5; }
.kind-guard { background: #fbefff; color: #6e40c9; border-color: #ecd8ff; }
.kind-flag { background: #ddf4ff; color: #0550ae; border-color: #b6e3ff; }
.kind-reload { background: #eaeef2; color: #424a53; border-color: #d0d7de; }
.bullets { display: grid; grid-template-columns: 3.6em 1fr 6.2em; gap: 7px 10px;
  align-items: center; margin-top: 8px; font-variant-numeric: tabular-nums; font-size: 14px; }
.bullets .name { color: #57606a; }
.bullets .value { text-align: right; font-weight: 600; }
.track { position: relative; height: 10px; background: #eaeef2; border-radius: 5px; }
.track .fill { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 5px;
  background: #0a5cc2; }
.track .fill.over { background: #c9252d; }
.track .budget { position: absolute; right: 0; top: -3px; bottom: -3px; width: 2px;
  background: #c9252d; }
.verdict { margin: 8px 0 0; font-size: 14px; }
.stack { display: flex; height: 22px; border-radius: 6px; overflow: hidden;
  background: #eaeef2; margin: 8px 0 8px; }
.stack span { display: block; height: 100%; }
.stack.small { height: 9px; border-radius: 3px; margin: 2px 0 2px; width: 100%; min-width: 90px; }
.keys { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 0; padding: 0; list-style: none;
  font-size: 14px; font-variant-numeric: tabular-nums; }
.keys li { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px; }
.keys .share { font-weight: 600; }
figure { margin: 0 0 12px; background: #fff; border: 1px solid #d0d7de; border-radius: 10px;
  padding: 12px 16px 4px; break-inside: avoid; page-break-inside: avoid; }
figure .caption { color: #57606a; font-size: 14px; margin: 0 0 4px; }
svg.chart { display: block; height: auto; font-family: inherit; }
svg#plot-lift { max-width: 320px; margin-top: 4px; }
svg .halo { paint-order: stroke; stroke: #fff; stroke-width: 4px; stroke-linejoin: round; }
table { width: 100%; border-collapse: collapse; background: #fff; font-size: 14px;
  font-variant-numeric: tabular-nums; }
.table-wrap { background: #fff; border: 1px solid #d0d7de; border-radius: 10px;
  overflow-x: auto; }
table.phases { font-size: 13.5px; }
table.phases td { vertical-align: middle; }
table.transitions td { padding-top: 3px; padding-bottom: 3px; }
th, td { padding: 5px 9px; text-align: left; vertical-align: top;
  border-bottom: 1px solid #eaeef2; }
td.nowrap { white-space: nowrap; }
th.served { min-width: 190px; }
thead th { background: #f6f8fa; color: #424a53; font-weight: 600; font-size: 13px;
  border-bottom: 1px solid #d0d7de; }
tbody tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.over { color: #a40e26; font-weight: 650; }
tr.muted td { color: #57606a; }
tr.muted td.what { font-size: 13px; }
td .served-text { color: #57606a; font-size: 12px; display: block; line-height: 1.3; }
.mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono",
  "DejaVu Sans Mono", monospace; font-size: 13px; }
.note { color: #57606a; font-size: 14px; margin: 6px 0 0; }
.empty { color: #57606a; font-style: italic; padding: 12px 16px; background: #fff;
  border: 1px solid #d0d7de; border-radius: 10px; margin: 0; }
footer { margin-top: 34px; color: #57606a; font-size: 13px; border-top: 1px solid #d0d7de;
  padding-top: 12px; }
@media screen and (max-width: 860px) {
  .card, .card.c4, .card.c5, .card.c9 { grid-column: span 12; }
}
@media print {
  body { background: #fff; font-size: 13px; }
  .page { max-width: none; padding: 0; }
  .table-wrap { overflow: visible; }
  .card, figure, .table-wrap { border-color: #bbb; }
  h2 { break-after: avoid; page-break-after: avoid; }
  tr { break-inside: avoid; page-break-inside: avoid; }
  section.plots { break-before: page; }
}
@page { size: A4 landscape; margin: 10mm; }
"""


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{text}</span>'


def _is_probe(what: str) -> bool:
    """A half-open or a failed probe: every one is listed, trips and recoveries stand out."""
    return "half-opened" in what or "(probe_failed)" in what


class _Report:
    def __init__(self, result: Mapping[str, Any]) -> None:
        self.result = result
        self.budget = _num(result.get("budget_ms"))
        thresholds = _map(result.get("thresholds"))
        if _num(thresholds.get("budget_ms")) is not None:
            self.budget = _num(thresholds.get("budget_ms"))
        self.error_threshold = _num(thresholds.get("error_rate"))
        self.lag_threshold = _num(thresholds.get("lag_s"))
        self.timeline = _map(result.get("timeline"))
        self.phases = [_map(p) for p in _list(result.get("phases"))]
        served = _map(result.get("served_by"))
        tiers = [str(k) for k in served]
        for name in _map(self.timeline.get("served_by")):
            if str(name) not in tiers:
                tiers.append(str(name))
        self.tiers = tiers
        self.colours = _tier_colours(tiers)

    # the page

    def render(self) -> str:
        r = self.result
        title = f"Simulation report: {r.get('scenario', '?')} (seed {r.get('seed', '?')})"
        body = "\n".join(
            [
                self.header(),
                '<main id="main">',
                self.headline(),
                self.plots(),
                self.phase_table(),
                self.guardrail_table(),
                self.transition_table(),
                "</main>",
                self.footer(),
            ]
        )
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="color-scheme" content="light">\n'
            f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f'<body>\n<div class="page">\n{body}\n</div>\n</body>\n</html>\n'
        )

    def header(self) -> str:
        r = self.result
        world = _map(r.get("world"))
        items: list[tuple[str, str]] = [
            ("seed", _esc(r.get("seed", DASH))),
            ("policy", _esc(r.get("policy", DASH))),
            ("policies", f'<span class="mono">{_esc(r.get("policies", DASH))}</span>'),
        ]
        if r.get("config_version"):
            items.append(("config", f'<span class="mono">{_esc(r["config_version"])}</span>'))
        items += [
            ("budget", _fmt_ms(self.budget, 0 if (self.budget or 0) % 1 == 0 else 2)),
            ("simulated", _fmt_duration(_num(r.get("duration_s")))),
            ("clock", _esc(r.get("mode", DASH))),
        ]
        if _num(r.get("scale")) is not None:
            items.append(("scale", _esc(f"{_num(r.get('scale')):g}")))
        if world:
            parts = []
            if _num(world.get("users")) is not None:
                parts.append(f"{_fmt_count(world.get('users'))} users")
            if _num(world.get("rate")) is not None:
                parts.append(f"{_num(world.get('rate')):g} searches/s")
            if parts:
                items.append(("world", _esc(", ".join(parts))))
        if _num(r.get("wall_s")) is not None:
            items.append(("run time", _esc(f"{_num(r.get('wall_s')):.1f} s")))
        meta = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
        description = r.get("description")
        desc = f'<p class="description">{_esc(description)}</p>' if description else ""
        return (
            '<header class="top">\n<p class="eyebrow">resilience simulate &middot; report</p>\n'
            f'<h1>Scenario <span class="name">{_esc(r.get("scenario", DASH))}</span></h1>\n'
            f'{desc}\n<dl class="meta">{meta}</dl>\n</header>'
        )

    # headline figures

    def headline(self) -> str:
        cards = [
            self.decisions_card(),
            self.latency_card(),
            self.lift_card(),
            self.ctr_card(),
            self.served_card(),
            self.diversity_card(),
        ]
        return (
            '<section class="headline" aria-labelledby="h-headline">\n'
            '<h2 id="h-headline">Headline figures</h2>\n'
            f'<div class="cards">\n{"".join(cards)}\n</div>\n</section>'
        )

    def decisions_card(self) -> str:
        r = self.result
        failed = _num(r.get("failed"))
        if failed is None:
            verdict = _badge("failures unknown", "neutral")
        elif failed == 0:
            verdict = _badge("no search failed", "ok")
        else:
            verdict = _badge(f"{_fmt_count(failed)} failed", "bad")
        return (
            '<div class="card" id="card-decisions"><h3>Decisions</h3>'
            f'<div class="big">{_fmt_count(r.get("decisions"))}</div>'
            '<div class="sub">searches decided</div>'
            f'<dl class="kv"><dt>failed</dt><dd>{_fmt_count(failed)}</dd></dl>'
            '<div class="note">raised, or answered without the candidates</div>'
            f'<p class="verdict">{verdict}</p></div>'
        )

    def latency_card(self) -> str:
        latency = _map(self.result.get("latency_ms"))
        budget = self.budget
        rows: list[str] = []
        for key, name in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
            value = _num(latency.get(key))
            if value is None or not budget:
                width, over = 0.0, False
            else:
                width, over = min(value / budget, 1.0), value > budget
            state = " over" if over else ""
            rows.append(
                f'<span class="name">{name}</span><span class="track" aria-hidden="true">'
                f'<span class="fill{state}" style="width: {width * 100:.1f}%"></span>'
                f'<span class="budget"></span></span>'
                f'<span class="value{state}">{_fmt_ms(value)}</span>'
            )
        p999 = _num(latency.get("p999"))
        if p999 is None or budget is None:
            verdict = _badge("p99.9 not measured", "neutral")
        elif p999 <= budget:
            verdict = _badge(f"p99.9 within the {_g(budget)} ms budget", "ok")
        else:
            verdict = _badge(f"p99.9 over the {_g(budget)} ms budget", "bad")
        return (
            '<div class="card" id="card-latency"><h3>Decision latency</h3>'
            f'<div class="sub">budget <strong>{_fmt_ms(budget, 0)}</strong> '
            "(the red mark)</div>"
            f'<div class="bullets">{"".join(rows)}</div>'
            f'<p class="verdict">{verdict}</p></div>'
        )

    def lift_card(self) -> str:
        lift = _map(self.result.get("lift"))
        estimate, low, high = (_num(lift.get(k)) for k in ("estimate", "ci_low", "ci_high"))
        true = _num(lift.get("true"))
        reason = lift.get("reason")
        if estimate is None or low is None or high is None:
            why = _esc(reason) if reason else "no estimate"
            return (
                '<div class="card" id="card-lift"><h3>Lift of personalization</h3>'
                f'<div class="big">not measured</div><div class="sub">{why}</div>'
                f'<dl class="kv"><dt>true lift</dt><dd>{_fmt_pct(true, signed=True)}</dd></dl>'
                "</div>"
            )
        holds = bool(lift.get("ci_contains_true"))
        verdict = (
            _badge("the interval holds the true lift", "ok")
            if holds
            else _badge("the interval misses the true lift", "bad")
        )
        if lift.get("conclusive") is False:
            verdict += " " + _badge("too small to conclude", "warn")
            if reason:
                verdict += f'<div class="note">{_esc(reason)}</div>'
        return (
            '<div class="card" id="card-lift"><h3>Lift of personalization</h3>'
            f'<div class="big">{_fmt_pct(estimate, signed=True)}</div>'
            f'<div class="sub">95% CI {_fmt_pct(low, signed=True)} to '
            f"{_fmt_pct(high, signed=True)}<br>true lift "
            f"<strong>{_fmt_pct(true, signed=True)}</strong></div>"
            f"{self.lift_plot(estimate, low, high, true)}"
            f'<p class="verdict">{verdict}</p></div>'
        )

    @staticmethod
    def lift_plot(estimate: float, low: float, high: float, true: float | None) -> str:
        """The interval on an axis through zero, the estimate as a dot, the truth as a diamond."""
        values = [0.0, estimate, low, high] + ([true] if true is not None else [])
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.12 or 0.05
        lo, hi = lo - pad, hi + pad
        width, left, right = 250.0, 16.0, 16.0

        def x(v: float) -> float:
            return left + (v - lo) / (hi - lo) * (width - left - right)

        parts = [
            '<svg id="plot-lift" class="chart" viewBox="0 0 250 58" width="100%" role="img" '
            'aria-labelledby="plot-lift-title" font-size="11">',
            '<title id="plot-lift-title">Estimated lift '
            f"{_fmt_pct(estimate, signed=True)}, 95% interval {_fmt_pct(low, signed=True)} to "
            f"{_fmt_pct(high, signed=True)}, true lift {_fmt_pct(true, signed=True)}</title>",
            f'<line x1="{_f(x(0))}" y1="6" x2="{_f(x(0))}" y2="40" stroke="{AXIS}"/>',
            f'<text x="{_f(x(0))}" y="53" text-anchor="middle" fill="{MUTED}">0</text>',
            f'<line x1="{_f(x(low))}" y1="23" x2="{_f(x(high))}" y2="23" stroke="#0a5cc2" '
            'stroke-width="6" stroke-linecap="round" stroke-opacity="0.35"/>',
            f'<circle cx="{_f(x(estimate))}" cy="23" r="5.5" fill="#0a5cc2"/>',
            f'<text x="{_f(x(low))}" y="53" text-anchor="middle" fill="{MUTED}">'
            f"{_fmt_pct(low, 0, signed=True)}</text>",
            f'<text x="{_f(x(high))}" y="53" text-anchor="middle" fill="{MUTED}">'
            f"{_fmt_pct(high, 0, signed=True)}</text>",
        ]
        if true is not None:
            tx = x(true)
            parts.append(
                f'<path d="M{_f(tx)},12L{_f(tx + 6)},23L{_f(tx)},34L{_f(tx - 6)},23Z" '
                f'fill="#e0a526" stroke="{INK}" stroke-width="1"><title>true lift</title></path>'
            )
            parts.append(f'<text x="{_f(tx)}" y="8" text-anchor="middle" fill="{INK}">true</text>')
        parts.append("</svg>")
        return "".join(parts)

    def ctr_card(self) -> str:
        ctr = _map(self.result.get("ctr"))
        groups = [(str(k), _num(v)) for k, v in ctr.items()]
        top = max((v for _, v in groups if v is not None), default=0.0) or 1.0
        rows = "".join(
            f'<span class="name">{_esc(name)}</span>'
            f'<span class="track" aria-hidden="true"><span class="fill" style="width: '
            f"{(value or 0) / top * 100:.1f}%; background: "
            f'{"#0a5cc2" if i == 0 else UNPERSONALIZED}"></span></span>'
            f'<span class="value">{_fmt_ratio(value, 4)}</span>'
            for i, (name, value) in enumerate(groups)
        )
        # the sample behind it, when the result has it: users and searches per group
        lift = _map(self.result.get("lift"))
        sizes = ""
        for key, label in (("users", "users"), ("exposures", "searches")):
            counts = _map(lift.get(key))
            if counts:
                sizes += (
                    f"<dt>{label}</dt><dd>"
                    + " / ".join(_fmt_count(counts.get(name)) for name, _ in groups)
                    + "</dd>"
                )
        if sizes:
            names = " / ".join(_esc(name) for name, _ in groups)
            sizes = f'<dl class="kv small"><dt></dt><dd class="head">{names}</dd>{sizes}</dl>'
        return (
            '<div class="card" id="card-ctr"><h3>CTR per group</h3>'
            '<div class="sub">clicks per search</div>'
            f'<div class="bullets ctr" style="grid-template-columns: 5.6em 1fr 3.6em">{rows}'
            f"</div>{sizes}</div>"
        )

    def diversity_card(self) -> str:
        div = _map(self.result.get("diversity"))
        coverage = _num(div.get("coverage"))
        p50, p90 = _num(div.get("age_p50_days")), _num(div.get("age_p90_days"))
        return (
            '<div class="card" id="card-diversity"><h3>Diversity</h3>'
            f'<div class="big">{_fmt_ratio(coverage)}</div>'
            '<div class="sub">mean category coverage of the top 10 served</div>'
            '<dl class="kv">'
            f"<dt>item age p50</dt><dd>{DASH if p50 is None else f'{p50:.1f} days'}</dd>"
            f"<dt>item age p90</dt><dd>{DASH if p90 is None else f'{p90:.1f} days'}</dd>"
            "</dl></div>"
        )

    def _stack(self, shares: Mapping[str, Any], colours: Mapping[str, str], cls: str = "") -> str:
        spans = []
        for name, value in shares.items():
            share = _num(value)
            if share is None or share <= 0:
                continue
            spans.append(
                f'<span style="width: {share * 100:.2f}%; background: '
                f'{colours.get(str(name), UNPERSONALIZED)}" title="{_esc(name)} '
                f'{_fmt_pct(share)}"></span>'
            )
        return f'<div class="stack {cls}" aria-hidden="true">{"".join(spans)}</div>'

    @staticmethod
    def _keys(shares: Mapping[str, Any], colours: Mapping[str, str]) -> str:
        items = "".join(
            f'<li><span class="swatch" style="background: '
            f'{colours.get(str(name), UNPERSONALIZED)}"></span>{_esc(name)} '
            f'<span class="share">{_fmt_pct(_num(value))}</span></li>'
            for name, value in shares.items()
        )
        return f'<ul class="keys">{items}</ul>'

    def served_card(self) -> str:
        served = _map(self.result.get("served_by"))
        reasons = _map(self.result.get("reasons"))
        parts = [
            f'<div class="card {"c5" if reasons else "c9"}" id="card-served"><h3>Served by</h3>'
            '<div class="sub">share of all decisions served by each tier of the chain</div>'
        ]
        if served:
            parts.append(self._stack(served, self.colours) + self._keys(served, self.colours))
        else:
            parts.append('<p class="note">nothing served</p>')
        parts.append("</div>")
        if reasons:
            colours = {
                str(k): REASON_COLOURS[i % len(REASON_COLOURS)] for i, k in enumerate(reasons)
            }
            parts.append(
                '<div class="card c4" id="card-reasons"><h3>Why</h3>'
                '<div class="sub">share of decisions by the reason in their trace</div>'
                f"{self._stack(reasons, colours)}{self._keys(reasons, colours)}</div>"
            )
        return "".join(parts)

    # plots over time

    def plots(self) -> str:
        tl = self.timeline
        t = [v if v is not None else math.nan for v in _series(tl.get("t"))]
        bucket = _num(tl.get("bucket_s"))
        if bucket is None or bucket <= 0:
            steps = [b - a for a, b in itertools.pairwise(t) if b > a]
            bucket = min(steps) if steps else 1.0
        duration = _num(self.result.get("duration_s")) or 0.0
        known_t = [v for v in t if math.isfinite(v)]
        x_end = max([duration, *(v + bucket for v in known_t)], default=0.0) or bucket
        markers = [
            Marker(_num(e.get("t")) or 0.0, str(e.get("label", "")))
            for e in (_map(x) for x in _list(tl.get("events")))
            if _num(e.get("t")) is not None
        ]
        bands = [
            Band(_num(p.get("start_s")) or 0.0, _num(p.get("end_s")) or 0.0, str(p.get("name")))
            for p in self.phases
        ]
        common: dict[str, Any] = {
            "t": t,
            "bucket": bucket,
            "x_end": x_end,
            "markers": markers,
            "bands": bands,
        }
        served = _map(tl.get("served_by"))
        stacked = [
            Series(str(name), _series(served[name]), self.colours.get(str(name), UNPERSONALIZED))
            for name in served
        ]
        latency = _map(tl.get("latency_ms"))
        lat_series = [
            Series("p50", _series(latency.get("p50")), "#0a5cc2", 2.2),
            Series("p99", _series(latency.get("p99")), "#c45a0f", 2.2),
            Series("max", _series(latency.get("max")), "#7b52d3", 1.4, dash="5 3"),
        ]
        # scale latency to the budget and the p99, not to a single slow outlier
        p99_top = max((v for v in lat_series[1].values if v is not None), default=0.0)
        cap = max(2 * (self.budget or 0.0), 1.25 * p99_top) or None
        error = _series(tl.get("error_rate"))
        lag = _series(tl.get("lag_s"))
        coverage = _series(tl.get("coverage"))

        def pct(v: float) -> str:
            return f"{v:.0%}" if abs(v * 100 - round(v * 100)) < 1e-6 else f"{v:.1%}"

        def ms(v: float) -> str:
            return f"{v:.4g} ms"

        def sec(v: float) -> str:
            return f"{v:.4g} s"

        def ratio(v: float) -> str:
            return f"{v:.2f}"

        budget_line = (
            [Threshold(self.budget, f"budget {_g(self.budget)} ms")] if self.budget else []
        )
        error_line = (
            [Threshold(self.error_threshold, f"error_rate guard {pct(self.error_threshold)}")]
            if self.error_threshold is not None
            else []
        )
        lag_line = (
            [Threshold(self.lag_threshold, f"stream_lag guard {_g(self.lag_threshold)} s")]
            if self.lag_threshold is not None
            else []
        )
        charts = [
            (
                Chart(
                    id="plot-served-by",
                    title="Share of searches served by each tier",
                    description=" ".join(describe(s.label, s.values, t, pct) for s in stacked),
                    y_format=pct,
                    stacked=stacked,
                    y_max=1.0,
                    **common,
                ),
                "Share served by each tier",
                "per bucket, tiers stacked in chain order; a gap is a bucket without searches",
            ),
            (
                Chart(
                    id="plot-latency",
                    title="Decision latency p50, p99 and max against the budget",
                    description=" ".join(describe(s.label, s.values, t, ms) for s in lat_series)
                    + (f" Budget {_g(self.budget)} ms." if self.budget else ""),
                    y_format=ms,
                    lines=lat_series,
                    thresholds=budget_line,
                    y_cap=cap,
                    **common,
                ),
                "Decision latency",
                "per bucket, virtual plus real time; the dashed red line is the budget",
            ),
            (
                Chart(
                    id="plot-error-rate",
                    title="Personalization error rate seen by the error_rate guard",
                    description=describe("error rate", error, t, pct)
                    + (
                        f" Threshold {pct(self.error_threshold)}."
                        if self.error_threshold is not None
                        else ""
                    ),
                    y_format=pct,
                    lines=[Series("error rate", error, "#b5418b", 2.2, fill=True)],
                    thresholds=error_line,
                    **common,
                ),
                "Personalization error rate",
                "the error_rate guard's window ratio at the end of each bucket",
            ),
            (
                Chart(
                    id="plot-lag",
                    title="Stream lag seen by the stream_lag guard",
                    description=describe("stream lag", lag, t, sec)
                    + (
                        f" Threshold {_g(self.lag_threshold)} s."
                        if self.lag_threshold is not None
                        else ""
                    ),
                    y_format=sec,
                    lines=[Series("stream lag", lag, "#0f7c8c", 2.2, fill=True)],
                    thresholds=lag_line,
                    **common,
                ),
                "Stream lag",
                "the lag the stream_lag guard last read, at the end of each bucket",
            ),
            (
                Chart(
                    id="plot-coverage",
                    title="Category coverage of the top 10 served",
                    description=describe("coverage", coverage, t, ratio),
                    y_format=ratio,
                    lines=[Series("coverage", coverage, "#1f8a4c", 2.2, fill=True)],
                    y_max=1.0,
                    **common,
                ),
                "Category coverage",
                "mean category coverage of the top 10 served, per bucket",
            ),
        ]
        figures = [
            f'<figure aria-labelledby="{chart.id}-caption"><h3 id="{chart.id}-caption">'
            f'{_esc(heading)}<span class="aside">{_esc(caption)}</span></h3>'
            f"{render_chart(chart)}</figure>"
            for chart, heading, caption in charts
        ]
        width = _fmt_s(bucket)
        aside = f"one point per {width} of virtual time"
        if markers:
            aside += "; dashed verticals mark the scenario's events"
        return (
            '<section class="plots" aria-labelledby="h-plots">\n'
            f'<h2 id="h-plots">Over time<span class="aside">{_esc(aside)}</span></h2>\n'
            + "\n".join(figures)
            + "\n</section>"
        )

    # tables

    def phase_table(self) -> str:
        head = '<h2 id="h-phases">Phases</h2>'
        if not self.phases:
            return (
                f'<section aria-labelledby="h-phases">{head}'
                '<p class="empty">The scenario has no phases.</p></section>'
            )
        rows: list[str] = []
        for phase in self.phases:
            lat = _map(phase.get("latency_ms"))
            served = _map(phase.get("served_by"))
            ctr = _map(phase.get("ctr"))
            cells = []
            for key in ("p50", "p99", "p999", "max"):
                value = _num(lat.get(key))
                over = value is not None and self.budget is not None and value > self.budget
                cells.append(f'<td class="num{" over" if over else ""}">{_fmt_ms(value)}</td>')
            ranked = sorted(
                ((v, str(k)) for k, v in served.items() if (_num(v) or 0) > 0), reverse=True
            )[:2]
            text = ", ".join(f"{_esc(k)} {_fmt_pct(_num(v), 0)}" for v, k in ranked) or DASH
            transitions = [_map(x) for x in _list(phase.get("transitions"))]
            notable = sum(1 for x in transitions if not _is_probe(str(x.get("what", ""))))
            failed = _num(phase.get("failed"))
            start, end = _num(phase.get("start_s")), _num(phase.get("end_s"))
            rows.append(
                f'<tr><td class="nowrap"><strong>{_esc(phase.get("name", DASH))}</strong></td>'
                f'<td class="num">{_fmt_span(start, end)}</td>'
                f'<td class="num">{_fmt_count(phase.get("decisions"))}</td>'
                f'<td class="num{" over" if failed else ""}">{_fmt_count(failed)}</td>'
                + "".join(cells)
                + f"<td>{self._stack(served, self.colours, 'small')}"
                f'<span class="served-text">{text}</span></td>'
                f'<td class="num">{_fmt_ratio(_num(ctr.get("treatment")), 3)} / '
                f"{_fmt_ratio(_num(ctr.get('holdout')), 3)}</td>"
                f'<td class="num">{_fmt_ratio(_num(phase.get("coverage")))}</td>'
                f'<td class="num">{notable}</td></tr>'
            )
        return (
            f'<section aria-labelledby="h-phases">{head}<div class="table-wrap">'
            '<table class="phases">'
            '<thead><tr><th>phase</th><th class="num">span</th>'
            '<th class="num">decisions</th><th class="num">failed</th>'
            '<th class="num">p50</th><th class="num">p99</th><th class="num">p99.9</th>'
            '<th class="num">max</th><th class="served">served by</th>'
            '<th class="num">CTR treat. / hold.</th><th class="num">coverage</th>'
            '<th class="num" title="trips and recoveries">changes</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
            '<p class="note">Latency above the budget in red. Changes counts trips and '
            "recoveries (half-opens and failed probes are in the transitions below).</p>"
            "</section>"
        )

    def guardrail_table(self) -> str:
        guardrails = _map(self.result.get("guardrails"))
        head = '<h2 id="h-guardrails">Guardrails</h2>'
        if not guardrails:
            return (
                f'<section aria-labelledby="h-guardrails">{head}'
                '<p class="empty">The policy declares no guard, breaker or switch.</p></section>'
            )
        rows: list[str] = []
        for name, entry in guardrails.items():
            g = _map(entry)
            tripped, recovered = _num(g.get("tripped")), _num(g.get("recovered"))
            if tripped is None:
                status = _badge("unknown", "neutral")
            elif tripped == 0:
                status = _badge("never tripped", "neutral")
            elif recovered is not None and recovered >= tripped:
                status = _badge("recovered", "ok")
            else:
                status = _badge("open at the end", "warn")
            kind = str(g.get("kind", ""))
            kind_cls = f"kind-{kind}" if kind in {"guard", "breaker", "flag"} else "neutral"
            rows.append(
                f'<tr><td><strong class="mono">{_esc(name)}</strong></td>'
                f"<td>{_badge(_esc(kind or DASH), kind_cls)}</td>"
                f"<td>{_esc(g.get('type', DASH))}</td>"
                f'<td class="num">{_fmt_count(tripped)}</td>'
                f'<td class="num">{_fmt_count(recovered)}</td><td>{status}</td></tr>'
            )
        return (
            f'<section aria-labelledby="h-guardrails">{head}<div class="table-wrap"><table>'
            '<thead><tr><th>name</th><th>kind</th><th>type</th><th class="num">tripped</th>'
            '<th class="num">recovered</th><th>status</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div></section>"
        )

    def _phase_at(self, t: float | None) -> str:
        if t is None:
            return ""
        for phase in self.phases:
            start, end = _num(phase.get("start_s")), _num(phase.get("end_s"))
            if start is not None and end is not None and start <= t < end:
                return str(phase.get("name", ""))
        return ""

    def transition_table(self) -> str:
        transitions = [_map(x) for x in _list(self.result.get("transitions"))]
        head = '<h2 id="h-transitions">Transitions</h2>'
        if not transitions:
            return (
                f'<section aria-labelledby="h-transitions">{head}'
                '<p class="empty">Nothing changed state during the run.</p></section>'
            )
        rows: list[str] = []
        probes = 0
        for x in transitions:
            what = str(x.get("what", ""))
            t = _num(x.get("t"))
            probe = _is_probe(what)
            probes += probe
            kind = str(x.get("kind", ""))
            kind_cls = (
                f"kind-{kind}" if kind in {"guard", "breaker", "flag", "reload"} else "neutral"
            )
            row_class = ' class="muted"' if probe else ""
            rows.append(
                f'<tr{row_class}><td class="num">{_fmt_time(t)}</td>'
                f'<td class="nowrap">{_esc(self._phase_at(t))}</td>'
                f"<td>{_badge(_esc(kind or DASH), kind_cls)}</td>"
                f'<td class="what">{_esc(what)}</td></tr>'
            )
        notable = len(transitions) - probes
        aside = f"{notable} trips, recoveries and operations"
        if probes:
            aside += f", {probes} half-opens and failed probes (greyed)"
        return (
            f'<section aria-labelledby="h-transitions">'
            f'<h2 id="h-transitions">Transitions<span class="aside">{_esc(aside)}</span></h2>'
            '<div class="table-wrap"><table class="transitions">'
            '<thead><tr><th class="num">time</th><th>phase</th><th>kind</th><th>what</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
        )

    def footer(self) -> str:
        r = self.result
        return (
            '<footer>Written by <span class="mono">resilience simulate --report</span> '
            f"for scenario {_esc(r.get('scenario', DASH))}, seed {_esc(r.get('seed', DASH))}. "
            "The same seed gives the same run. Self-contained: this page loads nothing."
            "</footer>"
        )
