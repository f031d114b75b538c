"""`patron report` on generated scenarios with known answers."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from patron.impact.prometheus import Prometheus
from patron.reconcile import parse_spec
from patron.report import IncidentData, build_report, incident_queries, minute_queries, range_step, render
from patron.status import timestamp
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
