"""HA: replicas of `patron run --peering` pick random Kopf priorities; one works, the others stand by."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.catalog import manifest
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("patron_crd"), pytest.mark.slow]


def evaluations(op: OperatorProcess) -> int:
    return op.log().count("evaluation failed")


def test_one_peer_works_and_another_takes_over(testbed: Any, namespace: str, tmp_path: Path) -> None:
    testbed.kubectl("apply", "--server-side", "-f", str(REPO / "charts" / "patron" / "crds" / "kopfpeerings.yaml"))
    peering = {"apiVersion": "zalando.org/v1", "kind": "KopfPeering", "metadata": {"name": "patron"}}
    testbed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(peering))
    # Prometheus has no such metric: every evaluation logs "evaluation failed", which shows who evaluates.
    body = manifest("nothing", interval="2s")
    ops = [
        OperatorProcess(
            testbed.kubeconfig,
            testbed.prometheus_url,
            [namespace],
            tmp_path / f"op{i}.log",
            extra_args=["--peering", "patron"],
        )
        for i in range(2)
    ]
    for op in ops:
        op.start()
    try:
        # A standby may stay in Kopf's initial pause without logging; the active peer logs "Resuming".
        wait_for(lambda: any("Resuming operations" in o.log() for o in ops), timeout=60, what="an active peer")
        testbed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
        wait_for(lambda: sum(evaluations(o) for o in ops) >= 3, 60, "evaluations")
        active = [o for o in ops if evaluations(o)]
        assert len(active) == 1, [o.log()[-2000:] for o in ops]
        standby = next(o for o in ops if o is not active[0])
        active[0].stop()
        wait_for(lambda: evaluations(standby) >= 2, 90, "the standby peer to take over")
    finally:
        for op in ops:
            op.stop()
