"""The demo's storm incident, end to end, asserted step by step (issue 6, docs/demo.md).

Real parts only: the test bed's kube-apiserver (with controllers and kwok nodes), Prometheus
scraping the shop (hack/demo/shop.py, a real HTTP service with real clients), Alertmanager and its
webhook receiver, and `patron run` as a process. The CustomerSLO is examples/demo-customerslo.yaml
(1m/20s windows, a 1m storm baseline, 60s recovery) in the test's namespace; the incident is
hack/demo/incidents/storm.yaml, played by the same runner as `make demo`.

The story: bigbot storms -> everyone is hurt -> Patron throttles bigbot (and only bigbot) and
scales checkout -> the others' error ratio returns under the objective -> the storm ends -> after
`recovery` the throttle is lifted and the replicas restored -> nothing flipped more than once.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support.operator import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack" / "demo"))
import demo  # noqa: E402
import incidents  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("patron_crd")]

STORMER = "bigbot"
KEY = "patron-checkout.yaml"
# The demo's objective is 99%: at most 1% of a customer's requests may fail.
ALLOWED_ERROR_RATIO = 0.01
# Action Events: "Throttle ConfigMap/x key k customer c: ...", "Scale Deployment/x: ...",
# "Alert CustomerImpacted (critical) customer c: ..."
EVENT_RE = re.compile(
    r"^(?P<type>Alert|Throttle|Scale|Rollback) (?P<target>\S+(?: \(\w+\))?)"
    r"(?: key \S+)?(?: customer (?P<customer>[^:]+))?:"
)


@dataclass
class Sample:
    at: float  # wall-clock seconds
    throttle: str | None  # the ConfigMap key's content
    replicas: int
    image: str
    fault: str | None  # the pod template's demo.patron.dev/fault annotation
    severity: str
    impacted: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    incident: dict[str, Any]


@dataclass
class Recorder:
    """Polls what the story is about once a second, in a thread, for the assertions afterwards."""

    api: Any
    namespace: str
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)

    def _run(self) -> None:
        core, apps = client.CoreV1Api(self.api), client.AppsV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        while not self.stop.is_set():
            try:
                cm = core.read_namespaced_config_map("ratelimit-config", self.namespace)
                dep = apps.read_namespaced_deployment("checkout", self.namespace)
                slo = custom.get_namespaced_custom_object(
                    "patron.dev", "v1alpha1", self.namespace, "customerslos", "checkout"
                )
            except client.ApiException:
                pass
            else:
                status = slo.get("status") or {}
                template = dep.spec.template
                self.samples.append(
                    Sample(
                        at=time.time(),
                        throttle=(cm.data or {}).get(KEY),
                        replicas=dep.spec.replicas,
                        image=template.spec.containers[0].image,
                        fault=(template.metadata.annotations or {}).get(incidents.FAULT_ANNOTATION),
                        severity=status.get("severity", ""),
                        impacted=status.get("impacted") or [],
                        actions=status.get("actions") or [],
                        incident=status.get("incident") or {},
                    )
                )
            self.stop.wait(1.0)

    def first(self, predicate: Any) -> Sample | None:
        return next((s for s in self.samples if predicate(s)), None)

    def wait(self, predicate: Any, timeout: float, what: str) -> Sample:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first(predicate)
            if found is not None:
                return found
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ended_at(sample: Sample) -> float:
    """status.incident.ended as seconds since the epoch."""
    return datetime.fromisoformat(sample.incident["ended"].replace("Z", "+00:00")).timestamp()


def throttled(sample: Sample) -> list[str]:
    if not sample.throttle:
        return []
    return [d.get("value") for d in (yaml.safe_load(sample.throttle) or {}).get("descriptors") or []]


def prom_query(url: str, query: str, at: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def worst_error_ratio(
    url: str, namespace: str, at: float, window: str = "20s", customers: str = f'customer!="{STORMER}"'
) -> tuple[float, str]:
    """The highest error ratio over `window` among `customers` (default: all but the stormer), and whose."""
    sel = f'service="checkout",namespace="{namespace}",{customers},customer!~"synthetic-.*"'
    query = (
        f'sum by (customer) (rate(http_requests_total{{{sel},code=~"5.."}}[{window}]))'
        f" / sum by (customer) (rate(http_requests_total{{{sel}}}[{window}]))"
    )
    rows = [(float(r["value"][1]), r["metric"].get("customer", "")) for r in prom_query(url, query, at)]
    rows = [r for r in rows if not math.isnan(r[0])]
    return max(rows, default=(0.0, ""))


def assert_no_flips(
    api: Any, namespace: str, samples: list[Sample], released_at: float
) -> dict[tuple[str, str, str], list[str]]:
    """Nothing oscillates: no action flips more than once per incident, by Patron's Events and by the
    status.actions history. Throttle, Scale and Rollback never apply again once reverted; an alert
    fires again only for a new incident. Impact never returns once Patron has let go (`released_at`).
    Returns the Events' history per action."""
    events = action_events(api, namespace)
    starts = [t for t, r, _ in events if r == "ImpactStarted"]
    assert starts, "no ImpactStarted Event"
    assert all(t < released_at for t in starts), f"impact came back after the actions were reverted: {events}"
    if len(starts) > 1:
        # Seen about once in seven runs: a customer who gave up has its good requests age out of its
        # long window first, and is impacted again for a few seconds while the actions are still held.
        print(f"note: the incident re-opened {len(starts) - 1} time(s) within `recovery`")
    history: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    reverted_at: dict[tuple[str, str, str], float] = {}
    for t, reason, message in events:
        if reason not in ("ActionApplied", "ActionReverted"):
            continue
        m = EVENT_RE.match(message)
        assert m, f"unparsed action event: {message}"
        key = (m["type"], m["target"], m["customer"] or "")
        history[key].append(reason)
        if reason == "ActionReverted":
            reverted_at[key] = t
        elif key in reverted_at:
            new_incident = any(reverted_at[key] <= s <= t for s in starts)
            assert key[0] == "Alert" and new_incident, f"{key} applied again after its revert: {history[key]}"
            del reverted_at[key]
    states: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for s in samples:
        for a in s.actions:
            seq = states[(a["type"], a["target"], a.get("customer", ""))]
            if not seq or seq[-1] != a["state"]:
                seq.append(a["state"])
    for key, seq in states.items():
        if key[0] == "Alert" and len(starts) > 1:
            continue  # checked by the Events above
        # A revert may be seen pending (Reverting, written before the change) on its way to Reverted.
        done = [x for x in seq if x != "Reverting"]
        assert done in (["Active"], ["Active", "Reverted"], ["Reverted"], ["Skipped"]), f"{key}: {seq}"
    return history


