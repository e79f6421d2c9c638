"""Inline SVG charts: line charts and histograms with no plotting library and no script.

Why hand-made: the report must open offline from a CI artifact store as one file, and a page
of a 100-cell history must stay small and fast; a few hundred lines of SVG per chart do that,
and every point carries a `<title>` so hovering shows its exact value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
W, H = 580, 280
HW, HH = 380, 200  # histograms: small, side by side
LEFT, RIGHT, TOP, BOTTOM = 64, 36, 16, 56


@dataclass(frozen=True)
class Series:
    """One line: a name for the legend and (x, y) points."""

    name: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Chart:
    """What a line chart shows; x ticks may be labels (run ids) instead of numbers."""

    title: str
    x_label: str
    y_label: str
    series: Sequence[Series]
    log_x: bool = False
    x_tick_labels: dict[float, str] = field(default_factory=dict)
    ref_lines: Sequence[tuple[float, str]] = ()  # horizontal: (y, label)
    markers: Sequence[tuple[float, str]] = ()  # vertical: (x, label), e.g. change points
    width: int = W
    height: int = H


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.2g}"
    return f"{v:.4g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round ticks from below `lo` to at or above `hi`: no point is drawn off the grid."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    ticks = [math.floor(lo / step) * step]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _finite(points: Sequence[tuple[float, float]], log_x: bool) -> list[tuple[float, float]]:
    return [
        (x, y) for x, y in points
        if math.isfinite(x) and math.isfinite(y) and (not log_x or x > 0)
    ]


def line_chart(chart: Chart) -> str:
    """An SVG line chart (points marked); an empty chart says so in place of the plot."""
    series = [Series(s.name, _finite(s.points, chart.log_x)) for s in chart.series]
    series = [s for s in series if s.points]
    if not series:
        return empty(chart.title, "no data points")
    # the axis spans every labelled x (all runs of a trend), not only this series' points
    xs = [x for s in series for x, _ in s.points] + [x for x, _ in chart.markers] + [
        x for x in chart.x_tick_labels if not chart.log_x or x > 0]
    ys = [y for s in series for _, y in s.points] + [y for y, _ in chart.ref_lines]
    fx = math.log2 if chart.log_x else float
    x0, x1 = fx(min(xs)), fx(max(xs))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y_ticks = _nice_ticks(min(0.0, min(ys)), max(ys) * 1.05 if max(ys) > 0 else 1.0)
    y0, y1 = y_ticks[0], y_ticks[-1]
    w, h = chart.width, chart.height
    pw, ph = w - LEFT - RIGHT, h - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (fx(x) - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / ((y1 - y0) or 1.0) * ph

    out = [_open(chart.title, w, h)]
    for t in y_ticks:
        out.append(f'<line x1="{LEFT}" x2="{w - RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
                   'class="grid"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for x, label in _x_ticks(chart, sorted({x for s in series for x, _ in s.points}), w):
        out.append(f'<text x="{px(x):.1f}" y="{h - BOTTOM + 16}" text-anchor="middle">'
                   f"{escape(label)}</text>")
    for y, label in chart.ref_lines:
        out.append(f'<line x1="{LEFT}" x2="{w - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                   f'class="ref"><title>{escape(label)}: {_fmt(y)}</title></line>')
        out.append(f'<text x="{w - RIGHT - 4}" y="{py(y) - 4:.1f}" text-anchor="end" '
                   f'class="reflabel">{escape(label)}</text>')
    for x, label in chart.markers:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" y2="{TOP + ph}" '
                   f'class="marker"><title>{escape(label)}</title></line>')
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        pts = sorted(s.points)
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                   'stroke-width="2" class="data"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}">'
                       f"<title>{escape(s.name)}: {escape(chart.x_tick_labels.get(x, _fmt(x)))}"
                       f" → {_fmt(y)}</title></circle>")
    out.append(_axes(chart.x_label, chart.y_label, w, h))
    out.append("</svg>")
    return _figure(chart.title, "".join(out), [s.name for s in series], w)


def _x_ticks(chart: Chart, xs: list[float], width: int) -> list[tuple[float, str]]:
    if chart.x_tick_labels:
        keep = max(1, math.ceil(len(chart.x_tick_labels) / max(2, (width - LEFT) // 80)))
        items = sorted(chart.x_tick_labels.items())
        return [item for i, item in enumerate(items) if i % keep == 0]
    keep = max(1, math.ceil(len(xs) / 10))
    return [(x, _fmt(x)) for i, x in enumerate(xs) if i % keep == 0]


def histogram(title: str, values: Sequence[float], x_label: str, bins: int = 24) -> str:
    """Counts per bin with the median and p99 marked: the shape a mean hides."""
    vals = sorted(v for v in values if math.isfinite(v))
    if not vals:
        return empty(title, "no values")
    lo, hi = vals[0], vals[-1]
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    pw, ph = HW - LEFT - RIGHT, HH - TOP - BOTTOM
    top = max(counts)
    out = [_open(title, HW, HH)]
    bw = pw / bins
    for i, c in enumerate(counts):
        if not c:
            continue
        h = c / top * ph
        out.append(f'<rect x="{LEFT + i * bw:.1f}" y="{TOP + ph - h:.1f}" width="{bw - 1:.1f}" '
                   f'height="{h:.1f}" fill="{PALETTE[0]}" class="data"><title>'
                   f"{_fmt(lo + i * width)}–{_fmt(lo + (i + 1) * width)}: {c}</title></rect>")
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        v = vals[min(len(vals) - 1, int(q * len(vals)))]
        x = LEFT + (v - lo) / ((hi - lo) or 1.0) * pw
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" class="marker">'
                   f"<title>{name} {_fmt(v)}</title></line>")
        anchor, dx = ("end", -3) if x > HW - RIGHT - 70 else ("start", 3)
        out.append(f'<text x="{x + dx:.1f}" y="{TOP + (12 if q < 0.9 else 26)}" '
                   f'text-anchor="{anchor}">{name} {_fmt(v)}</text>')
    for v in (lo, (lo + hi) / 2, hi):
        x = LEFT + (v - lo) / ((hi - lo) or 1.0) * pw
        out.append(f'<text x="{x:.1f}" y="{HH - BOTTOM + 16}" text-anchor="middle">{_fmt(v)}'
                   "</text>")
    out.append(f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top}</text>')
    out.append(_axes(x_label, "requests", HW, HH))
    out.append("</svg>")
    return _figure(title, "".join(out), [f"{len(vals)} requests"], HW)


def empty(title: str, why: str) -> str:
    """A chart's place when there is nothing to draw: visible, never a blank gap."""
    return (f'<figure class="chart empty"><figcaption>{escape(title)}</figcaption>'
            f'<p class="missing">{escape(why)}</p></figure>')


def _open(title: str, w: int = W, h: int = H) -> str:
    return (f'<svg class="plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
            f'aria-label="{escape(title)}">')


def _axes(x_label: str, y_label: str, w: int = W, h: int = H) -> str:
    ph = h - TOP - BOTTOM
    return (f'<line x1="{LEFT}" x2="{w - RIGHT}" y1="{TOP + ph}" y2="{TOP + ph}" class="axis"/>'
            f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + ph}" class="axis"/>'
            f'<text x="{LEFT + (w - LEFT - RIGHT) / 2}" y="{h - 12}" text-anchor="middle" '
            f'class="label">{escape(x_label)}</text>'
            f'<text transform="translate(14 {TOP + ph / 2}) rotate(-90)" text-anchor="middle" '
            f'class="label">{escape(y_label)}</text>')


def _figure(title: str, svg: str, legend: list[str], width: int = W) -> str:
    items = "".join(
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{escape(n)}</span>'
        for i, n in enumerate(legend)
    )
    return (f'<figure class="chart" style="max-width:{width}px">'
            f"<figcaption>{escape(title)}</figcaption>{svg}"
            f'<div class="legend">{items}</div></figure>')
