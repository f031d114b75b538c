"""`act` and `release` under faults and hostile input, against the real Kubernetes adapter over an
in-memory API server (tests/support/fake_kube.py): durable reverts, paths that never leave the
namespace, one owner per target, 409/429 handling, ActionFailed once per failure kind."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
import yaml

from patron.actions import ActionContext, abandoned, act, release
from patron.actions import throttle as throttle_kind
from patron.actions.plan import Situation, parse_records
from patron.api.models import CustomerSLOSpec
from patron.api.status import ActionRecord, TargetRef
from patron.config import RELEASE_GIVE_UP, OperatorConfig
from patron.impact.assess import Assessment
from patron.kube import MAX_RETRY_AFTER, RETRIES_429, InvalidName, StatusWriter, object_path
from patron.reconcile import Event, evaluated
from patron.status import timestamp
from tests.support.fake_kube import FakeKube, refusal
from tests.unit.test_actions_plan import T0, assessment, customer, make_spec

NS = "shop"
THROTTLE = {"configMap": "ratelimit", "domain": "shop", "key": "shared.yaml", "ttl": "1h", "minSeverity": "warning"}
SCALE = {"target": {"name": "web"}, "step": 2, "maxReplicas": 8, "minSeverity": "warning", "cooldown": "10s"}
STORM = assessment("warning", customer("bigbot", impacted=True, storming=True, baseline=30.0), customer("ok"))
CALM = assessment("none", customer("bigbot"), customer("ok"))
LOG = logging.getLogger("test")


def world(*slos: tuple[str, dict[str, Any]]) -> FakeKube:
    kube = FakeKube()
    kube.add("ConfigMap", NS, {"metadata": {"name": "ratelimit"}, "data": {"config.yaml": "domain: other\n"}})
    kube.add("Deployment", NS, {"metadata": {"name": "web"}, "spec": {"replicas": 2}})
    for name, actions in slos:
        body = make_spec(actions).model_dump(by_alias=True, exclude_none=True, mode="json")
        kube.add("CustomerSLO", NS, {"metadata": {"name": name, "generation": 1}, "spec": body})
    return kube


def evaluate(kube: FakeKube, name: str, a: Assessment, now: datetime) -> tuple[Event, ...]:
    """What handlers.reconcile does after the evaluation: read afresh, act, write through the writer."""
    obj = json.loads(json.dumps(kube.obj("CustomerSLO", NS, name)))
    spec = CustomerSLOSpec.from_body(obj["spec"])
    previous = obj.get("status") or {}
    outcome = evaluated(spec, previous, a, 1, now)
    writer = StatusWriter(kube, NS, name, previous)
    context = ActionContext(obj, kube, writer, OperatorConfig("http://prom"), None, now, LOG)
    out = asyncio.run(act(context, spec, a, outcome))
    asyncio.run(writer.write(out.status))
    return out.events


def records(kube: FakeKube, name: str = "a") -> tuple[ActionRecord, ...]:
    return parse_records(kube.obj("CustomerSLO", NS, name).get("status", {}).get("actions") or [])


def state_of(kube: FakeKube, type_: str, name: str = "a") -> str:
    (record,) = [r for r in records(kube, name) if r.type == type_]
    return record.state


def key_content(kube: FakeKube) -> str | None:
    data: dict[str, str] = kube.obj("ConfigMap", NS, "ratelimit").get("data") or {}
    return data.get("shared.yaml")


def refuse(kube: FakeKube, method: str, fragment: str, status: int, reason: str, **headers: str) -> None:
    kube.faults.append(lambda m, p: refusal(status, reason, headers) if m == method and fragment in p else None)


def reasons(events: tuple[Event, ...]) -> list[str]:
    return [e.reason for e in events]


def test_a_failed_revert_stays_reverting_and_is_retried_until_done() -> None:
    """Regression (issue 9): the write-ahead put Reverted on the server; when the ConfigMap write
    then failed, the final status kept Reverted and the entry was never lifted."""
    kube = world(("a", {"throttle": THROTTLE}))
    evaluate(kube, "a", STORM, T0)
    assert state_of(kube, "Throttle") == "Active" and "bigbot" in (key_content(kube) or "")
    evaluate(kube, "a", CALM, T0 + timedelta(seconds=2))  # the incident ends; recovery is 20s
    refuse(kube, "PATCH", "/configmaps/", 403, "Forbidden")
    first = evaluate(kube, "a", CALM, T0 + timedelta(seconds=30))
    assert state_of(kube, "Throttle") == "Reverting"  # on the server, not only in memory
    assert "bigbot" in (key_content(kube) or "")
    assert reasons(first).count("ActionFailed") == 1 and "ActionReverted" not in reasons(first)
    again = evaluate(kube, "a", CALM, T0 + timedelta(seconds=32))
    assert state_of(kube, "Throttle") == "Reverting" and "ActionFailed" not in reasons(again)  # once per kind
    kube.faults.clear()
    done = evaluate(kube, "a", CALM, T0 + timedelta(seconds=34))
    assert state_of(kube, "Throttle") == "Reverted" and key_content(kube) is None
    assert reasons(done) == ["ActionReverted"]


def test_a_revert_interrupted_after_the_write_ahead_is_finished_after_a_restart() -> None:
    """The process dies between the write-ahead (Reverting) and the scale write: the next process
    reads Reverting and restores the original."""
    kube = world(("a", {"scale": SCALE}))
    evaluate(kube, "a", STORM, T0)
    assert kube.obj("Deployment", NS, "web")["spec"]["replicas"] == 4
    evaluate(kube, "a", CALM, T0 + timedelta(seconds=2))

    def die(method: str, path: str) -> None:
        if method == "PATCH" and "/deployments/" in path:
            raise SystemExit("SIGKILL")  # nothing after the write-ahead runs

    kube.faults.append(die)  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        evaluate(kube, "a", CALM, T0 + timedelta(seconds=30))
    assert state_of(kube, "Scale") == "Reverting"
    kube.faults.clear()
    evaluate(kube, "a", CALM, T0 + timedelta(seconds=40))
    dep = kube.obj("Deployment", NS, "web")
    assert dep["spec"]["replicas"] == 2 and "patron.dev/owner" not in (dep["metadata"].get("annotations") or {})
    assert state_of(kube, "Scale") == "Reverted"


def test_delete_keeps_the_finalizer_until_given_back_then_gives_up_with_an_event() -> None:
    """Regression (issue 9): release() raising on a 429 let Kopf retry; the retry found no Active
    record and the finalizer went while the entry stayed."""
    kube = world(("a", {"throttle": THROTTLE, "scale": SCALE}))
    evaluate(kube, "a", STORM, T0)
    refuse(kube, "PATCH", "/configmaps/", 429, "Too Many Requests", **{"Retry-After": "120"})

    def releasing(now: datetime) -> Any:
        obj = json.loads(json.dumps(kube.obj("CustomerSLO", NS, "a")))
        obj["metadata"]["deletionTimestamp"] = timestamp(T0 + timedelta(seconds=5))
        writer = StatusWriter(kube, NS, "a", obj.get("status") or {})
        context = ActionContext(obj, kube, writer, OperatorConfig("http://prom"), None, now, LOG)
        return context, asyncio.run(release(context))

    context, first = releasing(T0 + timedelta(seconds=6))
    assert not first.done and [r.type for r in first.left] == ["Throttle"]
    assert kube.slept == [MAX_RETRY_AFTER] * RETRIES_429  # Retry-After honoured, bounded
    assert state_of(kube, "Throttle") == "Reverting" and state_of(kube, "Scale") == "Reverted"
    assert kube.obj("Deployment", NS, "web")["spec"]["replicas"] == 2
    assert abandoned(context, first.left) is None  # still within RELEASE_GIVE_UP
    context, second = releasing(T0 + timedelta(seconds=20))
    assert not second.done and state_of(kube, "Throttle") == "Reverting"
    late = T0 + timedelta(seconds=5 + RELEASE_GIVE_UP)
    context, third = releasing(late)
    event = abandoned(context, third.left)
    assert event is not None and (event.reason, event.type) == ("ReleaseAbandoned", "Warning")
    assert "ConfigMap/ratelimit key shared.yaml entry for customer bigbot" in event.message
    kube.faults.clear()
    _, last = releasing(late)
    assert last.done and key_content(kube) is None and state_of(kube, "Throttle") == "Reverted"


def test_two_customerslos_on_one_throttle_key_one_owns_the_other_reports_conflict() -> None:
    """Regression (issue 9): the same throttle.key alternated between two CustomerSLOs' entries on
    every write, and one lifting its entries removed the other's."""
    kube = world(("a", {"throttle": THROTTLE}), ("b", {"throttle": THROTTLE}))
    evaluate(kube, "a", STORM, T0)
    owned = key_content(kube)
    assert owned is not None and owned.startswith("# patron.dev/owner: shop/a\n")
    events = evaluate(kube, "b", STORM, T0)
    assert key_content(kube) == owned
    conflict = [e for e in events if e.reason == "Conflict"]
    assert len(conflict) == 1 and "owned by shop/a" in conflict[0].message and conflict[0].type == "Warning"
    b_status = kube.obj("CustomerSLO", NS, "b")["status"]
    (cond,) = [c for c in b_status["conditions"] if c["type"] == "ActionsActive"]
    assert cond["reason"] == "Conflict" and "shop/a" in cond["message"]
    assert [r for r in records(kube, "b") if r.type == "Throttle"] == []
    for i in range(3):
        evaluate(kube, "a", STORM, T0 + timedelta(seconds=2 * i + 2))
        assert "Conflict" not in reasons(evaluate(kube, "b", STORM, T0 + timedelta(seconds=2 * i + 2)))
        assert key_content(kube) == owned  # nothing flips
    # b's spec loses the throttle: it has nothing to lift and a's entries stay.
    evaluate(kube, "b", CALM, T0 + timedelta(minutes=5))
    assert key_content(kube) == owned