def alerts_received(alert_log: Path, namespace: str) -> list[dict[str, Any]]:
    return [
        a
        for line in alert_log.read_text().splitlines()
        for a in json.loads(line).get("alerts", [])
        if a["labels"].get("namespace") == namespace and a["labels"].get("alertname") == "CustomerImpact"
    ]


def action_events(api: Any, namespace: str) -> list[tuple[float, str, str]]:
    """(time, reason, message) of Patron's Events on the CustomerSLO, oldest first, repeats expanded."""
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector="involvedObject.kind=CustomerSLO,involvedObject.name=checkout"
    )
    out = []
    for e in events.items:
        when = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
        out.extend([(when.timestamp(), e.reason, e.message or "")] * (e.count or 1))
    return sorted(out, key=lambda x: x[0])


@pytest.fixture
def shop(testbed: Any, namespace: str, tmp_path: Path) -> Iterator[str]:
    testbed.kubectl("apply", "-n", namespace, "-f", str(demo.MANIFESTS))
    testbed.kubectl("rollout", "status", "-n", namespace, "deployment/checkout", "--timeout=120s")
    proc, url = demo.start_shop(namespace, testbed.state_dir, tmp_path, seed=1)
    yield url
    demo.stop(proc)
    print((tmp_path / "shop.log").read_text()[-3000:])


def operator_for(testbed: Any, namespace: str, tmp_path: Path) -> OperatorProcess:
    return OperatorProcess(
        testbed.kubeconfig,
        testbed.prometheus_url,
        [namespace],
        tmp_path / "operator.log",
        alertmanager_urls=[testbed.alertmanager_url],
    )


