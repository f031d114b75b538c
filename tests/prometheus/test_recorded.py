"""Patron's recording rules in a real Prometheus: recorded and raw give the same answers.

The scenarios' data is backfilled, and recording rules evaluate only going forward, so the rules
are backfilled too (`promtool tsdb create-blocks-from rules`), one level at a time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from patron.impact import rules
from patron.impact.assess import Assessment
from patron.impact.evaluate import evaluate
from patron.impact.prometheus import Prometheus
from patron.impact.queries import ERRORS_SEEN, FRESHNESS, plan_queries
from patron.impact.rules import (
    candidates_query,
    coverage_query,
    covered_reads,
    layout,
    rule_file,
    span,
    with_recorded,
)
from patron.reconcile import parse_spec
from tests.support.catalog import SCENARIOS, latency_indicator, manifest
from tests.support.promserver import PROMTOOL, PrometheusServer
from tests.support.scenarios import HOUR, openmetrics

RULES = Path(__file__).parent / "rules"
DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "patron" / "dashboards" / "patron.json"
ENTERPRISE = {"tiers": [{"name": "enterprise", "weight": 10, "customers": ["acme"]}]}
NAMESPACE = "shop"
# Every CustomerSLO of tests/prometheus/test_scenarios.py, plus a budget window longer than the
# data (its own rule level, never complete here: read raw).
CASES: dict[str, dict[str, Any]] = {
    "one-down": manifest("one-down", customers=ENTERPRISE),
    "all-down": manifest("all-down"),
    "low-traffic": manifest("low-traffic"),
    "low-traffic-everyone": manifest("low-traffic", "low-traffic-everyone", customers={"minRequestRate": 0}),
    "blip": manifest("blip"),
    "lost": manifest("lost"),
    "gap": manifest("gap"),
    "storm": manifest("storm"),
    "storm-hurts": manifest("storm-hurts"),
    "slow": manifest("slow", indicator=latency_indicator("slow")),
    "weird": manifest("weird"),
    "healthy": manifest("healthy"),
    "healthy-30d": manifest("healthy", "healthy-30d", window="30d"),
}

# Burn rates shown over L (no requests in S), known exactly: 30 of 50 minutes of requests failed in
# the last hour, 0.6 / 0.001. Raw rate() extrapolates to 606.
EXACT = {"lost": {"quitter": 600.0}, "gap": {"quitter": 600.0}}


def _enabled(body: dict[str, Any]) -> dict[str, Any]:
    return {**body["spec"], "recordingRules": {"enabled": True}}


@pytest.fixture(scope="module")
def recorded_prometheus(tmp_path_factory: pytest.TempPathFactory, scenario_end: float) -> Iterator[PrometheusServer]:
    """The scenarios plus every case's recording rules, backfilled over the data's 7 hours."""
    workdir = tmp_path_factory.mktemp("recorded-prometheus")
    server = PrometheusServer(workdir)
    server.load(openmetrics(SCENARIOS, scenario_end).replace("# EOF", _error_budgets(scenario_end)))
    server.start()
    rule_files = [rule_file(parse_spec(_enabled(body)), NAMESPACE, name) for name, body in CASES.items()]
    server.backfill_patron_rules(rule_files, scenario_end - 7 * HOUR, scenario_end)
    yield server
    server.stop()


def _error_budgets(end: float) -> str:
    """The operator's patron_customerslo_error_budget of every case over the last 5 minutes, plus a
    decoy of the same name in another namespace (the dashboard must join on both labels), then # EOF."""
    rows = ["# TYPE patron_customerslo_error_budget gauge"]
    for name, body in CASES.items():
        budget = parse_spec(body["spec"]).error_budget
        for namespace, value in ((NAMESPACE, budget), ("decoy", budget * 7)):
            labels = f'namespace="{namespace}",customerslo="{name}",job="patron"'
            rows += [f"patron_customerslo_error_budget{{{labels}}} {value!r} {end - t}" for t in range(300, -1, -30)]
    return "\n".join([*rows, "# EOF"])


def _both(server: PrometheusServer, end: float, name: str) -> tuple[Assessment, Assessment]:
    at = datetime.fromtimestamp(end, UTC)
    prom = Prometheus(server.url)
    raw = evaluate(parse_spec(CASES[name]["spec"]), prom, at, f"{NAMESPACE}/{name}")
    recorded = evaluate(parse_spec(_enabled(CASES[name])), prom, at, f"{NAMESPACE}/{name}")
    return raw, recorded