def test_two_customerslos_scaling_one_deployment_do_not_double_the_step_or_restore_the_wrong_original() -> None:
    """Regression (issue 9): two CustomerSLOs scaling one Deployment doubled the step rate (2 -> 18
    replicas in 15 minutes) and restored the wrong original."""
    kube = world(("a", {"scale": SCALE}), ("b", {"scale": SCALE}))
    seen = []
    for i in range(6):
        now = T0 + timedelta(seconds=3 * i)
        evaluate(kube, "a", STORM, now)
        events = evaluate(kube, "b", STORM, now)
        seen.append(kube.obj("Deployment", NS, "web")["spec"]["replicas"])
        assert ("Conflict" in reasons(events)) == (i == 0)
    assert seen == [4, 4, 4, 4, 6, 6]  # a's steps only: one per 10s cooldown
    assert kube.obj("Deployment", NS, "web")["metadata"]["annotations"]["patron.dev/owner"] == "shop/a"
    assert [r for r in records(kube, "b") if r.type == "Scale"] == []
    evaluate(kube, "a", CALM, T0 + timedelta(seconds=20))
    evaluate(kube, "b", CALM, T0 + timedelta(seconds=20))
    evaluate(kube, "a", CALM, T0 + timedelta(seconds=45))
    evaluate(kube, "b", CALM, T0 + timedelta(seconds=45))
    assert kube.obj("Deployment", NS, "web")["spec"]["replicas"] == 2  # a's original