def test_storm_story(testbed: Any, namespace: str, shop: str, k8s_api: Any, tmp_path: Path) -> None:
    slo = demo.customer_slo(namespace)
    recovery = incidents.seconds(slo["spec"]["recovery"])
    testbed.kubectl("apply", "-f", "-", input=yaml.safe_dump(slo))
    operator = operator_for(testbed, namespace, tmp_path)
    recorder = Recorder(k8s_api, namespace)
    marks: dict[str, float] = {}
    runner = incidents.Runner(
        shop_url=shop,
        namespace=namespace,
        warmup=demo.warmup_seconds(slo),
        kube=k8s_api,
        say=lambda text: print(f"[incident] {text}"),
        on_mark=lambda m: marks.setdefault(m.what, time.time()),
    )
    operator.start()
    recorder.start()
    try:
        testbed.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cslo/checkout", "--timeout=180s")
        script = incidents.load("storm")
        asyncio.run(runner.run(script))
        assert all(m.ok for m in runner.marks), [m for m in runner.marks if not m.ok]
        storm_started = marks[f"storm: {STORMER} x10"]
        storm_ended = marks[f"calm: {STORMER}"]
        # After the storm: the throttle is lifted and the replicas restored, `recovery` after the impact ended.
        lifted = recorder.wait(
            lambda s: s.at > storm_ended and not s.throttle, recovery + 120, "the throttle to be lifted"
        )
        restored = recorder.wait(lambda s: s.at > storm_ended and s.replicas == 3, 60, "the replicas to be restored")
        time.sleep(5)  # a few more evaluations: nothing comes back
    finally:
        recorder.close()
        operator.stop()
    samples = recorder.samples
    log = operator.log()

    # 1. The impact was real: everyone else was hurt beyond the objective during the storm.
    impact = recorder.first(lambda s: s.at > storm_started and s.severity in ("warning", "critical"))
    assert impact is not None, f"Patron saw no impact\n{log[-3000:]}"
    hurt, who = max(worst_error_ratio(testbed.prometheus_url, namespace, impact.at + d) for d in (0, 5, 10))
    assert hurt > ALLOWED_ERROR_RATIO, "the storm did not hurt anyone else: the test proves nothing"

    # 2. The storming customer is throttled: a ConfigMap entry for exactly that customer, at about
    #    its usual rate (3 req/s x headroom 1.2), and never anyone else.
    first = recorder.first(lambda s: bool(s.throttle))
    assert first is not None, f"no throttle was written\n{log[-3000:]}"
    assert throttled(first) == [STORMER]
    entry = (yaml.safe_load(first.throttle or "") or {})["descriptors"][0]
    assert entry["key"] == "customer_id" and entry["rate_limit"]["unit"] == "second"
    assert 2 <= entry["rate_limit"]["requests_per_unit"] <= 6, entry
    others = {c for s in samples for c in throttled(s)} - {STORMER}
    assert not others, f"customers throttled besides {STORMER}: {sorted(others)}"
    assert first.at - storm_started < 60, "the storm was not throttled within a minute"

    # 3. The others' error ratio returns under their objective once bigbot is throttled (and stays there).
    recovered_at = None
    for t in range(int(first.at), int(storm_ended) + 1):
        ratio, _ = worst_error_ratio(testbed.prometheus_url, namespace, t)
        if ratio < ALLOWED_ERROR_RATIO:
            recovered_at = t
            break
    assert recovered_at is not None, "the other customers' error ratio did not return under the objective"
    assert recovered_at - first.at < 45
    for t in range(recovered_at + 20, int(storm_ended), 5):  # one short window later, until the storm ends
        ratio, who = worst_error_ratio(testbed.prometheus_url, namespace, t)
        assert ratio < ALLOWED_ERROR_RATIO, f"{who} fails {ratio:.1%} at +{t - recovered_at}s after recovery"

    # 4. The throttle is removed after the storm ends (and not before): `recovery` after the impact ended.
    assert all(throttled(s) == [STORMER] for s in samples if first.at <= s.at < storm_ended)
    # The last end of the incident before the revert (it may have re-opened for a few seconds).
    ended = [s for s in samples if storm_started < s.at <= lifted.at and s.incident.get("ended")][-1]
    assert lifted.at >= storm_ended
    assert lifted.at - ended_at(ended) >= recovery  # reverted after `recovery`, not before
    scaled = recorder.first(lambda s: s.at > storm_started and s.replicas > 3)
    assert scaled is not None and scaled.replicas == 5, "checkout was not scaled by one step of 2"
    assert restored.at - ended_at(ended) >= recovery

    # 5. Nothing oscillates: no action flips more than once per incident.
    history = assert_no_flips(k8s_api, namespace, samples, lifted.at)
    assert ("Throttle", "ConfigMap/ratelimit-config", STORMER) in history
    assert ("Scale", "Deployment/checkout", "") in history

    # 6. Alertmanager received the SLO alert for this namespace, firing and then resolved.
    received = alerts_received(testbed.alert_log, namespace)
    assert [a for a in received if a["status"] == "firing"], "no CustomerImpact alert reached the receiver"
    assert [a for a in received if a["status"] == "resolved"], "the CustomerImpact alert was never resolved"

    print(
        "timeline (s after the storm began): "
        f"impact {impact.at - storm_started:.0f}, throttle {first.at - storm_started:.0f}, "
        f"scaled {scaled.at - storm_started:.0f}, others under objective {recovered_at - storm_started:.0f}, "
        f"storm ended {storm_ended - storm_started:.0f}, impact ended {ended_at(ended) - storm_started:.0f}, "
        f"throttle lifted {lifted.at - storm_started:.0f}, replicas restored {restored.at - storm_started:.0f}"
    )


ENTERPRISE = 'customer=~"acme|globex|initech|umbrella"'


