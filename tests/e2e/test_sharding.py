"""Sharding: two `patron run` with disjoint --namespace sets on one cluster never touch each other's objects."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.catalog import manifest
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for

pytestmark = [pytest.mark.usefixtures("patron_crd"), pytest.mark.slow]


def evaluations(op: OperatorProcess) -> int:
    return op.log().count("evaluation failed")


def test_two_shards_with_disjoint_namespaces_never_touch_each_others_objects(
    testbed: Any, namespace: str, tmp_path: Path
) -> None:
    other = f"{namespace[:56]}-b{secrets.token_hex(2)}"
    testbed.kubectl("create", "namespace", other)
    shards = {
        ns: OperatorProcess(testbed.kubeconfig, testbed.prometheus_url, [ns], tmp_path / f"{ns}.log")
        for ns in (namespace, other)
    }
    try:
        for op in shards.values():
            op.start()
        # Prometheus has no such metric: each evaluation ends Ready=False NoData, which is enough to see who evaluates.
        for ns in shards:
            body = manifest("nothing", name="svc", interval="2s")
            testbed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(body))
        for ns, op in shards.items():
            wait_for(
                lambda op=op, ns=ns: (ns, "svc") in op.evaluated(), 90, f"the shard of {ns} to evaluate its CustomerSLO"
            )
        # Negative check, after proof of later evaluations: each shard evaluated its own object at
        # least twice more (2 s interval) and never the other shard's.
        counts = {ns: evaluations(op) for ns, op in shards.items()}
        for ns, op in shards.items():
            wait_for(lambda op=op, ns=ns: evaluations(op) >= counts[ns] + 2, 60, f"more evaluations in {ns}")
        for ns, op in shards.items():
            assert op.evaluated() == {(ns, "svc")}
            log = op.log()
            stranger = next(o for o in shards if o != ns)
            assert f"[{stranger}/" not in log, log[-3000:]
        # Every evaluation failed alike: one Warning Event for the transition (NoData), and no Event
        # per evaluation from the log line (scheduled evaluations log without posting).
        for ns in shards:
            events = json.loads(testbed.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
            assert [e["reason"] for e in events if e["reason"] == "NoData"] == ["NoData"], events
            assert not [e for e in events if "evaluation failed" in e.get("message", "")], events
        # The finalizer and Kopf's annotations on each object are its own shard's only: one each.
        for ns in shards:
            meta = json.loads(testbed.kubectl("get", "cslo", "svc", "-n", ns, "-o", "json").stdout)["metadata"]
            assert meta["finalizers"] == ["patron.dev/finalizer"]
        # Deleting one shard's object is handled by that shard alone.
        testbed.kubectl("delete", "cslo", "svc", "-n", other, "--wait=true", "--timeout=60s")
        assert (namespace, "svc") in shards[namespace].evaluated()
        assert "svc" not in {n for _, n in shards[other].evaluated()}
        testbed.kubectl("delete", "cslo", "svc", "-n", namespace, "--wait=true", "--timeout=60s")
    finally:
        for op in shards.values():
            op.stop()
        testbed.kubectl("delete", "namespace", other, "--wait=false", check=False)