def test_a_conflict_on_write_is_retried_with_a_fresh_read() -> None:
    """409 (someone wrote between Patron's read and its write): read again, write again."""
    kube = world(("a", {"scale": SCALE}))
    once = iter([refusal(409, "Conflict")])
    kube.faults.append(lambda m, p: next(once, None) if m == "PATCH" and "/deployments/" in p else None)
    events = evaluate(kube, "a", STORM, T0)
    assert kube.obj("Deployment", NS, "web")["spec"]["replicas"] == 4 and "ActionFailed" not in reasons(events)
    gets = [p for m, p in kube.requests if m == "GET" and p.endswith("/deployments/web")]
    assert len(gets) >= 3  # observe, then a fresh read per attempt


def test_hostile_targets_never_reach_a_path_outside_the_namespace() -> None:
    """Regression (issue 9): a record whose target was ConfigMap/../../kube-system/configmaps/aws-auth
    made Patron PATCH /api/v1/namespaces/kube-system/configmaps/aws-auth."""
    hostile = "../../kube-system/configmaps/aws-auth"
    raw = {"type": "Throttle", "target": f"ConfigMap/{hostile}", "customer": "x", "state": "Active", "since": "t"}
    assert parse_records([raw]) == ()  # the schema's pattern refuses it
    ref = {"kind": "ConfigMap", "name": hostile}
    assert parse_records([{**raw, "target": "ConfigMap/ok", "targetRef": ref}]) == ()
    for name in (hostile, "a/b", "..", "Kube-System", "x" * 254):
        with pytest.raises(InvalidName):
            object_path("ConfigMap", NS, name)
    with pytest.raises(InvalidName):
        object_path("ConfigMap", "../kube-system", "aws-auth")
    # Even a record built without validation (model_construct) cannot make a request leave NS.
    kube = world(("a", {"throttle": THROTTLE}))
    sneaky = ActionRecord.model_construct(
        type="Throttle",
        target="ConfigMap/ok",
        target_ref=TargetRef.model_construct(kind="ConfigMap", name=hostile),
        customer="x",
        state="Active",
        since=timestamp(T0),
        key="shared.yaml",
        limit=1,
    )
    sit = Situation(T0, NS, "a", make_spec({"throttle": THROTTLE}), (sneaky,), CALM, None)
    with pytest.raises(InvalidName):
        asyncio.run(throttle_kind.observe(kube, sit))
    assert all(p.startswith(f"/api/v1/namespaces/{NS}/") for _, p in kube.requests)
    # The whole evaluation with such a record: the kind's read fails, nothing is written anywhere.
    status = {"actions": [sneaky.model_dump(by_alias=True, exclude_none=True)]}
    kube.obj("CustomerSLO", NS, "a")["status"] = status
    kube.requests.clear()
    evaluate(kube, "a", STORM, T0)
    prefixes = (f"/api/v1/namespaces/{NS}/", f"/apis/patron.dev/v1alpha1/namespaces/{NS}/")
    assert kube.requests and all(p.startswith(prefixes) for _, p in kube.requests)


