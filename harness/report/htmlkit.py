"""The frame every harness HTML page shares: inline CSS, tables, escaping, value formatting.

Everything is inline (no CDN, no font, no image fetched) so a page opens offline from a CI
artifact store; a small inline script only records script errors in the page itself, which the
browser test reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from collections.abc import Sequence
from html import escape
from typing import Any
from urllib.parse import quote

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1280px;padding:16px 24px;
color:#1b1f24}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top;
overflow-wrap:break-word}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-size:20px;font-weight:700;padding:10px 14px;border-radius:6px;margin:10px 0}
.v-QUALIFIED{background:#dafbe1;color:#116329}.v-NOT-QUALIFIED{background:#ffebe9;color:#a40e26}
.v-INCOMPLETE{background:#fff8c5;color:#7d4e00}.verdict div{font-size:14px;margin-top:4px}
td.passed,span.passed{background:#dafbe1}td.failed,span.failed{background:#ffebe9}
td.skipped,span.skipped{background:#f6f8fa;color:#57606a}td.unknown,span.unknown{background:#fff8c5}
td.absent{color:#8c959f}
.status{font-weight:700;font-size:12px}
.fig{display:block;font-size:12px;color:#333}
.missing{color:#a40e26;font-style:italic}
pre{background:#0d1117;color:#e6edf3;padding:8px;overflow-x:auto;font-size:12px;max-height:360px}
pre.log{max-height:none}
.note{background:#f6f8fa;border-left:4px solid #8c959f;padding:6px 10px}
.hint{background:#ddf4ff;border-left:4px solid #0969da;padding:6px 10px}
figure.chart{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}
figure.chart figcaption{font-weight:600;font-size:13px}
svg.plot text{font-size:11px;fill:#333}svg.plot .label{font-size:12px}
svg.plot .grid{stroke:#eee}svg.plot .axis{stroke:#555}
svg.plot .ref{stroke:#a40e26;stroke-dasharray:5 4}svg.plot .reflabel{fill:#a40e26}
svg.plot .marker{stroke:#9467bd;stroke-dasharray:2 3;stroke-width:2}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
.trend{display:inline-block;vertical-align:top}details{margin:6px 0}summary{cursor:pointer}
.controls input,.controls select{margin-right:12px}
""".strip()

# Script errors end up in the page (data-errors on <body>): the browser test reads them.
ERROR_TRAP = (
    "<script>window.__errors=[];window.addEventListener('error',function(e){"
    "window.__errors.push(String(e.message));"
    "document.body.setAttribute('data-errors',window.__errors.join(' | '));});</script>"
)


def page(title: str, body: Iterable[str], script: str = "") -> str:
    """A whole HTML document: title, inline CSS, body parts, an optional inline script."""
    tail = f"<script>{script}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width\"><title>{escape(title)}</title>"
        f"<style>{CSS}</style>{ERROR_TRAP}</head><body>\n"
        + "\n".join(body)
        + f"\n{tail}</body></html>\n"
    )


def fmt(value: Any) -> str:
    """A value as a person reads it: 4 significant digits, NaN as 'not measured'."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return "not measured" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple) and len(value) == 2 and all(
        isinstance(v, int | float) for v in value
    ):
        return f"[{fmt(float(value[0]))}, {fmt(float(value[1]))}]"
    return str(value)


def esc(value: Any) -> str:
    return escape(fmt(value))


def href(path: str) -> str:
    """A link to a file beside the page, relative and percent-encoded (cell ids hold @)."""
    return quote(path, safe="/._-~")


def link(path: str, text: str) -> str:
    return f'<a href="{href(path)}">{escape(text)}</a>'


def table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    classes: Iterable[Sequence[str]] | None = None,
    table_id: str = "",
) -> str:
    """A table whose cells are already-escaped HTML; `classes` gives a CSS class per cell."""
    ident = f' id="{table_id}"' if table_id else ""
    out = [f"<table{ident}><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    class_rows = iter(classes) if classes is not None else None
    for row in rows:
        cls = next(class_rows) if class_rows is not None else [""] * len(row)
        cells = "".join(
            f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>"
            for v, c in zip(row, cls, strict=True)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def section(title: str, *parts: str, ident: str = "") -> str:
    anchor = f' id="{ident}"' if ident else ""
    return f"<section{anchor}><h2>{escape(title)}</h2>" + "".join(parts) + "</section>"


def para(text: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<p{c}>{escape(text)}</p>"
