"""Hostile specs on a shared operator: a catastrophic regex stalls nothing, and with
`--enforce-namespace-label namespace` no CustomerSLO reads another namespace's series.

One operator process serves two namespaces for the whole module. Each namespace has its own live
exporter, scraped with the target label namespace=<its namespace> (as Kubernetes service
discovery relabelling sets it), and both exporters use the same service label, "shop": without
enforcement, a selector `http_requests_total{service="shop"}` would read both namespaces.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_actions_helpers import slo
from tests.support.exporter import Exporter
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for

CATASTROPHIC = "^(a|a)+$"  # Python's re backtracks 2^n times on "aaa...ab"
LONG_MISS = "a" * 48 + "b"  # RE2: no match, at once; Python's re: never finishes
LONG_HIT = "a" * 48  # matches: ignored
OWN = ("a-ok-1", "a-ok-2")  # customers of the first namespace
OTHERS = ("b-down", "b-private")  # of the second namespace: b-down fails every request
INTERVAL = 3  # seconds, spec.interval of the CustomerSLOs below


@dataclass
class Bed:
    testbed: Any
    own: str  # the namespace the CustomerSLOs live in
    other: str  # another tenant's namespace
    exporter: Exporter
    operator: OperatorProcess

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.testbed.kubectl(*args, "-n", self.own, input=input, check=check)

    def apply(self, body: dict[str, Any], check: bool = True) -> Any:
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=check)

    def obj(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", "cslo", name, "-o", "json").stdout)
        return out

    def ready(self, name: str) -> dict[str, Any]:
        conditions = self.obj(name).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Ready"), {})

    def last_evaluations(self) -> dict[str, float]:
        """patron_last_evaluation_timestamp_seconds per CustomerSLO of `own`, from the operator itself."""
        url = f"http://127.0.0.1:{self.operator.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            s.labels["customerslo"]: s.value
            for family in text_string_to_metric_families(text)
            if family.name == "patron_last_evaluation_timestamp_seconds"
            for s in family.samples
            if s.labels.get("namespace") == self.own
        }

    def explain(self) -> str:
        return f"\noperator log:\n{self.operator.log()[-4000:]}"


def good_slo() -> dict[str, Any]:
    """Well-behaved: selects service="shop" with no namespace matcher; the operator adds it."""
    return slo("shop", name="good", interval=f"{INTERVAL}s")


def prometheus_customers(testbed: Any, namespace: str) -> set[str]:
    query = urllib.parse.urlencode({"query": f'http_requests_total{{service="shop",namespace="{namespace}"}}'})
    with urllib.request.urlopen(f"{testbed.prometheus_url}/api/v1/query?{query}", timeout=10) as response:
        result = json.loads(response.read())["data"]["result"]
    return {r["metric"]["customer"] for r in result}


@pytest.fixture(scope="module")
def bed(testbed: Any, patron_crd: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    suffix = secrets.token_hex(3)
    own, other = f"t-tenancy-own-{suffix}", f"t-tenancy-other-{suffix}"
    exporters = []
    for ns, customers in ((own, OWN), (other, OTHERS)):
        testbed.kubectl("create", "namespace", ns)
        testbed.kubectl("label", "namespace", ns, "patron.dev/e2e=true")
        exporter = Exporter("shop").start()
        for c in customers:
            exporter.set(c, rps=5, errors=1.0 if c == "b-down" else 0.0)
        exporter.register(testbed.targets_dir, f"exporter-{ns}", labels={"namespace": ns})
        exporters.append(exporter)
    operator = OperatorProcess(
        testbed.kubeconfig,
        testbed.prometheus_url,
        [own, other],
        tmp_path_factory.mktemp("tenancy") / "operator.log",
        extra_args=("--enforce-namespace-label", "namespace"),
    )
    operator.start()
    b = Bed(testbed, own, other, exporters[0], operator)
    try:
        yield b
    finally:
        for ns in (own, other):
            testbed.kubectl("delete", "cslo", "--all", "-n", ns, "--timeout=60s", check=False)
        operator.stop()
        print(b.explain())
        for exporter in exporters:
            exporter.stop()
        for ns in (own, other):
            testbed.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_tenancy_a_selector_naming_another_namespace_is_refused(bed: Bed) -> None:
    # Not vacuous: Prometheus holds the other tenant's series under the same service label.
    wait_for(lambda: prometheus_customers(bed.testbed, bed.other) == set(OTHERS), 60, "the other tenant's series")
    bed.apply(good_slo())
    hostile = slo("shop", name="peek", interval=f"{INTERVAL}s")
    selector = f'http_requests_total{{service="shop",namespace="{bed.other}"}}'
    hostile["spec"]["indicator"] = {"ratio": {"errors": selector[:-1] + ',code=~"5.."}', "total": selector}}
    bed.apply(hostile)  # the API server cannot know the operator's tenancy option: admitted

    refused = wait_for(
        lambda: (r := bed.ready("peek")).get("reason") == "InvalidSpec" and r,
        90,
        "peek: Ready=False InvalidSpec",
        explain=bed.explain,
    )
    assert refused["status"] == "False"
    enforced = f'this operator enforces namespace="{bed.own}" on every selector'
    assert (
        f"spec.indicator.ratio.total: sets namespace label 'namespace' with namespace=\"{bed.other}\"; "
        in (refused["message"])
    )
    assert "spec.indicator.ratio.errors: " in refused["message"] and enforced in refused["message"]
    status = bed.obj("peek")["status"]
    assert "activeCustomers" not in status and "impacted" not in status  # nothing was read

    # The well-behaved one is Ready and sees exactly its own namespace's customers: b-down, failing
    # every request in the other namespace under the same service label, impacts nobody here.
    def own_only() -> dict[str, Any] | None:
        obj = bed.obj("good")
        ready = next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
        return obj["status"] if ready.get("status") == "True" and obj["status"].get("activeCustomers") else None

    status = wait_for(own_only, 90, "good: Ready=True with active customers", explain=bed.explain)
    assert status["activeCustomers"] == len(bed.exporter.customers), status
    assert status["severity"] == "none" and status.get("impactedCustomers") == 0, status
    assert not any(name in json.dumps(status) for name in OTHERS)


@pytest.mark.slow
def test_redos_a_catastrophic_pattern_is_harmless_and_stalls_no_one(bed: Bed) -> None:
    # What RE2 cannot compile is refused at apply time, naming the field (CEL runs Go's RE2 syntax).
    backref = slo("shop", name="backref", customers={"ignore": [r"(a)\1"]})
    out = bed.apply(backref, check=False)
    assert out.returncode != 0 and "spec.customers.ignore[0]" in out.stderr and "RE2" in out.stderr, out.stderr

    bed.apply(good_slo())
    bed.exporter.set(LONG_MISS, rps=5)
    bed.exporter.set(LONG_HIT, rps=5)
    hostile = slo(
        "shop",
        name="redos",
        interval=f"{INTERVAL}s",
        customers={"ignore": [CATASTROPHIC], "tiers": [{"name": "evil", "weight": 5, "pattern": CATASTROPHIC}]},
    )
    bed.apply(hostile)

    # Harmless: evaluated, with the right answer (Python's re would never have answered for LONG_MISS).
    def evaluated() -> dict[str, Any] | None:
        status = bed.obj("redos").get("status", {})
        return status if status.get("activeCustomers") == len(OWN) + 1 else None

    status = wait_for(evaluated, 90, f"redos: {len(OWN) + 1} active customers", explain=bed.explain)
    assert bed.ready("redos")["status"] == "True"
    assert status["severity"] == "none"

    # No one stalls: while the hostile CustomerSLO is evaluated, both keep their cadence. The gauge
    # holds each one's last evaluation time; the time since it, at the end, counts as a gap too.
    seen: dict[str, list[float]] = {"good": [], "redos": []}
    end = time.monotonic() + 8 * INTERVAL
    while time.monotonic() < end:
        for name, value in bed.last_evaluations().items():
            if name in seen and (not seen[name] or value != seen[name][-1]):
                seen[name].append(value)
        time.sleep(0.25)
    now = time.time()
    for name, times in seen.items():
        gaps = [b - a for a, b in itertools.pairwise([*times, now])]
        print(f"{name}: {len(times)} evaluations seen in {8 * INTERVAL} s, gaps {[round(g, 1) for g in gaps]} s")
        assert len(times) >= 4 and max(gaps) <= 3 * INTERVAL, (name, gaps)
