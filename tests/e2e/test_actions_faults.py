"""Faults and hostile input, with the operator run on the chart's ServiceAccount token (issue 9).

- traversal targets written into status.actions: refused by the schema, and nothing outside the
  namespace changes (first: it needs no traffic history);
- a revert while the operator's write verbs are revoked (its Role edited): recorded as Reverting,
  retried, done once the verbs are back;
- SIGKILL at a seeded sequence of points of an incident (PATRON_KILL_SEED repeats one), right after
  write-aheads and during the revert: no double step, no lost revert, no lost alert, one incident;
- two CustomerSLOs on one Deployment and one throttle key: one owns, the other reports Conflict.

One Helm release serves one namespace per test plus a `victim` namespace that holds objects nothing
may touch (the ServiceAccount could write there: a request that left its namespace would land).
One `patron run` with the release's token serves them all. Every namespace has a live exporter from
the start, so the retry-storm baseline (the rate over 1m, 15s earlier) is exact by the time a test
starts a storm. Windows as in test_actions_helpers.slo: interval 2s, impact ~15 s after errors
start, gone ~15 s after they stop, actions reverted 20 s (recovery) later.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from tests.e2e.conftest import (
    CHART,
    INSTANCE,
    Namespaces,
    forbidden_lines,
    get_json,
    helm,
    kubectl_as,
    service_account_kubeconfig,
    unique,
)
from tests.e2e.test_actions_helpers import World, deployment, slo
from tests.support.exporter import Exporter
from tests.support.operator import OperatorProcess
from tests.support.wait import wait_for
from tests.support.watch import GROUP, PLURAL, VERSION, ObjectWatch

if TYPE_CHECKING:  # imported by name, pytest would try to collect the class
    from tests.e2e.conftest import Testbed

ROLES = ("revert", "kill", "hostile", "owners", "victim")
HISTORY = 80  # seconds of steady traffic before a storm: baseline window 1m + offset 15s + margin
OWNER = "patron.dev/owner"
KEY = "patron-checkout.yaml"
# The user's keys of the shared ratelimit ConfigMap: byte for byte what must stay.
OTHERS = {"config.yaml": "domain: shop\n", "notes.txt": "  odd bytes \t ünïcödé, no final newline"}
STORM_LIMIT = 13  # ceil(bigbot's baseline 10 req/s x headroom 1.25)


def stamp(at: datetime | None = None) -> str:
    """metav1.Time (second precision): compare with status.lastEvaluationTime as strings."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Bed:
    testbed: Testbed
    release: str
    kubeconfig: Path  # a token of the release's ServiceAccount
    worlds: dict[str, World]
    operator: OperatorProcess
    traffic_since: float  # time.monotonic() when the exporters started

    def world(self, role: str) -> World:
        """The role's namespace, once its exporter has enough history for a retry-storm baseline."""
        time.sleep(max(0.0, HISTORY - (time.monotonic() - self.traffic_since)))
        return self.worlds[role]

    def can(self, verb: str, resource: str, namespace: str, subresource: str = "") -> bool:
        sub = [f"--subresource={subresource}"] if subresource else []
        answer = kubectl_as(self.testbed, self.kubeconfig, "auth", "can-i", verb, resource, "-n", namespace, *sub)
        return answer.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def bed(testbed: Testbed, patron_crd: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    spaces = Namespaces(testbed, "t-fault")
    name = unique("patron-fault")
    tmp = tmp_path_factory.mktemp("faults")
    exporters: list[Exporter] = []
    served: dict[str, str] = {}
    operator: OperatorProcess | None = None
    try:
        system = spaces.make("system")
        served = {role: spaces.make(role) for role in ROLES}
        for role, ns in served.items():
            exporter = Exporter(ns).start()
            exporters.append(exporter)
            exporter.register(testbed.targets_dir, f"exporter-{ns}")
            for customer in ("acme", "bigbot", "carol"):
                exporter.set(customer, rps=10)
            if role == "hostile":  # an impact throughout: its rates move, so every evaluation writes status
                exporter.set("acme", rps=10, errors=1.0)
        traffic_since = time.monotonic()
        values = {
            "prometheusUrl": testbed.prometheus_url,
            "alertmanagerUrls": [testbed.alertmanager_url],
            "watchNamespaces": list(served.values()),
        }
        (tmp / "values.yaml").write_text(yaml.safe_dump(values))
        helm(testbed, "install", name, str(CHART), "--namespace", system, "--values", str(tmp / "values.yaml"))
        kubeconfig = service_account_kubeconfig(testbed, system, name, tmp / "kubeconfig")
        operator = OperatorProcess(
            kubeconfig=kubeconfig,
            prometheus_url=testbed.prometheus_url,
            namespaces=list(served.values()),
            log_path=tmp / "operator.log",
            alertmanager_urls=[testbed.alertmanager_url],
        )
        operator.start()
        worlds = {role: World(testbed, ns, exporters[i], tmp, operator) for i, (role, ns) in enumerate(served.items())}
        yield Bed(testbed, name, kubeconfig, worlds, operator, traffic_since)
    finally:
        if operator is not None:
            if operator.process is None:
                operator.start()
            # Deleted while the operator runs: it gives back what it holds, then the finalizers go.
            for ns in served.values():
                began = time.monotonic()
                testbed.kubectl("delete", "cslo", "--all", "-n", ns, "--timeout=60s", check=False)
                took = time.monotonic() - began
                print(f"deleted the CustomerSLOs of {ns} in {took:.1f} s")
                if took > 10:  # a finalizer held on: say why
                    print("\n".join(operator.log().splitlines()[-400:]))
            operator.stop()
        if spaces.made:
            helm(testbed, "uninstall", name, "--namespace", spaces.made[0], "--wait", check=False)
        spaces.cleanup()
        for exporter in exporters:
            exporter.stop()


# ---------------------------------------------------------------- shared steps


def config_map(data: dict[str, str], name: str = "ratelimit-config") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def storm_slo(namespace: str, name: str = "checkout", **actions: Any) -> dict[str, Any]:
    body = slo(namespace, name, actions=actions)
    body["spec"]["impact"]["retryStorm"]["baseline"] = "15s"
    return body


def throttle(**extra: Any) -> dict[str, Any]:
    return {"configMap": "ratelimit-config", "domain": "checkout", "headroom": 1.25, **extra}


def scale(step: int, max_replicas: int, cooldown: str) -> dict[str, Any]:
    return {
        "target": {"name": "web"},
        "step": step,
        "maxReplicas": max_replicas,
        "minSeverity": "warning",
        "cooldown": cooldown,
    }


def storm(w: World) -> None:
    """bigbot sends 6x its baseline (storming); acme's requests all fail (impacted: warning)."""
    w.exporter.set("bigbot", rps=60)
    w.exporter.set("acme", rps=10, errors=1.0)


def calm(w: World) -> None:
    w.exporter.set("bigbot", rps=10)
    w.exporter.set("acme", rps=10)


def first_evaluation(w: World, name: str = "checkout") -> str:
    last: str = wait_for(
        lambda: w.status(name).get("lastEvaluationTime"), timeout=90, what=f"a first evaluation of {name}"
    )
    return last


def evaluated_after(w: World, since: str, name: str = "checkout", timeout: float = 90) -> dict[str, Any]:
    """The status once lastEvaluationTime is later than `since`: proof that the operator evaluated
    after that moment (a status that did not change is still written as a heartbeat)."""
    status: dict[str, Any] = wait_for(
        lambda: (s := w.status(name)).get("lastEvaluationTime", "") > since and s,
        timeout=timeout,
        what=f"an evaluation of {name} after {since}",
        explain=lambda: f"\nstatus: {json.dumps(w.status(name), indent=1)}\n{w.log_tail()}",
    )
    return status


def key_text(obj: dict[str, Any] | None, key: str = KEY) -> str | None:
    return ((obj or {}).get("data") or {}).get(key)


def descriptors(text: str | None) -> list[dict[str, Any]]:
    return list((yaml.safe_load(text) or {}).get("descriptors") or []) if text else []


def owner_line(text: str | None) -> str:
    return (text or "").split("\n", 1)[0]


def records(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(((obj or {}).get("status") or {}).get("actions") or [])


def replicas_of(obj: dict[str, Any] | None) -> int | None:
    return int(obj["spec"]["replicas"]) if obj else None


def annotation(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("annotations", {}).get(OWNER)


def changes(values: list[Any]) -> list[Any]:
    """`values` without repeats in a row: [2, 2, 4, 4, 2] -> [2, 4, 2]."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def events_of(w: World, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in w.events(reason) if e["involvedObject"]["name"] == name]


def posted(events: list[dict[str, Any]]) -> int:
    """How many times these Events were posted (an Event repeated in place counts up `count`)."""
    return sum(int(e.get("count") or 1) for e in events)


def explain(w: World, name: str = "checkout") -> Callable[[], str]:
    return lambda: f"\nstatus: {json.dumps(w.status(name), indent=1)}\noperator log (end):\n{w.log_tail()}"


# ---------------------------------------------------------------- revoking verbs in the release's Role


def without_verbs(
    rules: list[dict[str, Any]], resources: set[tuple[str, str]], verbs: set[str]
) -> list[dict[str, Any]]:
    """`rules` with `verbs` taken away from `resources` ((apiGroup, resource) pairs) and nothing else:
    a rule that also names other resources is split, so they keep every verb."""
    out = []
    for rule in rules:
        hit = [r for r in rule.get("resources", []) if any((g, r) in resources for g in rule.get("apiGroups", []))]
        if not hit or not verbs & set(rule["verbs"]):
            out.append(rule)
            continue
        rest = [r for r in rule["resources"] if r not in hit]
        if rest:
            out.append({**rule, "resources": rest})
        kept = [v for v in rule["verbs"] if v not in verbs]
        if kept:
            out.append({**rule, "resources": hit, "verbs": kept})
    return out


@dataclass
class Revoked:
    """Verbs taken from the release's Roles in one namespace; `restore()` puts the rules back."""

    bed: Bed
    namespace: str
    saved: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def revoke(self, resources: set[tuple[str, str]], verbs: set[str]) -> None:
        roles = get_json(self.bed.testbed, "roles", "-n", self.namespace, "-l", f"{INSTANCE}={self.bed.release}")
        for role in roles["items"]:
            rules = role.get("rules") or []
            changed = without_verbs(rules, resources, verbs)
            if changed != rules:
                self._set(role["metadata"]["name"], changed)
                self.saved[role["metadata"]["name"]] = rules
        assert self.saved, f"no Role of release {self.bed.release} grants {verbs} on {resources}"

    def restore(self) -> None:
        for name, rules in self.saved.items():
            self._set(name, rules)
        self.saved = {}

    def _set(self, role: str, rules: list[dict[str, Any]]) -> None:
        patch = json.dumps([{"op": "replace", "path": "/rules", "value": rules}])
        self.bed.testbed.kubectl("patch", "role", role, "-n", self.namespace, "--type=json", "-p", patch)


# What a revert writes: the throttle key (configmaps), and the replicas with the owner annotation in
# one merge patch (deployments). Both verbs a write could use are taken.
REVERT_WRITES = {("", "configmaps"), ("apps", "deployments")}
WRITE_VERBS = {"patch", "update"}
WRITE_CHECKS = (("configmaps", ""), ("deployments", ""))


# ---------------------------------------------------------------- 1. hostile status


def valid_record(since: str) -> dict[str, Any]:
    return {
        "type": "Throttle",
        "target": "ConfigMap/ratelimit-config",
        "targetRef": {"kind": "ConfigMap", "name": "ratelimit-config"},
        "customer": "bigbot",
        "state": "Active",
        "since": since,
        "key": KEY,
        "limit": STORM_LIMIT,
    }


# (what is changed in a valid record, the field the API server must name)
TRAVERSALS = [
    ({"target": "ConfigMap/../../kube-system/configmaps/x"}, "status.actions[0].target"),
    ({"target": "ConfigMap/kube-system/x"}, "status.actions[0].target"),
    ({"target": "ConfigMap/.."}, "status.actions[0].target"),
    ({"target": "Deployment/x%2F..%2F..%2Fkube-system"}, "status.actions[0].target"),
    ({"target": "Secret/aws-auth"}, "status.actions[0].target"),
    (
        {"targetRef": {"kind": "ConfigMap", "name": "../../kube-system/configmaps/x"}},
        "status.actions[0].targetRef.name",
    ),
    ({"targetRef": {"kind": "ConfigMap", "name": "a/b"}}, "status.actions[0].targetRef.name"),
    ({"targetRef": {"kind": "ConfigMap", "name": ".."}}, "status.actions[0].targetRef.name"),
    ({"targetRef": {"kind": "Deployment", "name": "web?x=1"}}, "status.actions[0].targetRef.name"),
    ({"targetRef": {"kind": "Secret", "name": "aws-auth"}}, "status.actions[0].targetRef.kind"),
]


def patch_status(w: World, actions: list[dict[str, Any]], name: str = "checkout") -> Any:
    body = json.dumps({"status": {"actions": actions}})
    return w.kubectl("patch", "cslo", name, "--subresource=status", "--type=merge", "-p", body, check=False)


def fingerprint(w: World, victim: str) -> dict[str, Any]:
    """What must stay byte-identical in the victim namespace: versions, data, replicas, annotations."""
    cm = get_json(w.testbed, "configmap", "victim-config", "-n", victim)
    web = get_json(w.testbed, "deployment", "victim-web", "-n", victim)
    return {
        "configmap": (cm["metadata"]["resourceVersion"], cm["data"], cm["metadata"].get("annotations")),
        "deployment": (web["metadata"]["resourceVersion"], web["spec"]["replicas"], web["metadata"].get("annotations")),
    }


@pytest.mark.slow
def test_hostile_status_targets_are_refused_and_nothing_leaves_the_namespace(bed: Bed, k8s_api: ApiClient) -> None:
    w = bed.worlds["hostile"]
    victim = bed.worlds["victim"].namespace
    # The victim namespace is served too: the ServiceAccount may write there, so a request that
    # left the hostile namespace would land and show.
    assert bed.can("patch", "configmaps", victim) and bed.can("patch", "deployments", victim)
    bed.testbed.kubectl(
        "apply",
        "-n",
        victim,
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [config_map({KEY: "descriptors: []\n", **OTHERS}, "victim-config"), deployment("victim-web", replicas=3)]
        ),
    )
    log_from = len(bed.operator.log())
    w.apply(slo(w.namespace))  # no actions: every record it finds held is given back (reverted)
    since = first_evaluation(w)
    wait_for(lambda: w.status().get("impactedCustomers") == 1, 60, "acme impacted", explain=explain(w))

    # The schema accepts a valid record (so each refusal below is about the one field changed)...
    accepted = patch_status(w, [valid_record(since)])
    assert accepted.returncode == 0, accepted.stderr
    # ...and refuses every traversal, naming the field.
    refused = {}
    for change, where in TRAVERSALS:
        result = patch_status(w, [{**valid_record(since), **change}])
        refused[json.dumps(change)] = (result.returncode != 0 and where in result.stderr) or result.stderr
    assert {k: v for k, v in refused.items() if v is not True} == {}
    # A namespace in targetRef is no field of the schema: refused when the client asks for strict
    # field validation, dropped (never stored) otherwise.
    record = {**valid_record(since), "targetRef": {"kind": "ConfigMap", "name": "victim-config", "namespace": victim}}
    api = client.CustomObjectsApi(k8s_api)
    with pytest.raises(ApiException) as strict:
        api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            w.namespace,
            PLURAL,
            "checkout",
            {"status": {"actions": [record]}},
            field_validation="Strict",
        )
    assert 'unknown field "status.actions[0].targetRef.namespace"' in json.loads(strict.value.body)["message"]
    dropped = patch_status(w, [record])
    assert dropped.returncode == 0, dropped.stderr
    assert all("namespace" not in (r.get("targetRef") or {}) for r in w.status()["actions"])

    # Records the schema lets through, naming objects that exist only in the victim namespace, held
    # and pending a revert: the operator works on them in its own namespace only.
    before = fingerprint(w, victim)
    now = stamp()
    victim_cm = {"target": "ConfigMap/victim-config", "targetRef": {"kind": "ConfigMap", "name": "victim-config"}}
    lures = [
        {**valid_record(now), **victim_cm},
        {**valid_record(now), **victim_cm, "state": "Reverting", "customer": "acme"},
        {
            "type": "Scale",
            "target": "Deployment/victim-web",
            "targetRef": {"kind": "Deployment", "name": "victim-web"},
            "state": "Active",
            "since": now,
            "replicas": 5,
            "originalReplicas": 1,
        },
        # target and targetRef disagree: the schema cannot tell, the code refuses it
        {**valid_record(now), "targetRef": {"kind": "ConfigMap", "name": "victim-config"}, "customer": "carol"},
    ]
    written = patch_status(w, lures)
    assert written.returncode == 0, written.stderr
    seen = now
    for _ in range(3):  # several evaluations since
        seen = evaluated_after(w, seen)["lastEvaluationTime"]
    assert fingerprint(w, victim) == before
    # ...and it did work on them, in its own namespace (where those names do not exist): given back.
    after = w.status()["actions"]
    assert {(r["target"], r.get("customer"), r["state"]) for r in after} >= {
        ("ConfigMap/victim-config", "bigbot", "Reverted"),
        ("ConfigMap/victim-config", "acme", "Reverted"),
        ("Deployment/victim-web", None, "Reverted"),
    }
    assert [r for r in after if r.get("customer") == "carol" and r["state"] in ("Active", "Reverting")] == []
    assert forbidden_lines(bed.operator.log()[log_from:]) == []
    assert w.kubectl("get", "configmap", "victim-config", check=False).returncode != 0  # nothing created here


# ---------------------------------------------------------------- 2. revert under a revoked verb


@pytest.mark.slow
def test_revert_under_revoked_patch_is_recorded_retried_and_done(bed: Bed, k8s_api: ApiClient) -> None:
    w = bed.world("revert")
    ns, owner = w.namespace, f"{w.namespace}/checkout"
    log_from = len(bed.operator.log())
    w.apply(config_map(OTHERS), deployment(replicas=2))
    w.apply(storm_slo(ns, throttle=throttle(), scale=scale(2, 4, "10m")))
    first_evaluation(w)
    with ObjectWatch(k8s_api, "customerslos", ns, "checkout") as watched:
        storm(w)
        text = wait_for(
            lambda: key_text(w.get("configmap", "ratelimit-config")), 90, "the throttle key", 0.5, explain(w)
        )
        wait_for(lambda: replicas_of(w.get("deployment", "web")) == 4, 30, "web scaled 2 -> 4", explain=explain(w))
        assert descriptors(text) == [
            {
                "key": "customer_id",
                "value": "bigbot",
                "rate_limit": {"unit": "second", "requests_per_unit": STORM_LIMIT},
            }
        ]
        assert owner_line(text) == f"# {OWNER}: {owner}"
        assert annotation(w.get("deployment", "web")) == owner
        held = {r["type"]: r for r in w.status()["actions"] if r["state"] == "Active"}
        assert (held["Throttle"]["key"], held["Throttle"]["limit"]) == (KEY, STORM_LIMIT)
        assert (held["Scale"]["replicas"], held["Scale"]["originalReplicas"]) == (4, 2)

        calm(w)
        ended = wait_for(lambda: w.status().get("incident", {}).get("ended"), 60, "the end of the impact", 0.3)
        # Recovery is 20 s from `ended`: take the write verbs away before the revert is due.
        fault = Revoked(bed, ns)
        fault.revoke(REVERT_WRITES, WRITE_VERBS)
        try:
            wait_for(
                lambda: not any(bed.can(v, r, ns, s) for v in WRITE_VERBS for r, s in WRITE_CHECKS),
                15,
                "the write verbs revoked",
            )
            revoked_at, revoked_mono = stamp(), time.monotonic()
            assert datetime.now(UTC).timestamp() - datetime.fromisoformat(ended).timestamp() < 18, "revoked too late"

            # The revert is recorded before it is attempted (Reverting on the server), then fails.
            for type_ in ("Throttle", "Scale"):
                found = watched.next(
                    lambda o, t=type_: any(r["type"] == t and r["state"] == "Reverting" for r in records(o)), 60
                )
                assert found, f"no Reverting {type_} record on the server while revoked" + explain(w)()
            for target in ("ConfigMap/ratelimit-config", "Deployment/web"):
                wait_for(
                    lambda t=target: [m for m in w.messages("ActionFailed") if t in m],
                    30,
                    f"an ActionFailed Event naming {target}",
                    explain=explain(w),
                )
            failed_at = stamp()
            time.sleep(4)  # two intervals more while revoked
            # A fourth customer: a material change, so the next evaluation writes status at once (one
            # that changed nothing is written only as the heartbeat, once a minute).
            w.exporter.set("dave", rps=10)
            status = evaluated_after(w, failed_at)  # it tried again since: nothing was given back
            assert {(r["type"], r["state"]) for r in status["actions"]} >= {
                ("Throttle", "Reverting"),
                ("Scale", "Reverting"),
            }
            assert key_text(w.get("configmap", "ratelimit-config")) == text
            assert replicas_of(w.get("deployment", "web")) == 4
            assert status["lastEvaluationTime"] > revoked_at
        finally:
            fault.restore()
        wait_for(lambda: all(bed.can(v, r, ns, s) for v in ("patch",) for r, s in WRITE_CHECKS), 15, "verbs back")
        refused = [line for line in bed.operator.log()[log_from:].splitlines() if "403" in line and ns in line]
        print(f"revoked {time.monotonic() - revoked_mono:.0f} s: {len(refused)} writes refused (403)")

        # Given back on a later evaluation: the entry, the replicas, the owner marks.
        wait_for(lambda: replicas_of(w.get("deployment", "web")) == 2, 60, "web restored to 2", explain=explain(w))
        wait_for(
            lambda: KEY not in (w.get("configmap", "ratelimit-config").get("data") or {}),
            60,
            "the throttle key removed",
            explain=explain(w),
        )
        assert w.get("configmap", "ratelimit-config")["data"] == OTHERS
        assert annotation(w.get("deployment", "web")) is None
        final = wait_for(
            lambda: (
                (s := w.status())
                and {r["state"] for r in s["actions"] if r["type"] in ("Throttle", "Scale")} == {"Reverted"}
                and s
            ),
            30,
            "both records Reverted",
            explain=explain(w),
        )
        # The history the server held: Active, then Reverting (pending), then Reverted.
        states = {
            t: changes([r["state"] for o in watched.objects() for r in records(o) if r["type"] == t])
            for t in ("Throttle", "Scale")
        }
    print(f"record states seen on the server: {states}")
    for type_ in ("Throttle", "Scale"):
        assert states[type_][-3:] == ["Active", "Reverting", "Reverted"], states
    # One ActionFailed per failure kind (status code + target), not one per evaluation.
    for target in ("ConfigMap/ratelimit-config", "Deployment/web"):
        assert posted([e for e in events_of(w, "checkout", "ActionFailed") if target in e["message"]]) == 1
    assert {r["type"] for r in final["actions"]} >= {"Throttle", "Scale"}
    reverted = " ".join(w.messages("ActionReverted"))
    assert "ConfigMap/ratelimit-config" in reverted and "Deployment/web" in reverted


# ---------------------------------------------------------------- 3. SIGKILL at seeded points


@dataclass
class Kill:
    point: str  # write-ahead | reverting | delay | timeout (waited for a write-ahead that did not come)
    phase: str  # incident | recovery
    at: float  # seconds since the storm began
    records: list[str]  # the records that had just been written (write-ahead points)
    pending: bool | None  # the object change was still to be done when the process died
    restart: float = 0.0  # seconds until the new process was healthy


def ident(record: dict[str, Any]) -> tuple[str, str, str | None]:
    return record["type"], record["target"], record.get("customer")


def record_versions(obj: dict[str, Any] | None) -> dict[tuple[str, str, str | None], tuple[Any, ...]]:
    """Each record's identity -> what a write-ahead changes in it (state, since, held value)."""
    return {ident(r): (r["state"], r["since"], r.get("replicas"), r.get("limit")) for r in records(obj)}


def written(
    base: dict[Any, tuple[Any, ...]], obj: dict[str, Any] | None, states: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The records of `obj` in `states` that are new or changed since `base` (record_versions)."""
    now = record_versions(obj)
    return [r for r in records(obj) if r["state"] in states and base.get(ident(r)) != now[ident(r)]]


def held_replicas(obj: dict[str, Any] | None) -> int | None:
    return next((r.get("replicas") for r in records(obj) if r["type"] == "Scale" and r["state"] == "Active"), None)


class Killer:
    """SIGKILLs the operator at chosen points and starts it again, noting each point."""

    def __init__(self, w: World, op: OperatorProcess, watched: ObjectWatch, started: float) -> None:
        self.w, self.op, self.watched, self.started = w, op, watched, started
        self.kills: list[Kill] = []

    def after(self, seconds: float, phase: str) -> None:
        """Kill `seconds` after the running process first evaluated the CustomerSLO: a random moment of
        an operator at work. Kills in a row before any evaluation keep the operator away longer than a
        firing alert's endsAt (4 x interval, 8 s here), and Alertmanager then rightly ends the alert."""
        wait_for(
            lambda: (self.w.namespace, "checkout") in self.op.evaluated(),
            60,
            "an evaluation by the restarted operator",
            explain=lambda: self.op.log()[-4000:],
        )
        time.sleep(seconds)
        self._kill("delay", phase, [])

    def on_write(self, phase: str, states: tuple[str, ...] = ("Active", "Reverting"), timeout: float = 40) -> None:
        """Kill as soon as the server holds a new record (or a new version of one) in `states`."""
        mark = self.watched.mark()
        base = record_versions(self.watched.latest())
        found = self.watched.next(lambda obj: bool(written(base, obj, states)), timeout, after=mark)
        if found is None:
            self._kill("timeout", phase, [])
            return
        fresh = written(base, found[1].obj, states)
        self._kill("reverting" if any(r["state"] == "Reverting" for r in fresh) else "write-ahead", phase, fresh)

    def _kill(self, point: str, phase: str, fresh: list[dict[str, Any]]) -> None:
        self.op.kill()
        at = time.monotonic() - self.started
        # The process is dead: what the objects hold now is what they held at the kill.
        pending = [self._pending(r) for r in fresh]
        known = [p for p in pending if p is not None]
        kill = Kill(point, phase, round(at, 1), [self._describe(r) for r in fresh], any(known) if known else None)
        began = time.monotonic()
        self.op.start()
        kill.restart = round(time.monotonic() - began, 1)
        self.kills.append(kill)
        print(f"kill {len(self.kills)}: {kill}")

    def _pending(self, record: dict[str, Any]) -> bool | None:
        if record["type"] == "Scale":
            now = replicas_of(self.w.get("deployment", "web"))
            want = record["replicas"] if record["state"] == "Active" else record["originalReplicas"]
            return now != want
        if record["type"] == "Throttle":
            present = record["customer"] in {
                d["value"] for d in descriptors(key_text(self.w.get("configmap", "ratelimit-config")))
            }
            return not present if record["state"] == "Active" else present
        return None  # an alert: sent from a queue, not visible here

    @staticmethod
    def _describe(r: dict[str, Any]) -> str:
        held = r.get("replicas") or r.get("limit") or r.get("severity") or ""
        return f"{r['type']} {r['target']} {r['state']} {held}".strip()


@pytest.mark.slow
def test_sigkill_at_seeded_points_loses_nothing(bed: Bed, k8s_api: ApiClient) -> None:
    w = bed.world("kill")
    ns, op = w.namespace, bed.operator
    seed = int(os.environ.get("PATRON_KILL_SEED") or secrets.randbelow(2**31))
    print(f"kill seed {seed} (PATRON_KILL_SEED={seed} repeats the sequence)")
    rng = random.Random(seed)
    step, top, cooldown = 2, 8, 15
    w.apply(config_map(OTHERS), deployment(replicas=2))
    w.apply(storm_slo(ns, alert={}, throttle=throttle(), scale=scale(step, top, f"{cooldown}s")))
    first_evaluation(w)
    log_from = len(op.log())
    with (
        ObjectWatch(k8s_api, "customerslos", ns, "checkout") as watched,
        ObjectWatch(k8s_api, "configmaps", ns, "ratelimit-config") as cm,
        ObjectWatch(k8s_api, "deployments", ns, "web") as web,
    ):
        storm(w)
        killer = Killer(w, op, watched, time.monotonic())
        # The incident: first right after the first write-ahead, then a seeded mix of write-aheads
        # (the next scale step) and random moments.
        killer.on_write("incident", timeout=90)
        for _ in range(rng.randint(4, 5)):
            if rng.random() < 0.5 and held_replicas(watched.latest()) != top:
                killer.on_write("incident", ("Active",), timeout=cooldown + 20)
            else:
                killer.after(rng.uniform(0.5, 6), "incident")
        wait_for(lambda: replicas_of(web.latest()) == top, 90, f"web scaled to {top}", explain=explain(w))
        calm(w)
        calmed = time.monotonic()
        # Recovery: a random moment while the impact fades, right after the revert is recorded, and
        # a random moment after that.
        killer.after(rng.uniform(1, 20), "recovery")
        killer.on_write("recovery", ("Reverting",), timeout=90)
        killer.after(rng.uniform(0.2, 3), "recovery")

        wait_for(lambda: key_text(cm.latest()) is None, 90, "the throttle key removed", explain=explain(w))
        wait_for(lambda: replicas_of(web.latest()) == 2, 60, "web restored to 2", explain=explain(w))
        wait_for(
            lambda: [
                a for a in w.alerts() if a["labels"]["alertname"] == "CustomerImpact" and a["status"] == "resolved"
            ],
            60,
            "CustomerImpact resolved at the receiver",
        )
        final = wait_for(
            lambda: (s := w.status()) and all(r["state"] == "Reverted" for r in s["actions"]) and s,
            60,
            "every record Reverted",
            explain=explain(w),
        )
    kills = killer.kills
    print(json.dumps([k.__dict__ for k in kills], indent=1))
    assert len(kills) >= 8
    assert {"write-ahead", "reverting"} <= {k.point for k in kills}, [k.point for k in kills]

    # No double step: the Deployment went up by exactly `step` per raise, to the bound, then back once.
    values = changes([replicas_of(o) for o in web.objects()])
    assert values == [2, 4, 6, 8, 2], values
    # ... each raise recorded once, `cooldown` after the previous one.
    raises = sorted(
        {
            (r["since"], r["replicas"])
            for o in watched.objects()
            for r in records(o)
            if r["type"] == "Scale" and r["state"] == "Active"
        }
    )
    assert [v for _, v in raises] == [4, 6, 8], raises
    gaps = [
        datetime.fromisoformat(b).timestamp() - datetime.fromisoformat(a).timestamp()
        for (a, _), (b, _) in itertools.pairwise(raises)
    ]
    assert all(g >= cooldown - 1 for g in gaps), gaps
    # No second throttle, no other limit: one entry, one content, set once and lifted once.
    texts = [key_text(o) for o in cm.objects()]
    runs = changes([t is not None for t in texts])
    assert runs == [False, True, False], runs
    assert len({t for t in texts if t is not None}) == 1
    assert descriptors(next(t for t in texts if t)) == [
        {"key": "customer_id", "value": "bigbot", "rate_limit": {"unit": "second", "requests_per_unit": STORM_LIMIT}}
    ]
    assert {r["limit"] for o in watched.objects() for r in records(o) if r["type"] == "Throttle"} == {STORM_LIMIT}
    # No lost revert.
    assert cm.latest() is not None and cm.latest()["data"] == OTHERS  # type: ignore[index]
    assert annotation(web.latest()) is None
    assert {r["type"] for r in final["actions"]} == {"Alert", "Throttle", "Scale"}
    # No lost alert: firing, then resolved once the incident was over, nothing in between.
    statuses = [a["status"] for a in w.alerts() if a["labels"]["alertname"] == "CustomerImpact"]
    assert statuses == ["firing", "resolved"], statuses
    # One incident throughout: the same start in every version; it ended only after the calm.
    incidents = [(v.at, ((v.obj or {}).get("status") or {}).get("incident") or {}) for v in list(watched.versions)]
    assert len({i["started"] for _, i in incidents if i}) == 1, incidents
    assert [at for at, i in incidents if i.get("ended") and at < calmed] == []
    assert forbidden_lines(op.log()[log_from:]) == []
    pending = [k for k in kills if k.pending]
    print(
        f"{len(kills)} kills ({', '.join(k.point for k in kills)}); {len(pending)} between a write-ahead and the "
        f"object change; restarts {min(k.restart for k in kills)}-{max(k.restart for k in kills)} s"
    )


# ---------------------------------------------------------------- 4. two owners


@pytest.mark.slow
def test_two_customerslos_on_one_target_one_owns_the_other_reports_conflict(bed: Bed, k8s_api: ApiClient) -> None:
    w = bed.world("owners")
    ns = w.namespace
    owner = f"{ns}/alpha"
    shared = "patron-shared.yaml"
    log_from = len(bed.operator.log())
    w.apply(config_map(OTHERS), deployment(replicas=2))
    # Steps and limits differ, so whose change it was shows: alpha steps by 1 (limit 13), beta by 2 (limit 20).
    alpha = storm_slo(ns, "alpha", throttle=throttle(key=shared), scale=scale(1, 10, "10s"))
    beta = storm_slo(ns, "beta", throttle=throttle(key=shared, headroom=2.0), scale=scale(2, 10, "10s"))
    w.apply(alpha)
    first_evaluation(w, "alpha")
    storm(w)
    text = wait_for(
        lambda: key_text(w.get("configmap", "ratelimit-config"), shared), 90, "alpha's key", 0.5, explain(w, "alpha")
    )
    wait_for(
        lambda: annotation(w.get("deployment", "web")) == owner, 30, "alpha's mark on web", explain=explain(w, "alpha")
    )
    assert owner_line(text) == f"# {OWNER}: {owner}"

    with (
        ObjectWatch(k8s_api, "configmaps", ns, "ratelimit-config") as cm,
        ObjectWatch(k8s_api, "deployments", ns, "web") as web,
    ):
        w.apply(beta)
        conflict = wait_for(
            lambda: (c := w.condition("ActionsActive", "beta")).get("reason") == "Conflict" and c,
            60,
            "beta's ActionsActive reason Conflict",
            explain=explain(w, "beta"),
        )
        assert owner in conflict["message"]
        wait_for(lambda: events_of(w, "beta", "Conflict"), 30, "a Conflict Event on beta")
        # Several evaluations of beta while alpha holds both targets, and until alpha took a step.
        seen, evaluations = stamp(), 0
        while evaluations < 4 or len(changes([replicas_of(o) for o in web.objects()])) < 2:
            seen = evaluated_after(w, seen, "beta")["lastEvaluationTime"]
            evaluations += 1
            assert evaluations < 20, "alpha took no step while beta was evaluated"
        conflicts = events_of(w, "beta", "Conflict")
        texts = [key_text(o, shared) for o in cm.objects()]
        values = [replicas_of(o) for o in web.objects()]
        marks = {annotation(o) for o in web.objects()}

    print(f"beta evaluated {evaluations}x; key versions {len(texts)}; replicas {changes(values)}; Conflict Events:")
    print("\n".join(f"  {e['message']} (x{e.get('count') or 1})" for e in conflicts))
    assert texts and all(owner_line(t) == f"# {OWNER}: {owner}" for t in texts), texts
    assert all(d["rate_limit"]["requests_per_unit"] == STORM_LIMIT for t in texts for d in descriptors(t)), texts
    assert marks == {owner}
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(values)), values  # alpha's steps only
    assert all(owner in e["message"] and e["type"] == "Warning" for e in conflicts)
    assert 1 <= posted(conflicts) <= 2  # once per conflicting target, not per evaluation
    beta_held = [r for r in w.status("beta").get("actions") or [] if r["type"] in ("Throttle", "Scale")]
    assert [r for r in beta_held if r["state"] in ("Active", "Reverting")] == [], beta_held
    assert events_of(w, "beta", "ActionApplied") == []

    # beta goes: alpha's changes stay, untouched by beta's release.
    held = (key_text(w.get("configmap", "ratelimit-config"), shared), replicas_of(w.get("deployment", "web")))
    w.kubectl("delete", "cslo", "beta", "--timeout=60s")
    status = evaluated_after(w, stamp(), "alpha")
    assert status["lastEvaluationTime"] and key_text(w.get("configmap", "ratelimit-config"), shared) == held[0]
    assert annotation(w.get("deployment", "web")) == owner
    assert (replicas_of(w.get("deployment", "web")) or 0) >= (held[1] or 0)
    # alpha goes: everything is given back.
    w.kubectl("delete", "cslo", "alpha", "--timeout=60s")
    assert w.get("configmap", "ratelimit-config")["data"] == OTHERS
    assert replicas_of(w.get("deployment", "web")) == 2
    assert annotation(w.get("deployment", "web")) is None
    assert forbidden_lines(bed.operator.log()[log_from:]) == []
