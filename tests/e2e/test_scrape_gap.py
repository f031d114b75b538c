"""Scrape gap end to end: a metrics target stops while some customers have old errors.

Two exporters serve one service: `a` six healthy customers, `b` two customers whose errors stopped
a little earlier. The first row's long window (3m) still burns for b's customers when `b` stops, so
reading its absent short window (15s) as "no recovery" would call them impacted and act. With the
default impact.maxStaleFraction (0.1) 2 of 8 stale customers is PartialData; with 0.5 they are
unknown and the Ready message says so. Neither acts, and nobody is called lost.
"""

from __future__ import annotations

import time
import urllib.request
from datetime import datetime
from typing import Any

import pytest

from patron.impact.prometheus import Prometheus
from tests.e2e.test_actions_helpers import World, deployment, slo, world_fixture  # noqa: F401
from tests.support.exporter import Exporter
from tests.support.wait import wait_for

GAP_ACTIONS = {
    "alert": {"perCustomer": True},
    "scale": {"target": {"name": "web"}, "step": 1, "maxReplicas": 4, "minSeverity": "warning", "cooldown": "10s"},
}
EVALUATED = 'patron_evaluations_total{outcome="Evaluated"}'
# Objective 90%, burn rate 1: an error ratio >= 0.1 over both 3m and 15s is impacted. 30 s of
# errors keep the 3m window above that for ~2.5 minutes.
IMPACT = {
    "windows": [{"long": "3m", "short": "15s", "burnRate": 1}],
    "levels": [{"severity": "warning", "impactedCustomers": 1}],
    "staleAfter": "2m",
}


def evaluations(w: World) -> float:
    """patron_evaluations_total{outcome="Evaluated"} of the operator process."""
    assert w.operator is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{w.operator.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(EVALUATED))


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def gap_slo(namespace: str, name: str, **impact: Any) -> dict[str, Any]:
    return slo(namespace, name=name, actions=GAP_ACTIONS if name == "lenient" else {}, impact={**IMPACT, **impact})


@pytest.mark.slow
def test_a_stopped_target_is_no_recovery_for_nobody_and_no_action(world: World) -> None:
    w = world
    prometheus = Prometheus(w.testbed.prometheus_url)
    b = Exporter(w.namespace).start()
    try:
        b.register(w.testbed.targets_dir, f"exporter-{w.namespace}-b")
        for i in range(6):
            w.exporter.set(f"a{i}", rps=5)
        for name in ("old1", "old2"):
            b.set(name, rps=5, errors=1.0)
        w.apply(deployment(replicas=2))
        w.start_operator()
        errors = f'sum(rate(http_requests_total{{service="{w.namespace}",code="500"}}[15s]))'
        wait_for(lambda: prometheus.query(errors), timeout=60, what="errors scraped")
        wait_for(lambda: b.totals("old1")[1] >= 150, timeout=60, what="30 s of errors")
        for name in ("old1", "old2"):
            b.set(name, rps=5)  # the errors stop: old errors from here on
        wait_for(lambda: prometheus.query(errors)[0][1] == 0, timeout=60, what="a clean short window")

        w.apply(gap_slo(w.namespace, "lenient", maxStaleFraction=0.5), gap_slo(w.namespace, "strict"))
        for name in ("lenient", "strict"):
            wait_for(lambda n=name: w.condition("Ready", n).get("reason") == "Evaluated", timeout=90, what=name)
            assert w.status(name)["activeCustomers"] == 8 and w.status(name)["impactedCustomers"] == 0
        before = w.status("lenient")["lastEvaluationTime"]
        # An unchanged evaluation writes nothing until the 60 s heartbeat (the data age is in
        # dataAgeSeconds, which is not compared): the status stays byte-identical.
        quiet = w.status("strict")
        done = evaluations(w)
        wait_for(lambda: evaluations(w) >= done + 6, timeout=60, what="six more evaluations")
        if time.time() - parse_time(quiet["lastEvaluationTime"]) < 55:
            assert w.status("strict") == quiet

        b.stop()  # its target file goes and it stops answering: Prometheus marks its series stale
        wait_for(
            lambda: w.condition("Ready", "strict").get("reason") == "PartialData",
            timeout=90,
            what="strict: PartialData",
            explain=lambda: str(w.condition("Ready", "strict")),
        )
        assert "2 of 8 active customers" in w.condition("Ready", "strict")["message"]
        assert len(w.messages("PartialData")) == 1  # an Event on the transition, not per evaluation
        # Evaluated well after the short window (15s) lost b's samples, while 3m still burns.
        stamp = wait_for(
            lambda: (t := w.status("lenient")["lastEvaluationTime"]) > before and t,
            timeout=90,
            what="a newer evaluation",
        )
        wait_for(
            lambda: w.status("lenient")["lastEvaluationTime"] > stamp,
            timeout=90,
            interval=5,
            what="an evaluation after the short window emptied",
        )
        lenient = w.status("lenient")
        ready = w.condition("Ready", "lenient")
        assert ready["reason"] == "Evaluated", ready
        assert "2 customers without a fresh sample are unknown, not counted: old1, old2" in ready["message"]
        assert (lenient["activeCustomers"], lenient["impactedCustomers"], lenient["lostCustomers"]) == (6, 0, 0)
        assert w.status("strict").get("lostCustomers") == 0
        assert w.messages("ActionApplied") == [] and w.alerts() == []
        assert int(w.get("deployment", "web")["spec"]["replicas"]) == 2
        burn = f'sum(rate(http_requests_total{{service="{w.namespace}",code="500"}}[3m]))'
        assert prometheus.query(burn)[0][1] > 0  # the old errors were still in the long window
    finally:
        b.stop()
