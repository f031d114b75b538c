"""Shared by the test_actions_* e2e modules (no tests here): a live exporter, the operator as a
real process, CustomerSLOs with short windows, and ways to read what happened.

Timing of every spec below (objective 90%, so an error ratio >= 0.2 over both 1m and 15s is a
burn rate >= 2): a customer failing every request is impacted ~12-15 s after it starts failing;
impact is gone ~15 s after it stops; actions are reverted 20 s (recovery) after that.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.support.exporter import Exporter
from tests.support.operator import OperatorProcess

T = TypeVar("T")


def slo(namespace: str, name: str = "checkout", actions: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A CustomerSLO over the exporter's service (= the namespace), with short windows."""
    selector = f'http_requests_total{{service="{namespace}"'
    body: dict[str, Any] = {
        "service": namespace,
        "objective": 90,
        "indicator": {"ratio": {"errors": selector + ',code=~"5.."}', "total": selector + "}"}},
        "customers": {"tiers": [{"name": "enterprise", "weight": 10, "customers": ["acme"]}]},
        "impact": {
            "windows": [{"long": "1m", "short": "15s", "burnRate": 2}],
            "levels": [{"severity": "warning", "impactedCustomers": 1}],
            "retryStorm": {"amplification": 3, "baseline": "30s"},
            "staleAfter": "30s",
        },
        "interval": "2s",
        "recovery": "20s",
        "actions": actions or {},
        **spec,
    }
    return {"apiVersion": "patron.dev/v1alpha1", "kind": "CustomerSLO", "metadata": {"name": name}, "spec": body}


@dataclass
class World:
    """One test's namespace, exporter and operator on the test bed."""

    testbed: Any
    namespace: str
    exporter: Exporter
    tmp_path: Path
    operator: OperatorProcess | None = None

    def start_operator(self, *args: str) -> OperatorProcess:
        op = OperatorProcess(
            self.testbed.kubeconfig,
            self.testbed.prometheus_url,
            [self.namespace],
            self.tmp_path / "operator.log",
            alertmanager_urls=[self.testbed.alertmanager_url],
            extra_args=args,
        )
        op.start()
        self.operator = op
        return op

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.testbed.kubectl(*args, "-n", self.namespace, input=input, check=check)

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", kind, name, "-o", "json", "--show-managed-fields").stdout)
        return out

    def managers(self, kind: str, name: str) -> set[tuple[str, str, str]]:
        """(manager, operation, subresource) of every managedFields entry."""
        fields = self.get(kind, name)["metadata"].get("managedFields") or []
        return {(m["manager"], m["operation"], m.get("subresource", "")) for m in fields}

    def status(self, name: str = "checkout") -> dict[str, Any]:
        return dict(self.get("cslo", name).get("status") or {})

    def records(self, type_: str, name: str = "checkout") -> list[dict[str, Any]]:
        return [r for r in self.status(name).get("actions") or [] if r["type"] == type_]

    def condition(self, type_: str, name: str = "checkout") -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        items = json.loads(self.kubectl("get", "events", "-o", "json").stdout)["items"]
        items = [e for e in items if e["involvedObject"]["kind"] == "CustomerSLO"]
        return sorted(
            (e for e in items if reason is None or e["reason"] == reason), key=lambda e: e["metadata"]["name"]
        )

    def messages(self, reason: str) -> list[str]:
        return [e["message"] for e in self.events(reason)]

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of this namespace the Alertmanager webhook receiver got, in order."""
        log = self.testbed.alert_log
        payloads = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
        return [a for p in payloads for a in p["alerts"] if a["labels"].get("namespace") == self.namespace]

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now for this namespace (its API v2)."""
        url = f"{self.testbed.alertmanager_url}/api/v2/alerts?filter=namespace%3D%22{self.namespace}%22"
        with urllib.request.urlopen(url, timeout=5) as response:
            out: list[dict[str, Any]] = json.loads(response.read())
        return out

    def log_tail(self) -> str:
        return self.operator.log()[-6000:] if self.operator else ""


@pytest.fixture(name="world")
def world_fixture(testbed: Any, namespace: str, patron_crd: str, tmp_path: Path) -> Iterator[World]:
    """A World with a running exporter; import `world_fixture` to use the `world` fixture."""
    exporter = Exporter(namespace).start()
    exporter.register(testbed.targets_dir, f"exporter-{namespace}")
    w = World(testbed, namespace, exporter, tmp_path)
    try:
        yield w
    finally:
        if w.operator is not None:
            # Deleted while the operator runs: it releases what it holds, then the finalizer goes.
            w.kubectl("delete", "cslo", "--all", "--timeout=60s", check=False)
            w.operator.stop()
            print(w.log_tail())
        exporter.stop()


def deployment(name: str = "web", replicas: int = 2, image: str = "registry.invalid/web:1") -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        },
    }
