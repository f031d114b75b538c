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
from tests.support.promserver import free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.usefixtures("patron_crd"), pytest.mark.slow]


def last_evaluation(op: OperatorProcess, namespace: str) -> float:
    """patron_last_evaluation_timestamp_seconds of the CustomerSLO svc in `namespace` (0 when absent)."""
    text = op.metrics()
    prefix = f'patron_last_evaluation_timestamp_seconds{{customerslo="svc",namespace="{namespace}"}} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def evaluations(op: OperatorProcess) -> int:
    return op.log().count("evaluation failed")


def ready_reason(testbed: Any, namespace: str) -> str:
    status = json.loads(testbed.kubectl("get", "cslo", "svc", "-n", namespace, "-o", "json").stdout).get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return str(ready.get("reason", ""))


def test_two_shards_with_disjoint_namespaces_never_touch_each_others_objects(
    testbed: Any, namespace: str, tmp_path: Path
) -> None:
    other = f"{namespace[:56]}-b{secrets.token_hex(2)}"
    testbed.kubectl("create", "namespace", other)
    # The shards see different Prometheus: the first one without the metric (each evaluation ends
    # Ready=False NoData), the second one none at all (PrometheusUnavailable). An object evaluated by
    # the other shard would therefore change its Ready reason and get an Event of the other reason.
    closed = f"http://127.0.0.1:{free_port()}"
    expected = {namespace: "NoData", other: "PrometheusUnavailable"}
    shards = {
        ns: OperatorProcess(testbed.kubeconfig, url, [ns], tmp_path / f"{ns}.log")
        for ns, url in ((namespace, testbed.prometheus_url), (other, closed))
    }
    try:
        for op in shards.values():
            op.start()
        for ns in shards:
            body = manifest("nothing", name="svc", interval="2s")
            testbed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(body))
        for ns, op in shards.items():
            wait_for(
                lambda op=op, ns=ns: (ns, "svc") in op.evaluated(), 90, f"the shard of {ns} to evaluate its CustomerSLO"
            )
            wait_for(lambda ns=ns: ready_reason(testbed, ns) == expected[ns], 60, f"Ready {expected[ns]} in {ns}")
        # Negative check, after proof of later evaluations: each shard evaluated its own object at
        # least twice more (2 s interval: a newer patron_last_evaluation_timestamp_seconds) and never
        # the other shard's.
        counts = {ns: evaluations(op) for ns, op in shards.items()}
        times = {ns: last_evaluation(op, ns) for ns, op in shards.items()}
        for ns, op in shards.items():
            wait_for(lambda op=op, ns=ns: evaluations(op) >= counts[ns] + 2, 60, f"more evaluations in {ns}")
            wait_for(lambda op=op, ns=ns: last_evaluation(op, ns) > times[ns], 60, f"a newer evaluation in {ns}")
        for ns, op in shards.items():
            assert op.evaluated() == {(ns, "svc")}
            log = op.log()
            stranger = next(o for o in shards if o != ns)
            assert f"[{stranger}/" not in log, log[-3000:]
        # Each object has the Ready reason of its own shard's Prometheus and exactly one Warning Event,
        # for that transition: an evaluation by the other shard would have added one of its reason.
        for ns in shards:
            assert ready_reason(testbed, ns) == expected[ns]
            events = json.loads(testbed.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
            warnings = [e["reason"] for e in events if e.get("type") == "Warning"]
            assert warnings == [expected[ns]], events
        # The finalizer and Kopf's annotations on each object are its own shard's only: one each.
        for ns in shards:
            meta = json.loads(testbed.kubectl("get", "cslo", "svc", "-n", ns, "-o", "json").stdout)["metadata"]
            assert meta["finalizers"] == ["patron.dev/finalizer"]
        # Deleting one shard's object is handled by that shard alone.
        testbed.kubectl("delete", "cslo", "svc", "-n", other, "--wait=true", "--timeout=60s")
        assert (namespace, "svc") in shards[namespace].evaluated()
        assert "svc" not in {n for _, n in shards[other].evaluated()}
        testbed.kubectl("delete", "cslo", "svc", "-n", namespace, "--wait=true", "--timeout=60s")
        # Each deletion ran the delete handler once (Kopf logs one line per run): issue 10 measured
        # 1.5-1.95 runs per object with the earlier per-object timer.
        for op in shards.values():
            assert op.log().count("Handler 'on_delete' ") == 1, op.log()[-3000:]
    finally:
        for op in shards.values():
            op.stop()
        testbed.kubectl("delete", "namespace", other, "--wait=false", check=False)