def test_a_lowered_max_replicas_bounds_the_re_set_too() -> None:
    """Regression (issue 9): re-setting a held replica count ignored a lowered maxReplicas."""
    kube = world(("a", {"scale": SCALE}))
    for i in range(2):
        evaluate(kube, "a", STORM, T0 + timedelta(seconds=11 * i))
    assert kube.obj("Deployment", NS, "web")["spec"]["replicas"] == 6
    slo = kube.obj("CustomerSLO", NS, "a")
    slo["spec"]["actions"]["scale"]["maxReplicas"] = 4
    kube.obj("Deployment", NS, "web")["spec"]["replicas"] = 2  # e.g. a GitOps sync
    evaluate(kube, "a", STORM, T0 + timedelta(seconds=40))
    assert kube.obj("Deployment", NS, "web")["spec"]["replicas"] == 4  # not 6
    (record,) = [r for r in records(kube) if r.type == "Scale"]
    assert (record.replicas, record.original_replicas) == (4, 2)


def test_a_long_retry_storm_keeps_the_alert_and_caps_throttles_with_eviction_events() -> None:
    """Regression (issue 9): MAX_THROTTLED limited new throttles per evaluation, not those held;
    `retain` cut at 200 records with alerts last, so CustomerImpact stopped being sent while an
    "ActionApplied ... firing" Event was posted; throttles past 200 were dropped with no Event."""
    from patron.actions.simulate import Simulated, act_offline
    from patron.reconcile import Outcome

    spec = make_spec({"throttle": {**THROTTLE, "ttl": "10s"}, "alert": {}})
    objects = Simulated.initial(spec, 2)
    status: dict[str, Any] = {}
    evicted: list[Event] = []
    for i in range(40):
        now = T0 + timedelta(seconds=6 * i)
        stormers = [customer(f"c{i}-{j}", impacted=True, storming=True, baseline=5.0) for j in range(30)]
        a = assessment("warning", *stormers)
        outcome = evaluated(spec, status, a, 1, now)
        result, _, objects = act_offline(spec, a, Outcome(outcome.status), objects, now, "a", NS)
        status = result.status
        held = parse_records(status["actions"])
        assert len([r for r in held if r.type == "Throttle" and r.held]) <= throttle_kind.MAX_THROTTLED
        assert [r.target for r in held if r.type == "Alert" and r.state == "Active"] == [
            'CustomerImpact{severity="warning"}'
        ]
        content = objects.throttles[("ConfigMap", "ratelimit")]
        assert content is not None
        entries = yaml.safe_load((content.data or {})["shared.yaml"])["descriptors"]
        assert len(entries) == len([r for r in held if r.type == "Throttle" and r.state == "Active"])
        evicted += [e for e in result.events if e.reason == "ActionEvicted"]
    assert evicted and all(e.type == "Warning" for e in evicted)
    assert len(parse_records(status["actions"])) <= 150 + 250


def test_hand_written_records_inside_the_namespace_change_nothing_patron_does_not_own() -> None:
    """A status writer adds valid-looking records naming objects the spec does not name and that
    carry no owner mark: reverting them must not remove another key or scale another Deployment."""
    kube = world(("a", {}))
    kube.add("ConfigMap", NS, {"metadata": {"name": "other"}, "data": {"rules.yaml": "domain: mine\n"}})
    kube.add("Deployment", NS, {"metadata": {"name": "db"}, "spec": {"replicas": 3}})
    forged = [
        {"type": "Throttle", "target": "ConfigMap/other", "customer": "x", "state": "Active",
         "since": "2026-11-26T09:00:00Z", "key": "rules.yaml", "limit": 1},
        {"type": "Scale", "target": "Deployment/db", "state": "Reverting",
         "since": "2026-11-26T09:00:00Z", "replicas": 3, "originalReplicas": 0},
    ]  # fmt: skip
    kube.obj("CustomerSLO", NS, "a")["status"] = {"actions": forged}
    evaluate(kube, "a", CALM, T0)
    assert kube.obj("ConfigMap", NS, "other")["data"] == {"rules.yaml": "domain: mine\n"}
    assert kube.obj("Deployment", NS, "db")["spec"]["replicas"] == 3
    assert not [p for m, p in kube.requests if m == "PATCH" and "/customerslos/" not in p]
    assert {r.state for r in records(kube)} == {"Reverted"}  # given up, not acted on
