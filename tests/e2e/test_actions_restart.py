"""SIGKILL the operator during an incident, start it again: nothing is done twice, nothing is lost.
Then delete the CustomerSLO: what Patron holds is given back."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import yaml

from tests.e2e.test_actions_helpers import World, deployment, slo, world_fixture  # noqa: F401
from tests.support.wait import wait_for

OTHERS = {"config.yaml": "domain: shop\n"}
KEY = "patron-checkout.yaml"


@pytest.mark.slow
def test_sigkill_during_an_incident_then_delete(world: World) -> None:
    w = world
    w.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ratelimit-config"}, "data": OTHERS},
        deployment(replicas=2),
    )
    for name in ("acme", "bigbot"):
        w.exporter.set(name, rps=10)
    op = w.start_operator()
    actions = {
        "alert": {},
        "throttle": {"configMap": "ratelimit-config", "domain": "checkout", "headroom": 1.25},
        "scale": {"target": {"name": "web"}, "step": 2, "maxReplicas": 10, "minSeverity": "warning", "cooldown": "5m"},
    }
    body = slo(w.namespace, actions=actions)
    body["spec"]["impact"]["retryStorm"]["baseline"] = "15s"
    w.apply(body)
    time.sleep(80)  # baseline history
    w.exporter.set("bigbot", rps=60)
    w.exporter.set("acme", rps=10, errors=1.0)

    def data() -> dict[str, str]:
        return dict(w.get("configmap", "ratelimit-config").get("data") or {})

    wait_for(lambda: KEY in data(), timeout=90, what="the throttle entry")
    wait_for(lambda: w.get("deployment", "web")["spec"]["replicas"] == 4, timeout=30, what="the first scale step")
    wait_for(lambda: [a for a in w.alerts() if a["status"] == "firing"], timeout=30, what="the alert at the receiver")
    before = w.status()
    throttled = data()[KEY]

    op.kill()  # SIGKILL: no cleanup, queued alerts are gone with the process
    killed = datetime.now(UTC)
    op.start()
    wait_for(
        lambda: w.status()["lastEvaluationTime"] > killed.isoformat()[:19],
        timeout=90,
        what="an evaluation by the new process",
    )
    time.sleep(15)

    after = w.status()
    assert after["incident"]["started"] == before["incident"]["started"]  # the incident goes on
    assert "ended" not in after["incident"]
    assert w.get("deployment", "web")["spec"]["replicas"] == 4  # no second step: the cooldown is in the record
    (scale,) = [r for r in after["actions"] if r["type"] == "Scale"]
    (scale_before,) = [r for r in before["actions"] if r["type"] == "Scale"]
    stable = ("target", "state", "since", "originalReplicas", "replicas")
    assert (
        [scale[k] for k in stable]
        == [scale_before[k] for k in stable]
        == ["Deployment/web", "Active", scale["since"], 2, 4]
    )
    assert scale["detail"].startswith("4 replicas (original 2; ")
    assert data()[KEY] == throttled  # the throttle is still there, unchanged
    assert yaml.safe_load(throttled)["descriptors"][0]["value"] == "bigbot"
    # The alert is still firing in Alertmanager: re-sent by the new process (endsAt moves on).
    (held,) = w.alertmanager_alerts()
    assert held["status"]["state"] == "active"
    assert datetime.fromisoformat(held["endsAt"].replace("Z", "+00:00")) > datetime.now(UTC)
    assert [a["status"] for a in w.alerts()] == ["firing"]  # one notification, never resolved meanwhile
    assert sorted(m.split(":")[0] for m in w.messages("ActionApplied")) == [
        "Alert CustomerImpact (warning)",
        "Scale Deployment/web",
        "Throttle ConfigMap/ratelimit-config key patron-checkout.yaml customer bigbot",
    ]

    # Deleting the CustomerSLO gives everything back, although the impact goes on.
    w.kubectl("delete", "cslo", "checkout", "--timeout=60s")
    assert w.get("deployment", "web")["spec"]["replicas"] == 2
    assert data() == OTHERS
    wait_for(lambda: [a for a in w.alerts() if a["status"] == "resolved"], timeout=30, what="the resolved alert")
