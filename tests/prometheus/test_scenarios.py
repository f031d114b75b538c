"""Scenario tests: generated data in a real Prometheus, evaluated by the operator's own code path."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from patron.impact.assess import Assessment, DataProblem
from patron.impact.evaluate import evaluate
from patron.impact.prometheus import Prometheus
from patron.reconcile import evaluated, failed, parse_spec
from tests.support.catalog import WEIRD, latency_indicator, manifest
from tests.support.promserver import PrometheusServer, free_port

ENTERPRISE = {"tiers": [{"name": "enterprise", "weight": 10, "customers": ["acme"]}]}


def run(server: PrometheusServer, end: float, body: dict[str, Any]) -> Assessment:
    spec = parse_spec(body["spec"])
    return evaluate(spec, Prometheus(server.url), datetime.fromtimestamp(end, UTC))


def names(customers: tuple[Any, ...]) -> set[str]:
    return {c.customer for c in customers}


def test_one_customer_down_inside_a_tiny_aggregate_ratio(scenario_prometheus: PrometheusServer, scenario_end: float):
    a = run(scenario_prometheus, scenario_end, manifest("one-down", customers=ENTERPRISE))
    assert names(a.impacted) == {"acme"}
    assert a.active_count == 100
    assert a.severity == "warning"  # 1 impacted; 1% < 5% and weighted 10/109 < 20%
    assert a.weighted_impact == pytest.approx(10 / 109)
    assert a.impacted[0].tier == "enterprise"
    # The same data under an aggregate-only rule (no customer grouping) does not fire.
    at = datetime.fromtimestamp(scenario_end, UTC)
    prom = Prometheus(scenario_prometheus.url)
    for long_, short in (("1h", "5m"), ("6h", "30m")):
        burns = []
        for w in (long_, short):
            q = (
                f'sum(rate(http_requests_total{{service="one-down",code=~"5.."}}[{w}]))'
                f' / sum(rate(http_requests_total{{service="one-down"}}[{w}])) / 0.001'
            )
            burns.append(prom.query(q, at)[0][1])
        assert max(burns) < 1.0 < 14.4, burns  # the aggregate ratio stays under 0.1%
    assert prom.query('sum(rate(http_requests_total{service="one-down",code=~"5.."}[1h]))', at)[0][1] > 0


def test_broad_outage_is_critical(scenario_prometheus: PrometheusServer, scenario_end: float):
    a = run(scenario_prometheus, scenario_end, manifest("all-down"))
    assert len(a.impacted) == a.active_count == 20
    assert a.impacted_fraction == 1.0
    assert a.severity == "critical"


def test_low_traffic_customer_with_one_failure_is_not_counted(
    scenario_prometheus: PrometheusServer, scenario_end: float
):
    a = run(scenario_prometheus, scenario_end, manifest("low-traffic"))
    assert "tiny" not in names(a.customers)
    assert a.impacted == ()
    assert a.active_count == 10
    assert a.severity == "none"
    # With minRequestRate 0 the same customer counts, and its one failure does burn.
    everyone = run(scenario_prometheus, scenario_end, manifest("low-traffic", customers={"minRequestRate": 0}))
    assert "tiny" in names(everyone.customers)


def test_short_window_blip_is_not_impact(scenario_prometheus: PrometheusServer, scenario_end: float):
    a = run(scenario_prometheus, scenario_end, manifest("blip"))
    blippy = next(c for c in a.customers if c.customer == "blippy")
    assert blippy.burn_rate > 14.4  # the short window burns...
    assert not blippy.impacted  # ...but the long one does not
    assert a.severity == "none"


def test_customer_who_gave_up_is_lost(scenario_prometheus: PrometheusServer, scenario_end: float):
    a = run(scenario_prometheus, scenario_end, manifest("lost"))
    assert names(a.impacted) == {"quitter"}
    assert names(a.lost) == {"quitter"}


def test_a_scrape_gap_is_unknown_not_lost(scenario_prometheus: PrometheusServer, scenario_end: float):
    """Old errors, then no samples in S: unknown there, never impacted or lost on missing data."""
    a = run(scenario_prometheus, scenario_end, manifest("gap"))
    assert names(a.impacted) == names(a.lost) == {"quitter"}
    assert a.unknown == ("gone",) and a.active_count == 22
    gappy = next(c for c in a.customers if c.customer == "gappy")
    assert not gappy.impacted and not gappy.lost
    assert any("unknown, not counted: gone" in n for n in a.notes)
    # Above impact.maxStaleFraction nothing is concluded at all.
    with pytest.raises(DataProblem) as err:
        run(scenario_prometheus, scenario_end, manifest("gap", impact={"maxStaleFraction": 0.04}))
    assert err.value.reason == "PartialData" and "1 of 23 active customers" in err.value.message


def test_retry_storm_is_detected(scenario_prometheus: PrometheusServer, scenario_end: float):
    a = run(scenario_prometheus, scenario_end, manifest("storm"))
    assert names(a.storming) == {"bigbot"}
    bot = a.storming[0]
    assert bot.baseline_rate == pytest.approx(2.0, rel=0.05)
    assert bot.short_rate == pytest.approx(10.0, rel=0.05)
    assert a.impacted == ()


def test_latency_slo(scenario_prometheus: PrometheusServer, scenario_end: float):
    a = run(scenario_prometheus, scenario_end, manifest("slow", indicator=latency_indicator("slow")))
    assert names(a.impacted) == {"sloth"}
    assert a.impacted[0].error_ratio == pytest.approx(0.5, rel=0.05)
    assert a.active_count == 11


def test_latency_threshold_must_be_a_bucket_bound(scenario_prometheus: PrometheusServer, scenario_end: float):
    body = manifest("slow", indicator=latency_indicator("slow", threshold=0.25))
    with pytest.raises(DataProblem) as err:
        run(scenario_prometheus, scenario_end, body)
    assert err.value.reason == "NoData"


def test_unknown_metric_is_no_data(scenario_prometheus: PrometheusServer, scenario_end: float):
    body = manifest("healthy")
    body["spec"]["indicator"]["ratio"]["total"] = 'no_such_metric_total{service="healthy"}'
    with pytest.raises(DataProblem) as err:
        run(scenario_prometheus, scenario_end, body)
    assert err.value.reason == "NoData"
    assert "no_such_metric_total" in err.value.message


def test_stale_data_is_not_healthy(scenario_prometheus: PrometheusServer, scenario_end: float):
    with pytest.raises(DataProblem) as err:
        run(scenario_prometheus, scenario_end, manifest("stopped", impact={"staleAfter": "2m"}))
    assert err.value.reason == "StaleData"


def test_weird_names_pass_through_queries_and_outputs(
    scenario_prometheus: PrometheusServer, scenario_end: float, tmp_path: Path
):
    tiers = {"tiers": [{"name": "odd", "weight": 2, "customers": [WEIRD[0]]}]}
    body = manifest("weird", customers=tiers)
    a = run(scenario_prometheus, scenario_end, body)
    assert names(a.impacted) == set(WEIRD)
    assert next(c for c in a.impacted if c.customer == WEIRD[0]).tier == "odd"
    # The CLI prints them intact as JSON.
    path = tmp_path / "slo.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True))
    at = datetime.fromtimestamp(scenario_end, UTC).isoformat()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "patron.cli",
            "evaluate",
            "-f",
            str(path),
            "--prometheus",
            scenario_prometheus.url,
            "--at",
            at,
            "-o",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    status = json.loads(out)
    assert {i["customer"] for i in status["impacted"]} == set(WEIRD)
    assert status["impactedCustomers"] == 4 and status["activeCustomers"] == 9


def test_evaluate_prints_the_status_fields(scenario_prometheus: PrometheusServer, scenario_end: float, tmp_path: Path):
    path = tmp_path / "slo.yaml"
    path.write_text(yaml.safe_dump(manifest("one-down", customers=ENTERPRISE)))
    at = datetime.fromtimestamp(scenario_end, UTC).isoformat()
    cmd = [sys.executable, "-m", "patron.cli", "evaluate", "-f", str(path), "--prometheus", scenario_prometheus.url]
    status = json.loads(subprocess.run([*cmd, "--at", at, "-o", "json"], check=True, capture_output=True).stdout)
    assert set(status) == {
        "severity",
        "activeCustomers",
        "impactedCustomers",
        "impactedFraction",
        "weightedImpact",
        "lostCustomers",
        "stormingCustomers",
        "lastEvaluationTime",
        "dataAgeSeconds",
        "impacted",
        "incident",
    }
    assert status["impacted"][0]["customer"] == "acme"
    table = subprocess.run([*cmd, "--at", at], check=True, capture_output=True, text=True).stdout
    assert "acme" in table and "enterprise" in table


def test_prometheus_down_keeps_the_last_impact(
    tmp_path: Path, scenario_prometheus: PrometheusServer, scenario_end: float
):
    body = manifest("all-down")
    spec = parse_spec(body["spec"])
    now = datetime.fromtimestamp(scenario_end, UTC)
    before = evaluated(spec, {}, run(scenario_prometheus, scenario_end, body), 1, now).status
    dead = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(DataProblem) as err:
        evaluate(spec, dead, now)
    assert err.value.reason == "PrometheusUnavailable"
    after = failed(before, err.value, 1, now).status
    ready = next(c for c in after["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PrometheusUnavailable")
    assert after["impactedCustomers"] == 20 and after["severity"] == "critical"
    assert after["incident"] == before["incident"]


def test_operator_reuses_only_budget_window_results(scenario_prometheus: PrometheusServer) -> None:
    import asyncio

    from patron.impact.queries import plan_queries

    spec = parse_spec(manifest("healthy", window="7d")["spec"])
    plan = plan_queries(spec)
    assert plan.budget_only == {"total[604800]", "bad[604800]"}
    prom = Prometheus(scenario_prometheus.url)
    sent: list[str] = []
    query = prom.query
    prom.query = lambda promql, at=None: sent.append(promql) or query(promql, at)  # type: ignore[method-assign]
    first = asyncio.run(prom.run_async(plan))
    second = asyncio.run(prom.run_async(plan))
    assert len(sent) == len(plan.queries) + len(plan.queries) - 2
    assert first.keys() == second.keys() == plan.queries.keys()
    assert second["total[604800]"] == first["total[604800]"]
    # A budget window that is also an impact window is never reused.
    assert plan_queries(parse_spec(manifest("healthy", window="1h")["spec"])).budget_only == frozenset()