def test_rollout_story(testbed: Any, namespace: str, shop: str, k8s_api: Any, tmp_path: Path) -> None:
    """hack/demo/incidents/rollout.yaml: checkout 1.5.0 fails every enterprise request; Patron sees only
    enterprise customers impacted (critical by weight), undoes the rollout within `rollback.within`,
    and releases the record after `recovery`; no throttle, nothing flips."""
    slo = demo.customer_slo(namespace)
    testbed.kubectl("apply", "-f", "-", input=yaml.safe_dump(slo))
    operator = operator_for(testbed, namespace, tmp_path)
    recorder = Recorder(k8s_api, namespace)
    marks: dict[str, float] = {}
    # Nothing storms, so a full long window of traffic is warm-up enough (a baseline that does not
    # cover the whole window yet is no baseline: nobody may look storming, and nobody is throttled).
    runner = incidents.Runner(
        shop_url=shop,
        namespace=namespace,
        warmup=demo.warmup_seconds(slo, storm=False),
        kube=k8s_api,
        say=lambda text: print(f"[incident] {text}"),
        on_mark=lambda m: marks.setdefault(m.kind, time.time()),
    )
    operator.start()
    recorder.start()
    try:
        testbed.kubectl("wait", "-n", namespace, "--for=condition=Ready", "cslo/checkout", "--timeout=180s")
        original = recorder.wait(lambda s: True, 30, "a first sample").image
        script = incidents.load("rollout")
        # Patron undoes within seconds of the impact: 90 s is plenty (the demo waits longer).
        steps = tuple(replace(st, timeout=90) if st.wait == {"rolledBack": True} else st for st in script.steps)
        asyncio.run(runner.run(replace(script, steps=steps)))
        assert all(m.ok for m in runner.marks), [m for m in runner.marks if not m.ok]
        rolled_out_at = marks["action"]  # the only action of the script: the rollout

        def released(s: Sample) -> bool:
            rollback = [a for a in s.actions if a["type"] == "Rollback"]
            return bool(rollback) and all(a["state"] == "Reverted" for a in rollback) and s.replicas == 3

        done = recorder.wait(released, 240, "the rollback record to be released after recovery")
        time.sleep(5)
    finally:
        recorder.close()
        operator.stop()
    samples = recorder.samples
    log = operator.log()

    # 1. Only the enterprise tier was hurt, and that made it critical (4 of 50 customers, by weight).
    hurt = [s for s in samples if s.at > rolled_out_at and s.severity in ("warning", "critical")]
    assert hurt, f"Patron saw no impact\n{log[-3000:]}"
    tiers = {i["tier"] for s in hurt for i in s.impacted}
    assert tiers == {"enterprise"}, tiers
    assert any(s.severity == "critical" for s in hurt)

    # 2. The rollout was undone (the previous pod template, without the fault), once, within a minute.
    undone = recorder.first(lambda s: s.at > rolled_out_at and s.image == original and not s.fault)
    assert undone is not None, f"the rollout was never undone\n{log[-3000:]}"
    assert undone.at - rolled_out_at < 60
    events = action_events(k8s_api, namespace)
    rollbacks = [m for _, r, m in events if r == "ActionApplied" and m.startswith("Rollback")]
    assert len(rollbacks) == 1 and "undone: revision 2 -> template of revision 1" in rollbacks[0], rollbacks
    assert all(s.image == original and not s.fault for s in samples if s.at >= undone.at)

    # 3. Enterprise requests succeed again once the undo is served (customers who gave up come back later).
    recovered = None
    for t in range(int(undone.at), int(done.at)):
        ratio, _ = worst_error_ratio(testbed.prometheus_url, namespace, t, customers=ENTERPRISE)
        if ratio < ALLOWED_ERROR_RATIO:
            recovered = t
            break
    assert recovered is not None, "enterprise customers kept failing after the undo"

    # 4. No storm, so no throttle; the rollback record is released only `recovery` after the impact ended.
    assert not any(s.throttle for s in samples)
    ended = [s for s in samples if rolled_out_at < s.at <= done.at and s.incident.get("ended")][-1]
    assert done.at - ended_at(ended) >= incidents.seconds(slo["spec"]["recovery"])

    # 5. Nothing flips.
    history = assert_no_flips(k8s_api, namespace, samples, done.at)
    assert ("Rollback", "Deployment/checkout", "") in history
    print(
        "timeline (s after the rollout): "
        f"impact {hurt[0].at - rolled_out_at:.0f}, undone {undone.at - rolled_out_at:.0f}, "
        f"enterprise under objective {recovered - rolled_out_at:.0f}, "
        f"impact ended {ended_at(ended) - rolled_out_at:.0f}, "
        f"released {done.at - rolled_out_at:.0f}"
    )
