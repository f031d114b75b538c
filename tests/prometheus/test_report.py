"""`patron report` on generated scenarios with known answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from patron.impact.prometheus import Prometheus
from patron.reconcile import parse_spec
from patron.report import build_report, incident_queries, render
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
