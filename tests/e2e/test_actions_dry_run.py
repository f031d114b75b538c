"""Dry run end to end: every action decided and reported, no object changed, no alert sent."""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_actions_helpers import World, deployment, slo, world_fixture  # noqa: F401
from tests.support.wait import wait_for

OTHERS = {"config.yaml": "domain: shop\n"}


@pytest.mark.slow
def test_dry_run_decides_reports_and_changes_nothing(world: World) -> None:
    w = world
    w.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ratelimit-config"}, "data": OTHERS},
        deployment(replicas=2, image="registry.invalid/web:1"),
    )
    w.kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    for name in ("acme", "bigbot"):
        w.exporter.set(name, rps=10)
    w.start_operator()
    actions = {
        "alert": {"perCustomer": True},
        "throttle": {"configMap": "ratelimit-config", "domain": "checkout", "headroom": 1.25},
        "scale": {"target": {"name": "web"}, "step": 2, "maxReplicas": 5, "minSeverity": "warning", "cooldown": "10s"},
        "rollback": {"target": {"name": "web"}, "within": "5m", "mode": "pause", "minSeverity": "warning"},
    }
    body = slo(w.namespace, actions=actions, dryRun=True)
    body["spec"]["impact"]["retryStorm"]["baseline"] = "15s"
    w.apply(body)
    time.sleep(80)  # baseline history
    w.apply(deployment(replicas=2, image="registry.invalid/web:2"))  # a new rollout...
    w.kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    cm_before = w.get("configmap", "ratelimit-config")["metadata"]["resourceVersion"]
    dep_before = w.get("deployment", "web")["metadata"]["generation"]
    w.exporter.set("bigbot", rps=60)  # ...then a storm and impact
    w.exporter.set("acme", rps=10, errors=1.0)

    def decided() -> set[str]:
        return {r["type"] for r in w.status().get("actions") or [] if r["state"] == "Skipped"}

    wait_for(lambda: decided() >= {"Alert", "Throttle", "Scale", "Rollback"}, timeout=60, what="every kind decided")
    skipped = w.messages("ActionSkipped")
    for expected in (
        "dry run: would Alert CustomerImpact (warning): firing",
        "dry run: would Alert CustomerImpacted (warning) customer acme: firing",
        "dry run: would Throttle ConfigMap/ratelimit-config key patron-checkout.yaml customer bigbot: "
        "13 req/s (baseline 10 x 1.25)",
        "dry run: would Scale Deployment/web: replicas 2 -> 4 (original 2, max 5)",
    ):
        assert expected in skipped, skipped
    assert [m for m in skipped if m.startswith("dry run: would Rollback Deployment/web: paused at revision 2")]
    assert w.messages("ActionApplied") == []
    condition = w.condition("ActionsActive")
    assert (condition["status"], condition["reason"]) == ("False", "DryRun")

    time.sleep(12)  # past a cooldown: still nothing
    cm = w.get("configmap", "ratelimit-config")
    assert (cm["metadata"]["resourceVersion"], cm["data"]) == (cm_before, OTHERS)
    dep = w.get("deployment", "web")
    assert (dep["metadata"]["generation"], dep["spec"]["replicas"], dep["spec"].get("paused")) == (dep_before, 2, None)
    assert w.alerts() == [] and w.alertmanager_alerts() == []
    assert len(skipped) == len(w.messages("ActionSkipped"))  # decisions that stand are reported once

    w.exporter.set("bigbot", rps=10)
    w.exporter.set("acme", rps=10)
    wait_for(lambda: not decided(), timeout=90, what="decisions lapsed after recovery")
    lapsed = w.messages("ActionSkipped")
    assert "dry run: would Scale Deployment/web: released: no impact for 20s" in lapsed
    assert "dry run: would Alert CustomerImpact (warning): resolved" in lapsed
    assert w.alerts() == [] and w.messages("ActionApplied") == [] and w.messages("ActionReverted") == []
    assert w.condition("ActionsActive")["reason"] == "None"
