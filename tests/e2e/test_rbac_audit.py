"""Least privilege, measured: the chart grants exactly the verbs the operator calls.

Two Helm releases, each serving one namespace (the default values, and `actions.rollback.enabled`
and `actions.throttle.backendTrafficPolicy.enabled` with peering),
each with `patron run` holding a token of the release's ServiceAccount, go through a whole cycle at
once: impact, status, Events, a throttle key, a Deployment scaled 2 -> 4, an HPA's minReplicas
raised 2 -> 4 (and, with rollback, a fresh rollout paused and resumed and a rule added to an Envoy
Gateway BackendTrafficPolicy), the outage ends, everything
is reverted, the CustomerSLOs are deleted (finalizers released). Then every request the
ServiceAccount made, from the kube-apiserver's audit log (hack/testbed.sh), is compared with the
rules the release installed: nothing refused, nothing used that is not granted, nothing granted
that is not used, except the few verbs in UNEXERCISED, each with the reason the test cannot take
its path. tests/e2e/test_helm.py audits the cluster-wide install with peering the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.e2e.test_actions_throttle_policy import USER_RULES, policy, rules
from tests.e2e.test_helm import (
    CHART,
    Namespaces,
    checkout_slo,
    get_json,
    helm,
    service_account_kubeconfig,
    unique,
)
from tests.support.audit import Verb, differences, granted, kopf_dev_peering, read_audit, service_account
from tests.support.operator import OperatorProcess
from tests.support.promserver import PrometheusServer
from tests.support.wait import wait_for

if TYPE_CHECKING:
    from tests.e2e.conftest import Testbed

INSTANCE = "app.kubernetes.io/instance"

# Granted for a path this test does not take, with the reason; an entry that the code does use
# fails the test (it must then leave this list). Empty: the cycle takes every granted verb (but
# kopf.dev's peering, which the test bed does not serve).
UNEXERCISED: dict[Verb, str] = {}

THROTTLE = {"configMap": "ratelimit-config", "domain": "checkout", "descriptorKey": "customer_id"}


def scale(target: str) -> dict[str, Any]:
    return {"target": {"kind": "Deployment", "name": target}, "step": 2, "maxReplicas": 4, "cooldown": "1h"}


def hpa(name: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 2,
            "maxReplicas": 6,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }


@dataclass
class Cycle:
    """One release serving one namespace, and the operator running with its ServiceAccount's token."""

    testbed: Testbed
    release: str
    namespace: str  # the release's
    watched: str
    rollback: bool
    operator: OperatorProcess
    slos: dict[str, dict[str, Any]] = field(default_factory=dict)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.testbed.kubectl(*args, "-n", self.watched, input=input).stdout

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = get_json(self.testbed, kind, name, "-n", self.watched)
        return out

    def explain(self) -> str:
        status = {n: self.get("cslo", n).get("status", {}) for n in self.slos}
        log = self.operator.log()
        return f"\n{self.release}: status {json.dumps(status, indent=1)}\noperator log (end):\n{log[-3000:]}"

    def wait(self, check: Any, what: str, timeout: float = 150) -> Any:
        return wait_for(check, timeout, f"{what} ({self.release})", explain=self.explain)

    def prepare(self) -> None:
        self.kubectl("create", "configmap", "ratelimit-config", "--from-literal=other.yaml=keep: me")
        self.kubectl("create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=2")
        self.kubectl("create", "deployment", "api", "--image=registry.invalid/api:1", "--replicas=2")
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(hpa("api-hpa", "api")))
        if self.rollback:
            # A fresh rollout (revision 2) just before the impact begins: rollback pauses it.
            self.kubectl("create", "deployment", "rb", "--image=registry.invalid/rb:1", "--replicas=1")
            self.wait(lambda: self.revision("rb") == "1", "revision 1 of rb", 60)
            self.kubectl("set", "image", "deployment/rb", "rb=registry.invalid/rb:2")
            self.wait(lambda: self.revision("rb") == "2", "revision 2 of rb", 60)
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump(policy("checkout")))

    def revision(self, name: str) -> str:
        return str(
            self.get("deployment", name)["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
        )

    def apply_slos(self, outage: bool) -> None:
        actions: dict[str, Any] = {"throttle": THROTTLE, "scale": scale("web")}
        if self.rollback:
            actions["rollback"] = {"target": {"name": "rb"}, "within": "15m", "mode": "pause", "minSeverity": "warning"}
        self.slos = {"act": checkout_slo("act", **actions), "hpa": checkout_slo("hpa", scale=scale("api"))}
        if self.rollback:
            self.slos["gw"] = checkout_slo("gw", throttle={"backendTrafficPolicy": {"name": "checkout"}})
        for body in self.slos.values():
            if not outage:  # errors read from the storm scenario alone, which has none
                body["spec"]["indicator"]["ratio"]["errors"] = 'http_requests_total{service="storm",code=~"5.."}'
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(self.slos.values()))

    def throttle_key(self) -> Any:
        text = (self.get("configmap", "ratelimit-config").get("data") or {}).get("patron-act.yaml")
        return yaml.safe_load(text) if text else None

    def policy_rules(self) -> int:
        return len(rules(self.get("backendtrafficpolicy", "checkout")))

    def replicas(self) -> int:
        return int(self.get("deployment", "web")["spec"]["replicas"])

    def min_replicas(self) -> int:
        return int(self.get("hpa", "api-hpa")["spec"]["minReplicas"])

    def rollback_state(self) -> str:
        records = self.get("cslo", "act").get("status", {}).get("actions") or []
        return next((r["state"] for r in records if r["type"] == "Rollback"), "")

    def roles(self) -> list[dict[str, Any]]:
        """The Role in the served namespace and the ClusterRole (if any) the release installed."""
        selector = f"{INSTANCE}={self.release}"
        out: list[dict[str, Any]] = get_json(self.testbed, "roles", "-n", self.watched, "-l", selector)["items"]
        return out + get_json(self.testbed, "clusterroles", "-l", selector)["items"]


