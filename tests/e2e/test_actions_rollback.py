"""Rollback end to end: a new pod template followed by impact is paused, or undone, once."""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_actions_helpers import World, deployment, slo, world_fixture  # noqa: F401
from tests.support.wait import wait_for


def revision(w: World) -> str:
    return str(w.get("deployment", "web")["metadata"]["annotations"].get("deployment.kubernetes.io/revision"))


def bad_rollout(w: World, mode: str) -> None:
    w.apply(deployment(image="registry.invalid/web:1"))
    w.kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    w.exporter.set("acme", rps=10)
    w.exporter.set("bob", rps=10)
    w.start_operator()
    rollback = {"target": {"name": "web"}, "within": "2m", "mode": mode, "minSeverity": "warning"}
    w.apply(slo(w.namespace, actions={"rollback": rollback}))
    wait_for(lambda: w.status().get("lastEvaluationTime"), timeout=90, what="a first evaluation")
    time.sleep(10)  # the first rollout is well before impact... but within 2m: a fresh template makes it revision 2
    w.apply(deployment(image="registry.invalid/web:2"))
    wait_for(lambda: revision(w) == "2", timeout=30, what="revision 2")
    w.exporter.set("acme", rps=10, errors=1.0)


@pytest.mark.slow
def test_bad_rollout_is_paused_once(world: World) -> None:
    w = world
    bad_rollout(w, "pause")
    wait_for(lambda: w.get("deployment", "web")["spec"].get("paused"), timeout=90, what="the Deployment paused")
    (record,) = w.records("Rollback")
    assert (record["target"], record["state"], record["revision"]) == ("Deployment/web", "Active", "2")
    assert record["detail"].startswith("paused at revision 2: impact began ")
    assert w.condition("ActionsActive")["reason"] == "RolledBack"
    # A person resumes the rollout while impact goes on: Patron does not pause revision 2 again.
    w.kubectl("rollout", "resume", "deployment/web")
    wait_for(lambda: w.records("Rollback")[0]["state"] == "Reverted", timeout=30, what="the pause released")
    time.sleep(10)
    assert not w.get("deployment", "web")["spec"].get("paused")
    assert w.status()["severity"] == "warning"
    assert len([m for m in w.messages("ActionApplied") if m.startswith("Rollback")]) == 1
    assert w.records("Rollback")[0]["detail"] == "released: the Deployment was resumed"


@pytest.mark.slow
def test_bad_rollout_is_undone_once_like_kubectl_rollout_undo(world: World) -> None:
    w = world
    bad_rollout(w, "undo")
    before = w.get("deployment", "web")["spec"]["template"]
    wait_for(lambda: revision(w) == "3", timeout=90, what="the undo")
    template = w.get("deployment", "web")["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == "registry.invalid/web:1"
    assert template["metadata"]["labels"] == {"app": "web"}  # no pod-template-hash
    assert before["spec"]["containers"][0]["image"] == "registry.invalid/web:2"
    (record,) = w.records("Rollback")
    assert (record["state"], record["revision"]) == ("Active", "2")
    assert record["detail"].startswith("undone: revision 2 -> template of revision 1: impact began ")
    time.sleep(15)  # impact goes on
    assert revision(w) == "3"
    assert len([m for m in w.messages("ActionApplied") if m.startswith("Rollback")]) == 1
    rs = w.kubectl("get", "replicasets", "-o", "jsonpath={.items[*].spec.template.spec.containers[0].image}").stdout
    assert sorted(rs.split()) == ["registry.invalid/web:1", "registry.invalid/web:2"]  # the old ReplicaSet reused
