"""`patron report` on generated scenarios with known answers."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import shutil
import struct
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from patron.impact.prometheus import Prometheus
from patron.reconcile import parse_spec
from patron.replay import replay
from patron.report import (
    IncidentData,
    build_report,
    incident_queries,
    minute_queries,
    range_step,
    render,
    summary_facts,
)
from patron.report_html import render_html
from patron.status import parse_timestamp, timestamp
from tests.support.catalog import manifest
from tests.support.promserver import PrometheusServer


def event(reason: str, message: str, at: datetime) -> dict[str, str]:
    return {"reason": reason, "message": message, "lastTimestamp": timestamp(at)}


def test_all_down_incident_counts_failed_requests(scenario_prometheus: PrometheusServer, scenario_end: float) -> None:
    body = manifest("all-down", customers={"tiers": [{"name": "gold", "weight": 5, "customers": ["c00"]}]})
    spec = parse_spec(body["spec"])
    end = datetime.fromtimestamp(scenario_end, UTC)
    start = end - timedelta(minutes=40)
    obj = {
        "metadata": {"namespace": "shop", "name": "all-down"},
        "spec": body["spec"],
        "status": {
            "severity": "none",
            "incident": {
                "started": timestamp(start),
                "ended": timestamp(end),
                "peakSeverity": "critical",
                "customersAffected": 20,
                "peakImpactedCustomers": 20,
                "affected": [f"c{i:02d}" for i in range(20)],
                "lost": [],
                "storming": [],
            },
        },
    }
    events = [
        event("ImpactStarted", "critical: 20 of 20", start),
        event("ActionApplied", "Scale Deployment/checkout 3 -> 5", start + timedelta(minutes=1)),
        event("ImpactStarted", "an older incident", start - timedelta(hours=2)),
    ]
    prom = Prometheus(scenario_prometheus.url)
    counts = {k: prom.query(q, end) for k, q in incident_queries(spec, start, end).items()}
    report = build_report(obj, events, counts, spec)
    inc = report["incident"]
    assert inc["durationSeconds"] == 2400 and inc["customersAffected"] == 20
    # 1 req/s at 50% errors for 40 minutes: 2,400 requests and 1,200 failures per customer.
    for row in inc["worstCustomers"]:
        assert row["requests"] == pytest.approx(2400, rel=0.03)
        assert row["failedRequests"] == pytest.approx(1200, rel=0.03)
        assert row["errorRatio"] == pytest.approx(0.5, abs=0.01)
    assert len(inc["worstCustomers"]) == 10 and len(inc["failedRequestsByCustomer"]) == 20
    assert {(r["customer"] == "c00", r["tier"]) for r in inc["worstCustomers"]} <= {(True, "gold"), (False, "none")}
    assert [r["event"] for r in inc["timeline"]] == ["ImpactStarted", "ActionApplied"]
    text = render(report, "table")
    assert "Customers affected:" in text and "c00" in text and "ActionApplied" in text
    md = render(report, "markdown")
    assert "| CUSTOMER | TIER | FAILED | REQUESTS | ERROR RATIO |" in md
    assert json.loads(render(report, "json"))["incident"]["customersAffected"] == 20
    # Without Prometheus the report still answers everything else, and says what it lacks.
    blind = build_report(obj, events, None, spec)
    assert blind["incident"]["failedRequestsByCustomer"] is None
    assert "not reachable" in render(blind, "table")


def test_no_incident() -> None:
    body = manifest("healthy")
    report = build_report({"metadata": {"namespace": "a", "name": "b"}, "status": {"severity": "none"}}, [], None,
                          parse_spec(body["spec"]))  # fmt: skip
    assert report["incident"] is None
    assert "No incident recorded" in render(report, "markdown")


def test_outreach_minutes_from_range_queries(scenario_prometheus: PrometheusServer, scenario_end: float) -> None:
    """storm-hurts: victim fails every request for the last 40 minutes; bigbot storms; peers are fine."""
    body = manifest("storm-hurts", customers={"tiers": [{"name": "gold", "weight": 5, "customers": ["peer-00"]}]})
    spec = parse_spec(body["spec"])
    end = datetime.fromtimestamp(scenario_end, UTC)
    start = end - timedelta(minutes=45)
    affected = ["victim", "bigbot", "peer-00"]
    obj = {
        "metadata": {"namespace": "shop", "name": "storm-hurts"},
        "status": {
            "incident": {"started": timestamp(start), "ended": timestamp(end), "affected": affected},
            "actions": [{"type": "Throttle", "customer": "bigbot", "state": "Reverted", "since": timestamp(end)}],
        },
    }
    prom = Prometheus(scenario_prometheus.url)
    step = range_step(start, end)
    queries = minute_queries(spec, step)
    assert step == 60 and len(queries) == 2  # one grouped query per kind, whatever the customers
    minutes = {k: prom.query_range(q, start, end, step) for k, q in queries.items()}
    counts = {k: prom.query(q, end) for k, q in incident_queries(spec, start, end).items()}
    report = build_report(obj, [], counts, spec, IncidentData(minutes=minutes))
    rows = report["incident"]["outreach"]
    assert [r["customer"] for r in rows] == ["peer-00", "victim", "bigbot"]  # gold first, then by failures
    peer, victim, bigbot = rows
    assert peer["firstFailedMinute"] is None and peer["failedRequests"] == 0 and peer["worstErrorRatio"] == 0
    first = datetime.fromisoformat(victim["firstFailedMinute"].replace("Z", "+00:00"))
    last = datetime.fromisoformat(victim["lastFailedMinute"].replace("Z", "+00:00"))
    assert abs((first - (end - timedelta(minutes=40))).total_seconds()) <= 90
    assert (end - last).total_seconds() <= 150
    assert victim["failedRequests"] == pytest.approx(2 * 40 * 60, rel=0.05)
    assert victim["worstErrorRatio"] == pytest.approx(1.0, abs=0.01)
    assert bigbot["throttled"] and not victim["throttled"]
    rendered = list(csv.DictReader(io.StringIO(render(report, "csv"), newline="")))
    assert [r["customer"] for r in rendered] == ["peer-00", "victim", "bigbot"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's chromium, headless, with its own profile (no sandbox: tests may run as root)."""
    binary = shutil.which("chromium")
    assert binary, "the chromium package is needed (apt-get install chromium; .ci/run installs it)"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_html_report_renders_in_chromium(
    scenario_prometheus: PrometheusServer, scenario_end: float, tmp_path: Path
) -> None:
    """The spreading outage, replayed with the operator's engine minute by minute: its active and impacted
    counts are what the operator would have exported, its Events the timeline; counts come from Prometheus."""
    end = datetime.fromtimestamp(scenario_end, UTC)
    start = end - timedelta(minutes=45)
    body = manifest(
        "spreading",
        customers={"tiers": [{"name": "enterprise", "weight": 10, "customers": ["spread-0"]}]},
        impact={"windows": [{"long": "1h", "short": "5m", "burnRate": 14.4}]},
        actions={"throttle": {"configMap": "ratelimit", "domain": "shop", "minSeverity": "warning", "ttl": "10m"}},
    )
    spec = parse_spec(body["spec"])
    prom = Prometheus(scenario_prometheus.url)
    steps = replay(spec, prom, start, end, timedelta(minutes=1), name="spreading", namespace="shop")
    hit = [s for s in steps if s.severity not in ("none", "unknown")]
    assert hit and max(s.impacted for s in steps) == 5
    first = hit[0].at
    healed = next((s.at for s in steps if s.at > first and s.severity == "none"), None)
    window = (parse_timestamp(first), parse_timestamp(healed) if healed else end)
    events = [event(*text.split(": ", 1), parse_timestamp(s.at)) for s in steps for text in (*s.events, *s.actions)]
    obj = {
        "metadata": {"namespace": "shop", "name": "spreading"},
        "spec": body["spec"],
        "status": {
            "severity": steps[-1].severity,
            "actions": list(steps[-1].records),
            "incident": {
                "started": first,
                "ended": healed,
                "peakSeverity": "critical" if any(s.severity == "critical" for s in hit) else "warning",
                "customersAffected": len({c for s in hit for c in s.worst}),
                "peakImpactedCustomers": max(s.impacted for s in steps),
                "affected": sorted({c for s in hit for c in s.worst}),
                "lost": [],
                "storming": ["bigbot"],
            },
        },
    }
    step = range_step(*window)
    customers = [
        ({"state": state}, [(parse_timestamp(s.at).timestamp(), float(getattr(s, state))) for s in steps])
        for state in ("active", "impacted")
    ]
    data = IncidentData(
        minutes={k: prom.query_range(q, *window, step) for k, q in minute_queries(spec, step).items()},
        customers=customers,
    )
    counts = {k: prom.query(q, window[1]) for k, q in incident_queries(spec, *window).items()}
    report = build_report(obj, events, counts, spec, data)
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,1900", page.as_uri())
    assert png_size(shot) == (1000, 1900)
    assert shot.stat().st_size > 40_000  # a blank page of that size compresses to a few kB
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    for label, value in summary_facts(report["incident"]):
        assert f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>" in dom
    assert dom.count("<polyline") == 2 and "spread-0" in dom and "No data" not in dom
    if target := os.environ.get("PATRON_REPORT_SCREENSHOT"):  # refresh docs/images/report.png
        shutil.copyfile(shot, target)
