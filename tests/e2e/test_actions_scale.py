"""Scale end to end: a Deployment on kwok nodes, with and without a HorizontalPodAutoscaler."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from tests.e2e.test_actions_helpers import World, deployment, slo, world_fixture  # noqa: F401
from tests.support.wait import wait_for

SCALE = {"target": {"name": "web"}, "step": 2, "maxReplicas": 5, "minSeverity": "warning", "cooldown": "10s"}


def replicas(w: World) -> int:
    return int(w.get("deployment", "web")["spec"]["replicas"])


def watch(w: World, read: Any, until: int, timeout: float = 120) -> list[tuple[float, int]]:
    """(time, value) of each change of `read()` until it equals `until`."""
    seen: list[tuple[float, int]] = [(time.monotonic(), read())]
    deadline = time.monotonic() + timeout
    while seen[-1][1] != until:
        assert time.monotonic() < deadline, f"timed out at {seen}"
        value = read()
        if value != seen[-1][1]:
            seen.append((time.monotonic(), value))
        time.sleep(0.3)
    return seen


@pytest.mark.slow
def test_scale_steps_to_the_bound_once_per_cooldown_and_is_restored(world: World) -> None:
    w = world
    w.apply(deployment(replicas=2))
    w.exporter.set("acme", rps=10)
    w.exporter.set("bob", rps=10)
    w.start_operator()
    w.apply(slo(w.namespace, actions={"scale": SCALE}))
    wait_for(lambda: w.status().get("lastEvaluationTime"), timeout=90, what="a first evaluation")
    w.exporter.set("acme", rps=10, errors=1.0)

    seen = watch(w, lambda: replicas(w), until=5)
    assert [v for _, v in seen] == [2, 4, 5]
    assert seen[2][0] - seen[1][0] >= 9.5  # cooldown 10s
    time.sleep(12)
    assert replicas(w) == 5  # the bound holds past another cooldown
    (record,) = w.records("Scale")
    assert (record["target"], record["state"], record["originalReplicas"], record["replicas"]) == (
        "Deployment/web",
        "Active",
        2,
        5,
    )
    assert record["targetRef"] == {"kind": "Deployment", "name": "web"}
    assert record["detail"] == "5 replicas (original 2; at the bound 5)"
    assert sorted(w.messages("ActionApplied")) == [
        "Scale Deployment/web: replicas 2 -> 4 (original 2, max 5)",
        "Scale Deployment/web: replicas 4 -> 5 (original 2, max 5)",
    ]
    assert "Scale Deployment/web: no further step, at the bound 5" in w.messages("ActionSkipped")
    assert w.condition("ActionsActive")["reason"] == "Scaling"
    # One merge patch sets the value and claims the Deployment (guarded by its resourceVersion).
    assert ("patron.dev", "Update", "") in w.managers("deployment", "web")
    owner = f"{w.namespace}/checkout"
    assert w.get("deployment", "web")["metadata"]["annotations"]["patron.dev/owner"] == owner

    w.exporter.set("acme", rps=10)
    wait_for(lambda: replicas(w) == 2, timeout=90, what="replicas restored")
    (record,) = w.records("Scale")
    assert (record["state"], record["detail"]) == ("Reverted", "restored 2 replicas: no impact for 20s")
    assert "Scale Deployment/web: restored 2 replicas: no impact for 20s" in w.messages("ActionReverted")
    assert "patron.dev/owner" not in (w.get("deployment", "web")["metadata"].get("annotations") or {})


@pytest.mark.slow
def test_with_an_hpa_its_min_replicas_is_raised_and_restored(world: World) -> None:
    w = world
    w.apply(
        deployment(replicas=2),
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web-hpa"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 6,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                    }
                ],
            },
        },
    )
    w.exporter.set("acme", rps=10)
    w.start_operator()
    w.apply(slo(w.namespace, actions={"scale": SCALE}))
    wait_for(lambda: w.status().get("lastEvaluationTime"), timeout=90, what="a first evaluation")
    w.exporter.set("acme", rps=10, errors=1.0)

    def min_replicas() -> int:
        return int(w.get("hpa", "web-hpa")["spec"]["minReplicas"])

    seen = watch(w, min_replicas, until=5)
    assert [v for _, v in seen][-1] == 5 and max(v for _, v in seen) == 5
    (record,) = w.records("Scale")
    assert (record["target"], record["state"], record["originalReplicas"]) == (
        "HorizontalPodAutoscaler/web-hpa",
        "Active",
        2,
    )
    assert w.get("hpa", "web-hpa")["metadata"]["annotations"]["patron.dev/owner"] == f"{w.namespace}/checkout"
    # The HPA moves the Deployment; Patron never writes spec.replicas.
    wait_for(lambda: replicas(w) >= 4, timeout=60, what="the HPA to scale the Deployment")
    assert not [m for m in w.managers("deployment", "web") if m[0] == "patron.dev"]
    assert ("patron.dev", "Update", "") in w.managers("hpa", "web-hpa")

    w.exporter.set("acme", rps=10)
    wait_for(lambda: min_replicas() == 2, timeout=90, what="minReplicas restored")
    (record,) = w.records("Scale")
    assert (record["state"], record["detail"]) == ("Reverted", "restored 2 minReplicas: no impact for 20s")
    assert not [m for m in w.managers("deployment", "web") if m[0] == "patron.dev"]


def test_a_target_in_another_namespace_is_refused_at_apply_time(world: World) -> None:
    body = slo(world.namespace, actions={"scale": {**SCALE, "target": {"name": "web", "namespace": "kube-system"}}})
    result = world.testbed.kubectl(
        "apply", "--validate=strict", "-n", world.namespace, "-f", "-", input=yaml.safe_dump(body), check=False
    )
    assert result.returncode != 0
    assert 'unknown field "spec.actions.scale.target.namespace"' in result.stderr
    assert world.kubectl("get", "cslo", "checkout", check=False).returncode != 0
