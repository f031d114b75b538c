"""The chart's PrometheusRule: valid rules, and promtool's rule unit tests show when each alert fires.

Uses promtool from Debian's `prometheus` package (installed by .ci/run) and the pinned helm.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_chart import RELEASE_NS, helm_binary, render

PROMTOOL = shutil.which("promtool")
JOB = 'job="patron-metrics", namespace="patron-system"'
LABELS = {"job": "patron-metrics", "namespace": RELEASE_NS}

pytestmark = [
    pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (Debian package prometheus)"),
    pytest.mark.skipif(not helm_binary().exists(), reason="helm is not built (run: hack/tools.sh build helm)"),
]


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = render({"prometheusRule": {"enabled": True}})
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    path = tmp_path_factory.mktemp("rules") / "patron-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_rules_are_valid(rules_file: Path) -> None:
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    names = [r["alert"] for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]]
    assert names == ["PatronEvaluationsFailing", "PatronPrometheusUnavailable", "PatronDown"]


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{JOB}{extra}}}", "values": values}


def alerts(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    """Expected labels; the annotations are what the on-call person reads, so they are checked verbatim."""
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": e, "exp_annotations": annotations(name, e)} for e in expected],
    }


def annotations(name: str, labels: dict[str, str]) -> dict[str, str]:
    if name == "PatronEvaluationsFailing":
        return {
            "summary": f"Patron cannot evaluate CustomerSLOs: {labels['outcome']}",
            "description": f"CustomerSLO evaluations in {labels['namespace']} have ended with {labels['outcome']}"
            " for 15 minutes (0.10/s). Customer impact is not being measured for those CustomerSLOs and their"
            " actions are held; `kubectl get cslo -A` shows which, and their Ready condition says why.",
        }
    if name == "PatronPrometheusUnavailable":
        return {
            "summary": "Patron cannot reach Prometheus",
            "description": "Patron's queries to Prometheus have failed as unavailable for 5 minutes (0.50/s)."
            " No customer impact is detected and actions are held until it is reachable again; check the"
            " prometheusUrl value and the Prometheus itself.",
        }
    return {
        "summary": "Patron is down",
        "description": "No Patron operator has been scraped as up for 5 minutes: customer-impact SLOs are not"
        " enforced. Check `kubectl -n patron-system get pods -l app.kubernetes.io/instance=patron`.",
    }


HEALTHY = [
    series("up", "1x60", pod="patron-0"),
    series("patron_evaluations_total", "0+60x60", outcome="Evaluated"),
    series("patron_prometheus_queries_total", "0+300x60", outcome="ok"),
]
ALL_QUIET = [alerts(name, "60m") for name in ("PatronEvaluationsFailing", "PatronPrometheusUnavailable", "PatronDown")]

CASES: dict[str, dict[str, Any]] = {
    "healthy: nothing fires": {"input_series": HEALTHY, "alert_rule_test": ALL_QUIET},
    "evaluations failing for 15 minutes": {
        "input_series": [*HEALTHY, series("patron_evaluations_total", "0+6x60", outcome="NoData")],
        "alert_rule_test": [
            alerts("PatronEvaluationsFailing", "12m"),  # pending: `for: 15m`
            alerts("PatronEvaluationsFailing", "30m", {**LABELS, "outcome": "NoData", "severity": "warning"}),
            alerts("PatronPrometheusUnavailable", "30m"),
            alerts("PatronDown", "30m"),
        ],
    },
    "a failure that stopped": {
        "input_series": [*HEALTHY, series("patron_evaluations_total", "0+6x10 60x50", outcome="NoData")],
        "alert_rule_test": [alerts("PatronEvaluationsFailing", "45m")],
    },
    "prometheus unreachable": {
        "input_series": [*HEALTHY, series("patron_prometheus_queries_total", "0+30x60", outcome="unavailable")],
        "alert_rule_test": [
            alerts("PatronPrometheusUnavailable", "3m"),
            alerts("PatronPrometheusUnavailable", "20m", {**LABELS, "severity": "critical"}),
        ],
    },
    "operator down": {
        "input_series": [series("up", "1x10 0x50", pod="patron-0")],
        "alert_rule_test": [
            alerts("PatronDown", "12m"),
            alerts("PatronDown", "20m", {**LABELS, "severity": "critical"}),
        ],
    },
    "never scraped": {
        "input_series": [{"series": 'up{job="other"}', "values": "1x60"}],
        "alert_rule_test": [alerts("PatronDown", "10m", {**LABELS, "severity": "critical"})],
    },
    "another release's failures are not ours": {
        "input_series": [
            *HEALTHY,
            {
                "series": 'patron_evaluations_total{job="patron-metrics", namespace="other", outcome="NoData"}',
                "values": "0+6x60",
            },
        ],
        "alert_rule_test": ALL_QUIET,
    },
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_alerts_fire_when_patron_fails(rules_file: Path, tmp_path: Path, case: dict[str, Any]) -> None:
    tests = {"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": [{"interval": "1m", **case}]}
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
