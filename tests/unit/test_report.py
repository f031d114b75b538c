"""The report's renderers on hand-built inputs: the outreach CSV and the HTML page."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from patron.reconcile import parse_spec
from patron.report import IncidentData, build_report, render, spreadsheet_safe
from patron.report_html import render_html
from patron.status import timestamp
from tests.support.catalog import manifest

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HOSTILE = ['big, "quoted" co\nline two', '=HYPERLINK("http://x")', "+1", "-2", "@sum", "plain", "<b>&amp;</b>"]


def minute(i: int) -> float:
    return (START + timedelta(minutes=i)).timestamp()


def incident_obj(affected: list[str], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": "checkout"},
        "status": {
            "severity": "warning",
            "incident": {
                "started": timestamp(START),
                "ended": timestamp(START + timedelta(minutes=10)),
                "peakSeverity": "critical",
                "customersAffected": len(affected),
                "peakImpactedCustomers": len(affected),
                "affected": affected,
                "lost": affected[:1],
                "storming": affected[1:2],
            },
            **status,
        },
    }


def spec() -> Any:
    tiers = [
        {"name": "enterprise", "weight": 10, "customers": ["plain"]},
        {"name": "gold", "weight": 5, "pattern": "^@"},
    ]
    return parse_spec(manifest("checkout", customers={"tiers": tiers})["spec"])


def per_minute(values: dict[str, list[float]]) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    return [({"customer": c}, [(minute(i + 1), v) for i, v in enumerate(vs)]) for c, vs in values.items()]


def hostile_report() -> dict[str, Any]:
    requests = {c: [60.0] * 10 for c in HOSTILE}
    bad = {c: [0.0] * 10 for c in HOSTILE}
    bad["plain"] = [0, 0, 6, 30, 0, 0, 0, 0, 0, 0]  # failed minutes 10:02 and 10:03, worst 50%
    bad["-2"] = [60.0] * 10
    counts = {
        "requests": [({"customer": c}, 600.0) for c in HOSTILE],
        "bad": [({"customer": c}, sum(bad[c])) for c in HOSTILE],
    }
    actions = [
        {"type": "Throttle", "target": "ConfigMap/rl", "customer": "+1", "state": "Active", "since": timestamp(START)},
        {"type": "Throttle", "customer": "@sum", "state": "Skipped", "since": timestamp(START)},
        "not a record",
        {"type": "Scale", "target": "Deployment/checkout", "state": "Active"},
    ]
    data = IncidentData(minutes={"requests": per_minute(requests), "bad": per_minute(bad)})
    return build_report(incident_obj(HOSTILE, actions=actions), [], counts, spec(), data)


def test_csv_round_trip_sorted_by_tier_weight_then_failed_requests() -> None:
    text = render(hostile_report(), "csv")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    # Names come back as written, except that a formula-like start carries an apostrophe.
    assert sorted(r["customer"] for r in rows) == sorted(spreadsheet_safe(c) for c in HOSTILE)
    assert rows[0]["customer"] == "plain" and rows[0]["tier"] == "enterprise"
    assert rows[1]["customer"] == "'@sum" and rows[1]["tier"] == "gold"
    assert rows[2]["customer"] == "'-2"  # tier none (weight 1): the most failed requests first
    assert rows[2]["failed_requests"] == "600" and rows[2]["worst_error_ratio"] == "1.0000"
    plain = rows[0]
    assert plain["first_failed_minute"] == "2026-11-26T10:02:00Z"
    assert plain["last_failed_minute"] == "2026-11-26T10:03:00Z"
    assert plain["failed_requests"] == "36" and plain["worst_error_ratio"] == "0.5000"
    by_name = {r["customer"]: r for r in rows}
    assert by_name[spreadsheet_safe(HOSTILE[0])]["lost"] == "true"
    assert by_name['\'=HYPERLINK("http://x")']["storming"] == "true"
    assert by_name["'+1"]["throttled"] == "true" and by_name["'@sum"]["throttled"] == "false"
    assert by_name["<b>&amp;</b>"]["first_failed_minute"] == "" and by_name["<b>&amp;</b>"]["failed_requests"] == "0"


@pytest.mark.parametrize(
    ("cell", "safe"),
    [("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"), ("\tx", "'\tx"), ("a=b", "a=b"), ("", "")],
)
def test_spreadsheet_safe(cell: str, safe: str) -> None:
    assert spreadsheet_safe(cell) == safe


def test_csv_without_prometheus_leaves_numbers_empty() -> None:
    report = build_report(incident_obj(["acme"]), [], None, spec())
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"), newline="")))
    assert rows == [
        {
            "customer": "acme",
            "tier": "none",
            "first_failed_minute": "",
            "last_failed_minute": "",
            "failed_requests": "",
            "worst_error_ratio": "",
            "lost": "true",
            "storming": "false",
            "throttled": "false",
        }
    ]


def test_csv_without_incident_is_the_header() -> None:
    report = build_report({"metadata": {"namespace": "a", "name": "b"}, "status": {}}, [], None, spec())
    assert render(report, "csv").splitlines() == [
        '"customer","tier","first_failed_minute","last_failed_minute","failed_requests","worst_error_ratio",'
        '"lost","storming","throttled"'
    ]


def at(minutes: int) -> str:
    return timestamp(START + timedelta(minutes=minutes))


def chart_report(**data: Any) -> dict[str, Any]:
    names = ["<script>alert(1)</script>", "evil\x1b[2J\u202e", 'quote"s & amps']
    counts = {"requests": [({"customer": c}, 100.0) for c in names], "bad": [({"customer": c}, 10.0) for c in names]}
    events = [
        {"reason": "ImpactStarted", "message": "warning", "lastTimestamp": timestamp(START)},
        {"reason": "ActionApplied", "message": "Throttle <img src=x> on evil", "lastTimestamp": at(2)},
        {"reason": "ActionReverted", "message": "Throttle lifted", "lastTimestamp": at(9)},
    ]
    return build_report(incident_obj(names), events, counts, spec(), IncidentData(**data))


def test_html_escapes_every_name_and_fetches_nothing() -> None:
    over_time = [({"state": "active"}, [(minute(i), 3.0) for i in range(11)]),
                 ({"state": "impacted"}, [(minute(i), float(i % 3)) for i in range(11)])]  # fmt: skip
    page = render_html(chart_report(customers=over_time))
    assert "<script" not in page and "<img" not in page and "\x1b" not in page and "\u202e" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "evil\\x1b[2J\\u202e" in page and "quote&quot;s &amp; amps" in page
    # Self-contained: no URL an agent would fetch, no script; the SVG namespace is the only URL.
    assert re.search(r"<[^>]*\b(src|href|action)\s*=", page) is None and "@import" not in page and "url(" not in page
    assert page.count("http") == page.count('xmlns="http://www.w3.org/2000/svg"') == 2
    # Two polylines of 11 points each, two numbered action markers on the time axis.
    assert page.count("<polyline") == 2 and page.count("stroke-dasharray") == 2
    assert "No data" not in page


def test_html_without_metrics_or_prometheus_says_so() -> None:
    page = render_html(chart_report())
    assert "No data: Prometheus holds no patron_customerslo_customers" in page and "<polyline" not in page
    blind = build_report(incident_obj(["acme"]), [], None, spec())
    assert "No data: Prometheus was not reachable" in render_html(blind)
    none = build_report({"metadata": {"namespace": "a", "name": "b"}, "status": {}}, [], None, spec())
    assert "No incident recorded" in render_html(none)
