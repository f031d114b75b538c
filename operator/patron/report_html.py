"""`patron report -o html`: one self-contained page (inline CSS and SVG, no script, no fetch).

Pure: a report dict from patron.report.build_report in, HTML text out. Every piece of text that
came from data (customer names, tiers, Event messages) goes through `_e`: control characters made
visible (patron.text.printable), then HTML-escaped. Charts draw only points that exist; a chart
without data says so instead.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from patron.report import ACTION_EVENTS, WORST_HEADER, summary_facts, worst_rows
from patron.status import parse_timestamp
from patron.text import printable

WIDTH, HEIGHT = 860, 280
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 24, 40
NO_COUNTS = "No data: Prometheus was not reachable, failed requests per customer unknown."
COLOURS = {"active": "#3b73b9", "impacted": "#d9534f"}
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:900px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1.2em}dt{font-weight:600}dd{margin:0}
.nodata{color:#8a5a00;background:#fff7e0;padding:.5em;border:1px solid #f0d68a}
svg text{font-size:11px;fill:#444}.legend span{margin-right:1.2em}.sw{display:inline-block;width:1em;height:.6em}
"""


def _e(value: object) -> str:
    """Text from data, safe in HTML text and attributes: controls visible, then escaped."""
    return html.escape(printable(str(value)), quote=True)


def render_html(report: Mapping[str, Any]) -> str:
    title = f"Incident report: {report['customerSLO']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>Service {_e(report['service'])}, objective {_e(report['objective'])}% per customer. "
        f"Severity now: {_e(report['severityNow'])}.</p>",
    ]
    inc = report.get("incident")
    if not inc:
        parts.append("<p>No incident recorded.</p>")
        return "\n".join([*parts, "</body></html>"]) + "\n"
    parts.append('<h2>Summary</h2><dl class="summary" id="summary">')
    parts += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in summary_facts(inc)]
    parts.append("</dl>")
    markers = [r for r in inc["timeline"] if r["event"] in ACTION_EVENTS]
    parts.append("<h2>Impacted and active customers</h2>")
    parts.append(_customers_chart(inc, markers))
    parts.append("<h2>Worst-hit customers: failed requests</h2>")
    if inc["failedRequestsByCustomer"] is None:
        parts.append(
            '<p class="nodata">No data: Prometheus was not reachable, failed requests per customer unknown.</p>'
        )
    else:
        parts.append(_bar_chart([(c["customer"], c["failedRequests"]) for c in inc["worstCustomers"]]))
        parts.append(_table(WORST_HEADER, worst_rows(inc), numeric={2, 3, 4}))
    parts.append("<h2>Timeline</h2>")
    parts.append(_table(("#", "TIME", "EVENT", "DETAIL"), _timeline_rows(inc["timeline"])))
    held = [
        (a.get("type", ""), a.get("target", ""), a.get("customer") or "", a.get("since", ""))
        for a in inc["actionsHeld"]
    ]
    parts.append("<h2>Actions held now</h2>")
    parts.append(_table(("TYPE", "TARGET", "CUSTOMER", "SINCE"), held))
    return "\n".join([*parts, "</body></html>"]) + "\n"


def _timeline_rows(timeline: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """Timeline rows; an action's first cell is the number its marker carries on the chart."""
    rows, n = [], 0
    for r in timeline:
        mark = ""
        if r["event"] in ACTION_EVENTS:
            n += 1
            mark = str(n)
        rows.append((mark, r["time"], r["event"], r["message"]))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i in (numeric or set()) else ''}>{_e(c)}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _unix(text: str) -> float:
    return parse_timestamp(text).timestamp()


def _clock(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%H:%M")


def _ticks(top: float) -> list[float]:
    """About five round steps from 0 to at least `top`."""
    raw = max(top, 1.0) / 5
    magnitude = 10 ** len(str(int(raw))) / 10
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(top // step) + 2)]


def _customers_chart(inc: Mapping[str, Any], markers: Sequence[Mapping[str, Any]]) -> str:
    """Active and impacted customers over the incident as the operator exported them (its metric
    patron_customerslo_customers in Prometheus), actions marked on the time axis."""
    data = inc.get("customersOverTime")
    if not data or not any(data.values()):
        return (
            '<p class="nodata">No data: Prometheus holds no patron_customerslo_customers series for this '
            "CustomerSLO over the incident (the operator's metrics are not scraped, or Prometheus was not "
            "reachable). The chart is left out rather than drawn from guesses.</p>"
        )
    points: list[list[float]] = [p for series in data.values() for p in series]
    t0 = min([_unix(inc["started"]), *(p[0] for p in points)])
    t1 = max([_unix(inc["ended"]) if inc["ended"] else 0.0, *(p[0] for p in points)])
    t1 = max(t1, t0 + 60)
    ticks = _ticks(max(p[1] for p in points))
    ymax = ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - v / ymax * plot_h

    svg = [_svg_open("Impacted and active customers over the incident")]
    for v in ticks:
        svg.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for i in range(7):
        t = t0 + (t1 - t0) * i / 6
        svg.append(f'<text x="{x(t):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_clock(t)}</text>')
    svg.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">time (UTC)</text>')
    for n, row in enumerate(markers, 1):
        tx = x(min(max(_unix(row["time"]), t0), t1))
        svg.append(
            f"<g><title>{_e(row['time'])} {_e(row['event'])}: {_e(row['message'])}</title>"
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#7a4fb5" '
            'stroke-dasharray="4 3"/>'
            f'<text x="{tx:.1f}" y="{TOP - 6}" text-anchor="middle" style="fill:#7a4fb5">{n}</text></g>'
        )
    for state, series in data.items():
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in series)
        colour = COLOURS.get(state, "#555")
        svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
    svg.append(_axes(plot_w, plot_h))
    svg.append("</svg>")
    legend = "".join(
        f'<span><i class="sw" style="background:{COLOURS[s]}"></i> {s} customers</span>' for s in ("active", "impacted")
    )
    note = " Dashed purple lines: actions, numbered as in the timeline." if markers else ""
    source = "Source: the operator's metric patron_customerslo_customers in Prometheus."
    return "".join(svg) + f'<p class="legend">{legend}</p><p><small>{source}{note}</small></p>'


def _bar_chart(rows: Sequence[tuple[str, int]]) -> str:
    """Failed requests of the worst customers, one horizontal bar each."""
    if not rows:
        return '<p class="nodata">No data: no affected customer had requests in Prometheus over the incident.</p>'
    bar, gap, label_w = 20, 6, 200
    height = TOP + len(rows) * (bar + gap) + 10
    top = max(max(v for _, v in rows), 1)
    scale = (WIDTH - label_w - RIGHT - 70) / top
    svg = [_svg_open("Failed requests of the worst-hit customers", height)]
    for i, (name, value) in enumerate(rows):
        y0 = TOP + i * (bar + gap)
        short = name if len(name) <= 28 else name[:27] + "…"
        svg.append(
            f"<g><title>{_e(name)}: {value} failed requests</title>"
            f'<text x="{label_w - 6}" y="{y0 + bar - 6}" text-anchor="end">{_e(short)}</text>'
            f'<rect x="{label_w}" y="{y0}" width="{max(value * scale, 1):.1f}" height="{bar}" fill="#d9534f"/>'
            f'<text x="{label_w + value * scale + 6:.1f}" y="{y0 + bar - 6}">{value}</text></g>'
        )
    svg.append("</svg>")
    return "".join(svg)


def _svg_open(label: str, height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_e(label)}">'
    )


def _axes(plot_w: float, plot_h: float) -> str:
    return (
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#888"/>'
        f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#888"/>'
    )