def start_cycle(testbed: Testbed, spaces: Namespaces, prometheus: PrometheusServer, tmp: Path, rollback: bool) -> Cycle:
    ns, watched = spaces.make("system"), spaces.make("app")
    release = unique("patron-audit")
    values = {
        "prometheusUrl": prometheus.url,
        "alertmanagerUrls": [testbed.alertmanager_url],
        "watchNamespaces": [watched],
    }
    extra: list[str] = []
    if rollback:  # ... and Kopf peering (a KopfPeering in the namespace), audited with it
        policies = {"enabled": True, "backendTrafficPolicy": {"enabled": True}}
        values |= {
            "actions": {"rollback": {"enabled": True}, "throttle": policies},
            "peering": {"enabled": True, "name": release},
        }
        extra = ["--peering", release]
    (tmp / "values.yaml").write_text(yaml.safe_dump(values))
    helm(testbed, "install", release, str(CHART), "--namespace", ns, "--values", str(tmp / "values.yaml"))
    op = OperatorProcess(
        kubeconfig=service_account_kubeconfig(testbed, ns, release, tmp / "kubeconfig"),
        prometheus_url=prometheus.url,
        namespaces=[watched],
        alertmanager_urls=[testbed.alertmanager_url],
        log_path=tmp / "operator.log",
        extra_args=extra,
        env={"POD_ID": release},  # Kopf's identity in the peering object
    )
    cycle = Cycle(testbed, release, ns, watched, rollback, op)
    cycle.prepare()
    op.start()
    return cycle


