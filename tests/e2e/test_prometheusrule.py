"""--manage-prometheus-rules end to end: the PrometheusRule `patron-<name>` a CustomerSLO owns, on the
real kube-apiserver with the Prometheus Operator's own PrometheusRule CRD (hack/tools.sh), the
operator run with the token of a Helm release that grants it (recordingRules.managePrometheusRules).

Created with an ownerReference, the labels and exactly `patron rules -o prometheusrule`'s spec; not
written again while in step; updated on a spec change; Forbidden said on the status while its RBAC
is revoked, with evaluations going on; deleted when disabled; garbage-collected with the
CustomerSLO. A foreign PrometheusRule of the same name is left untouched and named on the status.
What the ServiceAccount did on prometheusrules (the audit log) is exactly what the chart grants.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.e2e.conftest import CHART, Namespaces, get_json, helm, service_account_kubeconfig, unique
from tests.e2e.test_actions_helpers import World, slo, world_fixture  # noqa: F401
from tests.support.audit import Verb, granted, read_audit, service_account
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for

if TYPE_CHECKING:
    from tests.e2e.conftest import Testbed

RULES = ("monitoring.coreos.com", "prometheusrules")


@pytest.fixture(scope="session")
def prometheusrule_crd(testbed: Testbed) -> str:
    """The Prometheus Operator's PrometheusRule CRD (hack/tools.sh prometheusrule-crd), Established."""
    crd = testbed.bin_dir.parent / "prometheusrule-crd.yaml"
    testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/prometheusrules.monitoring.coreos.com")
    return "prometheusrules.monitoring.coreos.com"


@dataclass
class Release:
    name: str
    namespace: str
    kubeconfig: Path  # a token of its ServiceAccount