def _names(customers: tuple[Any, ...]) -> set[str]:
    return {c.customer for c in customers}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_and_raw_agree(recorded_prometheus: PrometheusServer, scenario_end: float, name: str) -> None:
    raw, recorded = _both(recorded_prometheus, scenario_end, name)
    assert _names(recorded.impacted) == _names(raw.impacted)
    assert _names(recorded.lost) == _names(raw.lost)
    assert _names(recorded.storming) == _names(raw.storming)
    assert recorded.unknown == raw.unknown
    assert _names(recorded.customers) == _names(raw.customers)
    assert recorded.severity == raw.severity
    burns = {c.customer: c.burn_rate for c in raw.customers}
    # Bounded: the status shows burn rates of the impacted and storming customers only, and only
    # those (the candidates) come back from Prometheus beyond the active list.
    for c in {*recorded.impacted, *recorded.storming}:
        if c.customer in EXACT.get(name, {}):
            # The recorded hour ends at the rules' last evaluation, up to 30s back (at most 60 more
            # healthy requests of 6000), and rate() extrapolates inside the 5m blocks that straddle
            # a change: within 1.5% of the exact value (raw: within 1%).
            assert EXACT[name][c.customer] * 0.985 <= c.burn_rate <= EXACT[name][c.customer] * 1.0001
            assert burns[c.customer] == pytest.approx(EXACT[name][c.customer], rel=0.02)
        elif (name, c.customer) == ("gap", "gappy"):
            # Unknown in S, shown over L; its 6-minute scrape gap leaves a 5m block of L without a
            # sample, left out of the mean, while raw rate() spans the gap: 12/11 at most.
            assert burns[c.customer] <= c.burn_rate <= burns[c.customer] * 12 / 11
        else:
            assert c.burn_rate == pytest.approx(burns[c.customer], rel=0.01, abs=1e-9), c.customer
    raw_notes = [n for n in recorded.notes if n.startswith("read raw")]
    assert raw_notes == (["read raw, not yet covered by the recording rules: 30d"] if name.endswith("30d") else [])


def test_rules_loaded_late_are_read_raw(scenario_prometheus: PrometheusServer, scenario_end: float) -> None:
    """No recorded series at all (rules not loaded): every window raw, the same answers, and a note."""
    at = datetime.fromtimestamp(scenario_end, UTC)
    prom = Prometheus(scenario_prometheus.url)
    raw = evaluate(parse_spec(CASES["one-down"]["spec"]), prom, at, f"{NAMESPACE}/one-down")
    fallback = evaluate(parse_spec(_enabled(CASES["one-down"])), prom, at, f"{NAMESPACE}/one-down")
    assert _names(fallback.impacted) == _names(raw.impacted) == {"acme"}
    assert "read raw, not yet covered by the recording rules: 30m, 1h, 1h offset 1h, 6h" in fallback.notes


@pytest.mark.parametrize("case", ["weird", "slow", "healthy-30d"])
def test_rule_file_written_by_the_cli_passes_promtool_check(tmp_path: Path, case: str) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text(yaml.safe_dump(CASES[case], allow_unicode=True))
    out = tmp_path / "rules.yaml"
    out.write_text(_cli("rules", "-f", str(path)))
    subprocess.run([PROMTOOL, "check", "rules", str(out)], check=True, capture_output=True)


