"""The operator end to end: kubectl, a real kube-apiserver, a real Prometheus with scenario data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.catalog import SCENARIOS, manifest
from tests.support.operator import OperatorProcess
from tests.support.promserver import PrometheusServer
from tests.support.scenarios import openmetrics

pytestmark = pytest.mark.usefixtures("patron_crd")


def apply(testbed: Any, namespace: str, body: dict[str, Any], check: bool = True) -> Any:
    return testbed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=check)


def get(testbed: Any, namespace: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(testbed.kubectl("get", "cslo", name, "-n", namespace, "-o", "json").stdout)
    return out


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


@pytest.fixture
def operator(
    testbed: Any, namespace: str, scenario_prometheus: PrometheusServer, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(testbed.kubeconfig, scenario_prometheus.url, [namespace], tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()


def test_impact_is_visible_to_kubectl(testbed: Any, namespace: str, operator: OperatorProcess) -> None:
    apply(testbed, namespace, manifest("all-down", interval="5s"))
    testbed.kubectl("wait", "-n", namespace, "--for=condition=CustomerImpact", "cslo/all-down", "--timeout=90s")
    obj = get(testbed, namespace, "all-down")
    status = obj["status"]
    assert (status["severity"], status["impactedCustomers"], status["activeCustomers"]) == ("critical", 20, 20)
    assert condition(obj, "Ready")["status"] == "True"
    assert condition(obj, "Ready")["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "CustomerImpact")["reason"] == "Critical"
    assert status["incident"]["started"] and status["incident"]["customersAffected"] == 20
    table = testbed.kubectl("get", "cslo", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SEVERITY", "IMPACTED", "ACTIVE", "READY", "AGE"]
    assert table[1].split()[:5] == ["all-down", "critical", "20", "20", "True"]
    events = testbed.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "ImpactStarted" in events
    # The category lists it too.
    assert "all-down" in testbed.kubectl("get", "patron", "-n", namespace).stdout


def test_replay_and_report_agree_with_the_live_operator(
    testbed: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    body = manifest("lost", interval="5s")
    apply(testbed, namespace, body)
    testbed.kubectl("wait", "-n", namespace, "--for=condition=CustomerImpact", "cslo/lost", "--timeout=90s")
    status = get(testbed, namespace, "lost")["status"]
    at = status["lastEvaluationTime"]
    path = tmp_path / "slo.yaml"
    path.write_text(yaml.safe_dump(body))
    env = testbed.environ()
    out = subprocess.run(
        [sys.executable, "-m", "patron.cli", "replay", "-f", str(path), "--prometheus", operator.prometheus_url,
         "--from", at, "--to", at, "-o", "json"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    (step,) = json.loads(out)
    assert (step["severity"], step["impacted"], step["active"], step["lost"]) == (
        status["severity"], status["impactedCustomers"], status["activeCustomers"], status["lostCustomers"],
    )  # fmt: skip
    assert list(step["worst"]) == [i["customer"] for i in status["impacted"]][:5]
    report = subprocess.run(
        [sys.executable, "-m", "patron.cli", "report", f"{namespace}/lost", "--prometheus", operator.prometheus_url,
         "-o", "json"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    incident = json.loads(report)["incident"]
    assert incident["lostCustomers"] == ["quitter"] and incident["customersAffected"] == 1
    assert [r["event"] for r in incident["timeline"]][:1] == ["ImpactStarted"]


def test_healthy_slo_and_a_broken_one_side_by_side(testbed: Any, namespace: str, operator: OperatorProcess) -> None:
    broken = manifest("healthy", name="unknown-metric", interval="5s")
    broken["spec"]["indicator"]["ratio"]["total"] = 'no_such_metric_total{service="healthy"}'
    apply(testbed, namespace, broken)
    apply(testbed, namespace, manifest("healthy", interval="5s"))
    testbed.kubectl("wait", "-n", namespace, "--for=condition=Ready=False", "cslo/unknown-metric", "--timeout=90s")
    testbed.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cslo/healthy", "--timeout=90s")
    bad = get(testbed, namespace, "unknown-metric")
    assert condition(bad, "Ready")["reason"] == "NoData"
    assert "no_such_metric_total" in condition(bad, "Ready")["message"]
    good = get(testbed, namespace, "healthy")
    assert good["status"]["severity"] == "none" and good["status"]["activeCustomers"] == 30
    assert condition(good, "CustomerImpact")["status"] == "False"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"objective": 100}, "objective"),
        ({"window": "thirty days"}, "window"),
        (
            {"indicator": {"ratio": {"errors": "e", "total": "t"}, "latency": {"histogram": "h", "threshold": 0.3}}},
            "set exactly one of indicator.ratio or indicator.latency",
        ),
        ({"impact": {"windows": [{"long": "5m", "short": "1h", "burnRate": 2}]}}, "short must be shorter than long"),
        ({"impact": {"windows": [{"long": "1d", "short": "25h", "burnRate": 2}]}}, "short must be shorter than long"),
        ({"customers": {"tiers": [{"name": "gold"}, {"name": "gold"}]}}, "tiers names must be unique"),
        ({"actions": {"scale": {"target": {"name": "x", "namespace": "other"}, "maxReplicas": 3}}}, "namespace"),
        ({"interval": "soon"}, "interval"),
        (
            {"actions": {"throttle": {"configMap": "rl", "domain": "d", "backendTrafficPolicy": {"name": "p"}}}},
            "set exactly one of actions.throttle.configMap or actions.throttle.backendTrafficPolicy",
        ),
        ({"actions": {"throttle": {"backendTrafficPolicy": {"name": "p"}, "domain": "d"}}}, "configMap only"),
        ({"actions": {"throttle": {"backendTrafficPolicy": {"name": "p"}, "header": "x customer"}}}, "header"),
    ],
)
def test_invalid_specs_are_refused_at_apply_time(
    testbed: Any, namespace: str, change: dict[str, Any], message: str
) -> None:
    body = manifest("healthy", name="bad")
    body["spec"].update(change)
    result = apply(testbed, namespace, body, check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_a_valid_latency_spec_with_day_windows_is_accepted(testbed: Any, namespace: str) -> None:
    body = manifest("slow", name="days", impact={"windows": [{"long": "1d", "short": "1h", "burnRate": 2}]})
    body["spec"]["indicator"] = {"latency": {"histogram": 'h{service="x"}', "threshold": 0.3}}
    apply(testbed, namespace, body)
    obj = get(testbed, namespace, "days")
    assert obj["spec"]["customers"]["minRequestRate"] == 0.05  # defaults are applied by the API server


@pytest.mark.slow
def test_prometheus_down_is_not_healthy(testbed: Any, namespace: str, tmp_path: Path, scenario_end: float) -> None:
    server = PrometheusServer(tmp_path / "prom")
    (tmp_path / "prom").mkdir()
    server.load(openmetrics({"all-down": SCENARIOS["all-down"]}, scenario_end))
    server.start()
    op = OperatorProcess(testbed.kubeconfig, server.url, [namespace], tmp_path / "operator.log")
    op.start()
    try:
        apply(testbed, namespace, manifest("all-down", interval="2s"))
        testbed.kubectl("wait", "-n", namespace, "--for=condition=CustomerImpact", "cslo/all-down", "--timeout=90s")
        server.stop()
        testbed.kubectl("wait", "-n", namespace, "--for=condition=Ready=False", "cslo/all-down", "--timeout=90s")
        obj = get(testbed, namespace, "all-down")
        assert condition(obj, "Ready")["reason"] == "PrometheusUnavailable"
        assert obj["status"]["impactedCustomers"] == 20 and obj["status"]["severity"] == "critical"
        assert condition(obj, "CustomerImpact")["status"] == "True"
        assert "ended" not in obj["status"]["incident"]
    finally:
        op.stop()
        server.stop()