@pytest.fixture
def release(testbed: Testbed, world: World, prometheusrule_crd: str, tmp_path: Path) -> Iterator[Release]:
    """The chart serving the world's namespace with PrometheusRules managed and every action off."""
    spaces = Namespaces(testbed, "t-promrule")
    name = unique("patron-rules")
    system = spaces.make("system")
    values = {
        "prometheusUrl": testbed.prometheus_url,
        "watchNamespaces": [world.namespace],
        "actions": {"throttle": {"enabled": False}, "scale": {"enabled": False}, "rollback": {"enabled": False}},
        "recordingRules": {"managePrometheusRules": True, "ruleLabels": {"release": "kps"}},
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    try:
        helm(testbed, "install", name, str(CHART), "--namespace", system, "--values", str(tmp_path / "values.yaml"))
        yield Release(name, system, service_account_kubeconfig(testbed, system, name, tmp_path / "kubeconfig"))
    finally:
        if world.operator is not None:  # CustomerSLOs deleted while the operator still has its RBAC
            world.kubectl("delete", "cslo", "--all", "--timeout=60s", check=False)
            world.operator.stop()
            print(world.log_tail())
            world.operator = None
        helm(testbed, "uninstall", name, "--namespace", system, "--wait", check=False)
        spaces.cleanup()


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rule(w: World, name: str = "patron-checkout") -> dict[str, Any] | None:
    got = w.kubectl("get", "prometheusrule", name, "-o", "json", "--ignore-not-found").stdout
    return json.loads(got) if got.strip() else None


def patron_rules(w: World, body: dict[str, Any]) -> dict[str, Any]:
    """What `patron rules -o prometheusrule` prints for the manifest."""
    manifest = {**body, "metadata": {**body["metadata"], "namespace": w.namespace}}
    printed = subprocess.run(
        [sys.executable, "-m", "patron.cli", "rules", "-f", "-", "-o", "prometheusrule"],
        input=yaml.safe_dump(manifest),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out: dict[str, Any] = yaml.safe_load(printed)
    return out


def evaluated_after(w: World, since: str, name: str = "checkout") -> dict[str, Any]:
    """The status once the operator evaluated after `since` (an impacted customer's rates move, so
    every evaluation writes lastEvaluationTime)."""
    out: dict[str, Any] = wait_for(
        lambda: (s := w.status(name)).get("lastEvaluationTime", "") > since and s,
        timeout=60,
        what=f"an evaluation of {name} after {since}",
        explain=lambda: f"\nstatus: {json.dumps(w.status(name), indent=1)}\n{w.log_tail()}",
    )
    return out


def recording(w: World, name: str = "checkout") -> dict[str, Any]:
    return w.condition("RecordingRules", name)


def wait_reason(w: World, reason: str, name: str = "checkout") -> dict[str, Any]:
    cond: dict[str, Any] = wait_for(
        lambda: (c := recording(w, name)).get("reason") == reason and c,
        timeout=60,
        what=f"RecordingRules {reason} on {name}",
        explain=lambda: f"\nstatus: {json.dumps(w.status(name), indent=1)}\n{w.log_tail()}",
    )
    return cond


def revoke(w: World, role: str) -> list[dict[str, Any]]:
    """Drop the Role's prometheusrules rule (as an administrator might); the rules as they were."""
    rules: list[dict[str, Any]] = get_json(w.testbed, "role", role, "-n", w.namespace)["rules"]
    kept = [r for r in rules if r["resources"] != ["prometheusrules"]]
    assert len(kept) == len(rules) - 1, rules
    w.kubectl("patch", "role", role, "--type=merge", "-p", json.dumps({"rules": kept}))
    return rules


@pytest.mark.slow
def test_owned_prometheusrule_lifecycle(world: World, release: Release) -> None:
    w = world
    w.exporter.set("acme", rps=10, errors=1.0)  # impacted throughout: every evaluation writes status
    w.exporter.set("bob", rps=10)
    foreign = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "patron-taken", "labels": {"team": "other"}},
        "spec": {"groups": [{"name": "theirs", "rules": [{"record": "theirs:up", "expr": "up"}]}]},
    }
    w.apply(foreign)
    foreign_before = rule(w, "patron-taken")
    op = OperatorProcess(
        release.kubeconfig,
        w.testbed.prometheus_url,
        [w.namespace],
        w.tmp_path / "operator.log",
        extra_args=["--manage-prometheus-rules", "--prometheus-rule-label", "release=kps"],
    )
    w.operator = op
    op.start()
    body = slo(w.namespace, recordingRules={"enabled": True, "labels": {"team": "sre"}})
    w.apply(body, slo(w.namespace, "taken", recordingRules={"enabled": True}))

    # Created: owned by the CustomerSLO, labelled, holding exactly `patron rules -o prometheusrule`'s spec.
    assert wait_reason(w, "Managed")["status"] == "True"
    created = rule(w)
    assert created is not None
    meta = created["metadata"]
    uid = w.get("cslo", "checkout")["metadata"]["uid"]
    assert meta["ownerReferences"] == [
        {"apiVersion": "patron.dev/v1alpha1", "kind": "CustomerSLO", "name": "checkout", "uid": uid, "controller": True}
    ]
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "patron", "release": "kps", "team": "sre"}
    assert meta["annotations"]["patron.dev/owner"] == f"{w.namespace}/checkout"
    assert created["spec"] == patron_rules(w, body)["spec"]

    # In step: not written again, across evaluations.
    evaluated_after(w, stamp())
    assert rule(w)["metadata"]["resourceVersion"] == meta["resourceVersion"]  # type: ignore[index]

    # The foreign namesake: untouched, and the status names it.
    taken = wait_reason(w, "NotOwned", "taken")
    assert taken["status"] == "False" and "PrometheusRule patron-taken exists and is not owned" in taken["message"]
    evaluated_after(w, stamp(), "taken")
    assert rule(w, "patron-taken") == foreign_before

    # A spec change: updated promptly, in one write.
    body = slo(w.namespace, recordingRules={"enabled": True, "labels": {"team": "platform"}, "interval": "1m"})
    w.apply(body)
    updated = wait_for(
        lambda: (r := rule(w)) and r["metadata"]["labels"].get("team") == "platform" and r, 30, "the rule updated"
    )
    assert updated["spec"] == patron_rules(w, body)["spec"]
    assert updated["spec"]["groups"][0]["interval"] == "1m"

    # RBAC revoked from outside: Forbidden on the status, evaluations go on; restored: managed again.
    role = revoke(w, release.name)
    forbidden = wait_reason(w, "Forbidden")
    assert forbidden["message"].startswith("the operator may not get PrometheusRule patron-checkout (HTTP 403")
    assert evaluated_after(w, stamp())["conditions"][0]["status"] == "True"  # Ready: evaluated
    w.kubectl("patch", "role", release.name, "--type=merge", "-p", json.dumps({"rules": role}))
    wait_reason(w, "Managed")

    # Disabled: deleted, and nothing left to say.
    w.apply(slo(w.namespace, recordingRules={"enabled": False}))
    wait_for(lambda: rule(w) is None, 30, "the rule deleted")
    wait_for(lambda: not recording(w), 30, "the RecordingRules condition gone")

    # Enabled again, then the CustomerSLO deleted: the garbage collector deletes the rule.
    w.apply(slo(w.namespace, recordingRules={"enabled": True}))
    wait_for(lambda: rule(w), 30, "the rule created again")
    w.kubectl("delete", "cslo", "checkout", "--timeout=60s")
    wait_for(lambda: rule(w) is None, 90, "the rule garbage-collected")
    assert rule(w, "patron-taken") == foreign_before

    audit = read_audit(w.testbed.state_dir / "audit.log", service_account(release.namespace, release.name))
    on_rules = {v for v in audit.used if (v.group, v.resource) == RULES}
    roles = [get_json(w.testbed, "role", release.name, "-n", w.namespace)]
    grants = {v for v in granted(roles) if (v.group, v.resource) == RULES}
    assert on_rules == grants == {Verb(verb, *RULES) for verb in ("get", "create", "patch", "delete")}
    assert {v for v in audit.refused if (v.group, v.resource) == RULES} == {Verb("get", *RULES)}  # while revoked