def test_rules_give_known_answers_in_promtool_test(tmp_path: Path) -> None:
    """tests/prometheus/rules/api.test.yaml: 1m blocks chained into 10m, 10m into the 30m budget."""
    (tmp_path / "rules.yaml").write_text(_cli("rules", "-f", str(RULES / "api.customerslo.yaml")))
    shutil.copy(RULES / "api.test.yaml", tmp_path)
    result = subprocess.run([PROMTOOL, "test", "rules", "api.test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("name", "worst", "burn"), [("one-down", "acme", 1000.0), ("slow", "sloth", 500.0)])
def test_dashboard_burn_rate_panel_reads_the_recorded_series(
    recorded_prometheus: PrometheusServer, scenario_end: float, name: str, worst: str, burn: float
) -> None:
    """The Grafana panel's query, variables filled in, over the shortest recorded window: acme fails
    every request (ratio SLO), half of sloth's are slow (latency SLO); objective 99.9%."""
    board = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in board["panels"] if p["title"] == "Worst customers' burn rate"]
    window = span(layout(parse_spec(CASES[name]["spec"])).shortest)
    expr = panel["targets"][0]["expr"].replace("$namespace", NAMESPACE).replace("$customerslo", name)
    result = Prometheus(recorded_prometheus.url).query(
        expr.replace("$window", f"rate{window}"), datetime.fromtimestamp(scenario_end, UTC)
    )
    burns = {labels["customer"]: value for labels, value in result}
    assert [set(labels) for labels, _ in result] == [{"customer"}] * len(result)
    assert 1 < len(burns) <= 10 and max(burns, key=lambda c: burns[c]) == worst
    assert burns[worst] == pytest.approx(burn, rel=0.01)
    assert all(v == pytest.approx(0, abs=1e-9) for c, v in burns.items() if c != worst)


def _cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "patron.cli", *args], check=True, capture_output=True, text=True
    ).stdout


def test_only_the_active_query_returns_every_customer(
    recorded_prometheus: PrometheusServer, scenario_end: float
) -> None:
    """one-down: 100 active customers, 1 impacted. Every query but total[L] names the candidates
    (here acme) and returns at most them, FRESHNESS only the newest age; the query count does not
    depend on customers."""
    at = datetime.fromtimestamp(scenario_end, UTC)
    prom = Prometheus(recorded_prometheus.url)
    spec = parse_spec(_enabled(CASES["one-down"]))
    coverage = covered_reads(prom.query(coverage_query(spec, "shop/one-down", plan_queries(spec)), at))
    candidates = prom.query(candidates_query(spec, "shop/one-down"), at)
    assert [labels for labels, _ in candidates] == [{"customer": "acme"}]
    plan = with_recorded(spec, "shop/one-down", coverage, candidates)
    assert plan.bounded and plan.raw == ()
    assert plan.queries["bad[1800]"] == 'patron:errors:rate30m{customerslo="shop/one-down",customer=~"acme"} != 0'
    results = prom.run(plan, at)
    sizes = {name: len(series) for name, series in results.items()}
    assert sizes.pop("total[3600]") == 100
    assert sizes.pop(FRESHNESS) == 1
    assert all(n <= 1 for n in sizes.values()), sizes
    assert {labels["customer"] for labels, _ in results["bad[300]"]} == {"acme"}
    assert len(plan.queries) == len(plan_queries(spec).queries)


@pytest.mark.parametrize("name", ["weird", "storm", "lost"])
def test_candidates_named_or_recomputed_in_promql_give_the_same_answer(
    recorded_prometheus: PrometheusServer, scenario_end: float, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over LISTED_CANDIDATES candidates each filtered query joins the candidates query instead of
    naming them (weird: names with quotes and backslashes, escaped in a regex)."""
    spec, slo = parse_spec(_enabled(CASES[name])), f"{NAMESPACE}/{name}"
    at = datetime.fromtimestamp(scenario_end, UTC)
    prom = Prometheus(recorded_prometheus.url)
    listed = evaluate(spec, prom, at, slo)
    monkeypatch.setattr(rules, "LISTED_CANDIDATES", 0)
    joined = evaluate(spec, prom, at, slo)
    assert (listed.impacted or listed.storming) and listed == joined


def test_no_candidates_sends_no_filtered_query(recorded_prometheus: PrometheusServer, scenario_end: float) -> None:
    """healthy: nobody over a threshold or storming, so only the active, freshness and errors-seen
    queries go out, and the answer is the raw one."""
    at = datetime.fromtimestamp(scenario_end, UTC)
    prom = Prometheus(recorded_prometheus.url)
    spec = parse_spec(_enabled(CASES["healthy"]))
    coverage = covered_reads(prom.query(coverage_query(spec, "shop/healthy", plan_queries(spec)), at))
    plan = with_recorded(spec, "shop/healthy", coverage, prom.query(candidates_query(spec, "shop/healthy"), at))
    assert sorted(plan.queries) == sorted([FRESHNESS, ERRORS_SEEN, "total[3600]"])
    raw, recorded = _both(recorded_prometheus, scenario_end, "healthy")
    assert recorded.severity == raw.severity == "none" and _names(recorded.customers) == _names(raw.customers)
