"""A distributed backend: the operator pointed at Thanos Query writes the same status as the
operator pointed at Prometheus directly.

One live exporter, scraped every second by one Prometheus (external labels cluster and
prometheus_replica, as a Thanos sidecar requires). Two CustomerSLOs with identical specs
(recording rules on) in two namespaces, each served by its own operator process (--namespace):

- direct: the operator reads that Prometheus, which evaluates `patron rules` for direct/checkout
  itself (a `rule_files` entry);
- thanos: the operator reads Thanos Query, which fans out to the Thanos sidecar in front of the
  same Prometheus (raw series) and to a Thanos Ruler evaluating `patron rules` for thanos/checkout
  (recorded series, Ruler querying Thanos Query, so each level reads the one before it through
  Query). Query deduplicates on prometheus_replica and ruler_replica, so the recorded series come
  back once, with only their customer and customerslo labels, as the engine reads them.

Both therefore read recorded series for every window the rules cover (the engine's Ready message
names any window read raw; neither names one once the rules have warmed up, and the Thanos side
did name them while the Ruler warmed up), over the same raw data. Then customers start failing,
one storms and one gives up, and at one moment both statuses must show the same impacted, lost and
storming customers, counts, severity and burn rates. Last, the Ruler stops (a fault from outside):
Thanos Query still answers, with the Ruler's error in `warnings`, and the Thanos side goes
Ready=False/PartialData naming it rather than acting on what is left.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.conftest import Namespaces, get_json
from tests.e2e.test_actions_helpers import slo
from tests.support.exporter import Exporter
from tests.support.operator import OperatorProcess
from tests.support.promserver import PrometheusServer, free_port
from tests.support.thanos import ThanosComponent
from tests.support.wait import wait_for

if TYPE_CHECKING:  # imported by name, pytest would try to collect the class
    from tests.e2e.conftest import Testbed

SERVICE = "checkout-thanos"
# Objective 90%, burn rate 2 over 1m and 15s; a storm is 3x the rate of the minute a minute earlier
# (so it lasts about 75 s after it starts); the budget window is the long window (no budget level).
IMPACT = {
    "windows": [{"long": "1m", "short": "15s", "burnRate": 2}],
    "levels": [{"severity": "warning", "impactedCustomers": 1}, {"severity": "critical", "impactedCustomers": 3}],
    "retryStorm": {"amplification": 3, "baseline": "1m"},
    "staleAfter": "30s",
}
STEADY = {"acme": 5.0, "beta": 5.0, "gamma": 5.0, "quitter": 10.0, "bigbot": 2.0}  # requests per second
# customer: (lost, storming) of each impacted customer, once the incident below has developed.
EXPECTED = {"acme": (False, False), "bigbot": (False, True), "quitter": (True, False)}
# Each of them fails every request: burn rate 1 / (1 - 0.9), once the 15s window holds no success.
BURN = 10.0
IMPACT_HEAD = "3 of 5 active customers impacted (60.0%), weighted 86%"  # acme weighs 10: 12 of 14
COMPARED = ("severity", "activeCustomers", "impactedCustomers", "lostCustomers", "stormingCustomers",
            "impactedFraction", "weightedImpact")  # fmt: skip
READ_RAW = "read raw, not yet covered by the recording rules"


def rule_file(manifest: dict[str, Any], namespace: str) -> str:
    """`patron rules` for the CustomerSLO as applied in `namespace` (its customerslo label names it)."""
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    cli = [sys.executable, "-m", "patron.cli", "rules", "-f", "-"]
    return subprocess.run(cli, input=json.dumps(body), check=True, capture_output=True, text=True, timeout=60).stdout


def status(testbed: Testbed, namespace: str) -> dict[str, Any]:
    return dict(get_json(testbed, "cslo", "checkout", "-n", namespace).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def covered(st: dict[str, Any]) -> bool:
    """Evaluated, every window the rules record read from recorded series (no read-raw note)."""
    ready = condition(st, "Ready")
    return ready.get("status") == "True" and READ_RAW not in ready.get("message", "")


def impacted(st: dict[str, Any]) -> dict[str, tuple[bool, bool]]:
    """customer: (lost, storming) of the impacted customers, once each burns at BURN (until then
    the order of the impact message depends on when each side evaluated)."""
    listed = st.get("impacted") or []
    return (
        {i["customer"]: (i["lost"], i["storming"]) for i in listed}
        if all(i["burnRate"] == BURN for i in listed)
        else {}
    )


@pytest.mark.slow
def test_thanos_query_gives_the_same_status_as_prometheus(testbed: Testbed, patron_crd: str, tmp_path: Path) -> None:
    thanos = testbed.bin_dir / "thanos"
    spaces = Namespaces(testbed, "t-thanos")
    manifest = slo(SERVICE, window="1m", impact=IMPACT, recordingRules={"enabled": True, "interval": "1s"})
    with ExitStack() as stack:
        stack.callback(spaces.cleanup)
        direct_ns, thanos_ns = spaces.make("prom"), spaces.make("thanos")
        exporter = stack.enter_context(Exporter(SERVICE))
        for customer, rps in STEADY.items():
            exporter.set(customer, rps)

        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        (prom_dir / "patron-rules.yml").write_text(rule_file(manifest, direct_ns))
        prometheus = PrometheusServer(
            prom_dir,
            config={
                "global": {
                    "scrape_interval": "1s",
                    "evaluation_interval": "1s",
                    "external_labels": {"cluster": "patron-e2e", "prometheus_replica": "0"},
                },
                "scrape_configs": [{"job_name": "exporter", "static_configs": [{"targets": [exporter.address]}]}],
                "rule_files": [str(prom_dir / "patron-rules.yml")],
            },
        )
        stack.callback(prometheus.stop)
        prometheus.start()

        ruler_rules = tmp_path / "ruler-rules.yml"
        ruler_rules.write_text(rule_file(manifest, thanos_ns))
        query_port = free_port()
        sidecar = ThanosComponent(
            thanos, "sidecar", tmp_path, [f"--prometheus.url={prometheus.url}", f"--tsdb.path={prom_dir / 'data'}"]
        )
        ruler = ThanosComponent(
            thanos,
            "rule",
            tmp_path,
            [
                f"--query=127.0.0.1:{query_port}",
                f"--rule-file={ruler_rules}",
                "--eval-interval=1s",
                f"--data-dir={tmp_path / 'ruler-data'}",
                '--label=ruler_replica="0"',
            ],
        )
        query = ThanosComponent(
            thanos,
            "query",
            tmp_path,
            [
                f"--endpoint={sidecar.grpc_address}",
                f"--endpoint={ruler.grpc_address}",
                "--query.replica-label=prometheus_replica",
                "--query.replica-label=ruler_replica",
            ],
            http_port=query_port,
        )
        for component in (sidecar, query, ruler):
            stack.callback(component.stop)
            component.start()

        operators = {}
        for side, url, ns in (("direct", prometheus.url, direct_ns), ("thanos", query.url, thanos_ns)):
            op = OperatorProcess(testbed.kubeconfig, url, [ns], tmp_path / f"operator-{side}.log")
            stack.callback(op.stop)
            op.start()
            operators[side] = op
        for ns in (direct_ns, thanos_ns):  # deleted while the operators run: they remove their finalizers
            stack.callback(testbed.kubectl, "delete", "cslo", "--all", "-n", ns, "--timeout=60s", check=False)
        testbed.kubectl("apply", "-n", direct_ns, "-f", "-", input=json.dumps(manifest))
        testbed.kubectl("apply", "-n", thanos_ns, "-f", "-", input=json.dumps(manifest))

        def explain() -> str:
            return (
                "".join(
                    f"\n--- {side}: {json.dumps(status(testbed, ns), indent=1)}\n{operators[side].log()[-2000:]}"
                    for side, ns in (("direct", direct_ns), ("thanos", thanos_ns))
                )
                + f"\n--- ruler:\n{ruler.log()[-2000:]}\n--- query:\n{query.log()[-2000:]}"
            )

        # Warm-up: windows not yet covered by the Ruler's series are read raw, and the Thanos side
        # says so; then every window comes from recorded series (1m offset 1m needs 1m45s of rules).
        raw_notes: list[str] = []

        def warmed_up() -> bool:
            thanos_status = status(testbed, thanos_ns)
            message = condition(thanos_status, "Ready").get("message", "")
            if READ_RAW in message:
                raw_notes.append(message)
            return covered(thanos_status) and covered(status(testbed, direct_ns))

        wait_for(warmed_up, timeout=240, interval=2, what="both sides reading recorded series", explain=explain)
        assert raw_notes, "the Thanos side never read raw while the Ruler warmed up"
        for side_ns in (direct_ns, thanos_ns):
            st = status(testbed, side_ns)
            assert (st["activeCustomers"], st["impactedCustomers"], st["severity"]) == (5, 0, "none"), st

        # The incident: quitter fails; 30 s later acme fails, bigbot storms with failing retries
        # and quitter gives up (a tenth of its traffic, still failing): lost. All three hold, each
        # burning at BURN, from about 17 s later (the 15s window free of successes) for about a
        # minute (bigbot's storm).
        exporter.set("quitter", rps=10, errors=1.0)
        time.sleep(30)
        exporter.set("acme", rps=5, errors=1.0)
        exporter.set("bigbot", rps=20, errors=1.0)
        exporter.set("quitter", rps=1, errors=1.0)

        def agreeing(thanos_covered: bool) -> tuple[dict[str, Any], dict[str, Any]] | None:
            direct, via_thanos = status(testbed, direct_ns), status(testbed, thanos_ns)
            ok = impacted(direct) == impacted(via_thanos) == EXPECTED and covered(direct)
            return (direct, via_thanos) if ok and covered(via_thanos) == thanos_covered else None

        direct, via_thanos = wait_for(
            lambda: agreeing(True), timeout=90, interval=1, what="both sides in the incident", explain=explain
        )
        assert_same(direct, via_thanos)
        assert (direct["severity"], direct["lostCustomers"], direct["stormingCustomers"]) == ("critical", 1, 1)

        # A fault from outside: the Ruler stops. Thanos Query still answers HTTP 200, with the
        # Ruler's error in `warnings` (it would drop the endpoint only after its unhealthy timeout,
        # 5 min): partial data, so the Thanos side goes Ready=False/PartialData naming the warning
        # instead of reading what is left, while the direct side goes on seeing the incident.
        ruler.stop()  # Ready was True/covered above: PartialData below is a newer evaluation

        def partial() -> dict[str, Any] | None:
            st = status(testbed, thanos_ns)
            ready = condition(st, "Ready")
            return st if (ready.get("status"), ready.get("reason")) == ("False", "PartialData") else None

        via_thanos = wait_for(partial, timeout=40, interval=1, what="the Thanos side on PartialData", explain=explain)
        assert "answered with warnings (partial data)" in condition(via_thanos, "Ready")["message"]
        assert ruler.grpc_address.rsplit(":", 1)[1] in condition(via_thanos, "Ready")["message"]
        direct = status(testbed, direct_ns)
        assert condition(direct, "Ready")["status"] == "True" and impacted(direct) == EXPECTED, direct


def assert_same(direct: dict[str, Any], via_thanos: dict[str, Any]) -> None:
    """The same impact on both statuses: counts, severity, CustomerImpact reason and message (burn
    rates: both BURN, see `impacted`)."""
    for field in COMPARED:
        assert direct[field] == via_thanos[field], field
    # Ready: evaluated on both (its reason may be Lagging on a busy machine, which is about the
    # operator process, not the backend); CustomerImpact: the same reason (severity) and message.
    assert condition(direct, "Ready")["status"] == condition(via_thanos, "Ready")["status"] == "True"
    assert condition(direct, "CustomerImpact")["reason"] == condition(via_thanos, "CustomerImpact")["reason"]
    # The worst customers in any order: all burn at BURN, and each side's queries of one evaluation
    # run at slightly different moments, so ties are broken by rounding noise.
    for st in (direct, via_thanos):
        head, _, worst = condition(st, "CustomerImpact")["message"].partition("; worst: ")
        assert (head, sorted(worst.split(", "))) == (IMPACT_HEAD, sorted(EXPECTED)), st
