"""Inline SVG charts: what they draw, and that odd data (NaN, one point, zero on a log axis,
nothing at all) gives a visible chart or a visible "no data", never an exception."""

from __future__ import annotations

import math
import re

from harness.report import svg


def _points(html: str) -> int:
    return len(re.findall(r"<circle ", html))


def test_a_line_chart_marks_every_point_with_its_value_and_draws_its_reference_lines():
    chart = svg.Chart("tok/s", "concurrency", "tok/s",
                      [svg.Series("a", [(1, 10.0), (32, 200.0)]), svg.Series("b", [(1, 9.0)])],
                      log_x=True, ref_lines=[(50.0, "gate >= 50")], markers=[(4, "change")])
    html = svg.line_chart(chart)
    assert _points(html) == 3 and "<title>a: 32 → 200</title>" in html
    assert 'class="ref"><title>gate &gt;= 50: 50</title>' in html
    assert 'class="marker"><title>change</title>' in html
    assert html.count('class="data"') == 2


def test_odd_values_are_left_out_and_an_empty_chart_says_so():
    chart = svg.Chart("x", "c", "y", [svg.Series("a", [(0, 1.0), (2, math.nan), (4, 3.0)])],
                      log_x=True)
    assert _points(svg.line_chart(chart)) == 1  # x=0 has no place on a log axis, NaN none
    empty = svg.line_chart(svg.Chart("nothing", "c", "y", [svg.Series("a", [])]))
    assert 'class="missing">no data points</p>' in empty
    assert 'class="missing">no values</p>' in svg.histogram("h", [math.nan], "ms")


def test_a_histogram_counts_every_value_and_marks_p50_and_p99():
    values = [float(v) for v in range(1, 101)]
    html = svg.histogram("TTFT", values, "ms", bins=10)
    counts = [int(c) for c in re.findall(r": (\d+)</title></rect>", html)]
    assert sum(counts) == 100 and len(counts) == 10
    assert "p50 51" in html and "p99 100" in html


def test_ticks_cover_the_data():
    ticks = svg._nice_ticks(0.0, 0.918)
    assert ticks[0] == 0.0 and ticks[-1] >= 0.918