@pytest.fixture
def cycles(
    testbed: Testbed, scenario_prometheus: PrometheusServer, envoy_gateway_crds: str, tmp_path: Path
) -> Iterator[list[Cycle]]:
    spaces = Namespaces(testbed, "t-audit")
    started: list[Cycle] = []
    try:
        for rollback in (False, True):
            tmp = tmp_path / ("rollback" if rollback else "default")
            tmp.mkdir()
            started.append(start_cycle(testbed, spaces, scenario_prometheus, tmp, rollback))
        yield started
    finally:
        for c in started:
            # After a failure: deleted while the operator runs; finalizers dropped if it cannot release.
            testbed.kubectl("delete", "cslo", "--all", "-n", c.watched, "--timeout=60s", check=False)
            c.operator.stop()
            for name in testbed.kubectl("get", "cslo", "-n", c.watched, "-o", "name", check=False).stdout.split():
                patch = '{"metadata":{"finalizers":null}}'
                testbed.kubectl("patch", name, "-n", c.watched, "--type=merge", "-p", patch, check=False)
            helm(testbed, "uninstall", c.release, "--namespace", c.namespace, "--wait", check=False)
        spaces.cleanup()


def run_cycle(cycles: list[Cycle]) -> None:
    """Both cycles at once: act, revert, delete, stop the operators."""
    for c in cycles:
        c.apply_slos(outage=True)
    for c in cycles:
        assert c.wait(c.throttle_key, "the throttle key")["descriptors"][0]["value"] == "bigbot"
        c.wait(lambda c=c: c.replicas() == 4, "Deployment web scaled to 4")
        c.wait(lambda c=c: c.min_replicas() == 4, "HPA api-hpa minReplicas raised to 4")
        if c.rollback:
            c.wait(lambda c=c: c.get("deployment", "rb")["spec"].get("paused"), "Deployment rb paused")
            c.wait(lambda c=c: c.policy_rules() == len(USER_RULES) + 1, "bigbot's rule in the BackendTrafficPolicy")
    for c in cycles:
        if c.rollback:  # a person resumes it: the pause is released (Patron never resumes)
            c.kubectl("rollout", "resume", "deployment/rb")
        c.apply_slos(outage=False)
    for c in cycles:
        c.wait(lambda c=c: c.replicas() == 2, "Deployment web scaled back to 2")
        c.wait(lambda c=c: c.min_replicas() == 2, "HPA api-hpa minReplicas restored")
        c.wait(lambda c=c: c.throttle_key() is None, "the throttle key lifted")
        if c.rollback:
            c.wait(lambda c=c: c.rollback_state() == "Reverted", "the pause released")
            c.wait(lambda c=c: c.policy_rules() == len(USER_RULES), "bigbot's rule removed from the policy")
        assert c.get("configmap", "ratelimit-config")["data"] == {"other.yaml": "keep: me"}
    for c in cycles:  # deleted while the operator runs: it removes its finalizer
        c.kubectl("delete", "cslo", "--all", "--timeout=90s")
        c.operator.stop()


def audit_report(testbed: Testbed, cycles: list[Cycle]) -> dict[str, dict[str, Any]]:
    report = {}
    for c in cycles:
        audit = read_audit(testbed.state_dir / "audit.log", service_account(c.namespace, c.release))
        assert audit.requests, f"no audit events for {c.release}: is the test bed older than its audit log?"
        unexercised = UNEXERCISED | (kopf_dev_peering("kopfpeerings") if c.rollback else {})
        report[c.release] = {
            "config": "rollback and backendTrafficPolicy enabled" if c.rollback else "defaults",
            "used": sorted(map(str, audit.used)),
            **differences(audit, granted(c.roles()), unexercised),
        }
    return report


@pytest.mark.slow
def test_service_account_uses_exactly_what_the_chart_grants(testbed: Testbed, cycles: list[Cycle]) -> None:
    try:
        run_cycle(cycles)
    except AssertionError as err:  # e.g. a verb missing: say which
        raise AssertionError(f"{err}\naudit: {json.dumps(audit_report(testbed, cycles), indent=1)}") from None
    report = audit_report(testbed, cycles)
    print(json.dumps(report, indent=1))
    assert all(set(r) == {"config", "used"} for r in report.values()), json.dumps(report, indent=1)
