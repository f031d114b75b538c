"""The throttle's Envoy Gateway backend (pure, and its writes against the fake API server): Patron's
rules merged into a BackendTrafficPolicy next to the user's, ownership, shadow mode, the spec."""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from patron.actions import throttle
from patron.actions.plan import OwnedElsewhere, complete, merge
from patron.actions.throttle_policy import (
    BACKEND,
    OWNER_ANNOTATION,
    RULES_ANNOTATION,
    UNOWNED,
    UNREADABLE,
    PatronRule,
    PolicyState,
    WritePolicy,
    dump_claims,
    header_value_problem,
    merge_rules,
    patch_for,
    settle,
)
from patron.api.models import ThrottleAction
from tests.support.fake_kube import FakeKube
from tests.support.fake_kube import merge as merge_patch
from tests.unit.test_actions_plan import T0, Timeline, assessment, customer, make_spec

THROTTLE = {"backendTrafficPolicy": {"name": "checkout"}, "headroom": 1.2, "ttl": "1m"}
BTP = ("BackendTrafficPolicy", "checkout")
USER_RULE = {
    "clientSelectors": [{"headers": [{"name": "x-tenant", "type": "Distinct", "invert": False}]}],
    "limit": {"requests": 100, "unit": "Second"},
}
# The user's own rule for bigbot, of exactly Patron's shape: it is not Patron's (not claimed).
LOOKALIKE = PatronRule(header="x-customer-id", customer="bigbot", requests=36).rule()


def policy(rules: list[Any] | None = None, owner: str | None = None, claims: str | None = None) -> dict[str, Any]:
    notes = {k: v for k, v in ((OWNER_ANNOTATION, owner), (RULES_ANNOTATION, claims)) if v is not None}
    spec: dict[str, Any] = {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "c"}]}
    if rules is not None:
        spec["rateLimit"] = {"global": {"rules": copy.deepcopy(rules)}}
    return {"metadata": {"name": "checkout", "resourceVersion": "7", "annotations": notes}, "spec": spec}


def storm(severity: str = "warning", *names: str) -> Any:
    storming = [customer(n, impacted=True, storming=True, baseline=30.0) for n in names or ("bigbot",)]
    return assessment(severity, *storming, customer("quiet", impacted=True))


class Policy:
    """A policy evaluated over time: each plan's writes applied as the API server would (merge patch)."""

    def __init__(self, obj: dict[str, Any], **throttle_spec: Any) -> None:
        self.obj = obj
        self.tl = Timeline(make_spec({"throttle": THROTTLE | throttle_spec}))

    def step(self, a: Any, dry_run: bool = False, seconds: float = 2) -> throttle.Plan:
        self.tl.advance(seconds)
        sit = self.tl.situation(a, dry_run=dry_run)
        plan = throttle.plan(sit, {BTP: PolicyState.of(self.obj)})
        for write in plan.effects:
            assert isinstance(write, WritePolicy)
            assert write.patch["metadata"]["resourceVersion"] == self.obj["metadata"]["resourceVersion"]
            self.obj = merge_patch(self.obj, write.patch)
            self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        self.tl.records = merge(sit, complete(sit, plan.steps))
        return plan

    @property
    def rules(self) -> list[Any]:
        return list(((self.obj["spec"].get("rateLimit") or {}).get("global") or {}).get("rules") or [])

    @property
    def notes(self) -> dict[str, str]:
        return dict(self.obj["metadata"].get("annotations") or {})


# ------------------------------------------------------------------ the spec


def test_exactly_one_throttle_target_and_backend_fields_are_refused_naming_them() -> None:
    cases = {
        "set exactly one of actions.throttle.configMap or actions.throttle.backendTrafficPolicy": [
            {"domain": "d"},
            {"configMap": "rl", "domain": "d", "backendTrafficPolicy": {"name": "p"}},
        ],
        "actions.throttle.domain is required with actions.throttle.configMap": [{"configMap": "rl"}],
        "actions.throttle.key and actions.throttle.domain are for configMap only": [
            {"backendTrafficPolicy": {"name": "p"}, "key": "k.yaml"},
            {"backendTrafficPolicy": {"name": "p"}, "domain": "d"},
        ],
        "actions.throttle.header is for backendTrafficPolicy only": [
            {"configMap": "rl", "domain": "d", "header": "x-customer-id"}
        ],
    }
    for message, bodies in cases.items():
        for body in bodies:
            with pytest.raises(ValidationError, match=message):
                ThrottleAction.model_validate(body)
    spec = ThrottleAction.model_validate({"backendTrafficPolicy": {"name": "p"}})
    assert (spec.header_name, spec.config_map) == ("x-customer-id", None)


@pytest.mark.parametrize("header", ["x customer", "x-customer:", "", "é", "x\n", "(x)"])
def test_header_must_be_an_http_token(header: str) -> None:
    with pytest.raises(ValidationError, match="header"):
        ThrottleAction.model_validate({"backendTrafficPolicy": {"name": "p"}, "header": header})


def test_crd_carries_the_rules_the_model_checks() -> None:
    from patron.api.crd import build_crd

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node = schema["properties"]["spec"]["properties"]["actions"]["properties"]["throttle"]
    rules = {v["rule"]: v["message"] for v in node["x-kubernetes-validations"]}
    assert rules["has(self.configMap) != has(self.backendTrafficPolicy)"].startswith("set exactly one of")
    assert "required" not in node and node["properties"]["header"]["maxLength"] == 256


# ------------------------------------------------------------------ rule merging (pure)

header_names = st.sampled_from(["x-customer-id", "x-tenant", "X-Customer-Id"])
patron_rules = st.builds(
    PatronRule, header=header_names, customer=st.text(min_size=1, max_size=8), requests=st.integers(1, 50),
    shadow=st.booleans(),
)  # fmt: skip
user_rules = st.one_of(
    patron_rules.map(PatronRule.rule),  # lookalikes of Patron's shape
    st.builds(
        lambda n, r: {
            "clientSelectors": [{"headers": [{"name": n, "type": "Distinct"}]}],
            "limit": {"requests": r, "unit": "Minute"},
        },
        header_names,
        st.integers(1, 9),
    ),
    st.builds(lambda r: {"limit": {"requests": r, "unit": "Second"}, "shared": True}, st.integers(1, 9)),
)


def patron_positions(rules: list[Any], claims: list[PatronRule]) -> list[int]:
    """Which rules merge_rules takes as Patron's: claimed rules of Patron's shape, first match first."""
    pending = Counter(claims)
    out = []
    for i, rule in enumerate(rules):
        mine = PatronRule.of(rule)
        if mine is not None and pending[mine] > 0:
            pending[mine] -= 1
            out.append(i)
    return out


@given(
    st.lists(user_rules, max_size=6),
    st.lists(patron_rules, max_size=5),
    st.lists(patron_rules, max_size=5),
    st.randoms(use_true_random=False),
)
def test_user_rules_are_kept_exactly_and_patron_rules_are_the_wanted_set(
    users: list[Any], held: list[PatronRule], wanted: list[PatronRule], rnd: Any
) -> None:
    """Whatever the policy holds: the user's rules come out unchanged and in their order, Patron's
    rules are exactly `wanted`, and merging again changes nothing."""
    rules = users + [r.rule() for r in held]
    rnd.shuffle(rules)
    mine = set(patron_positions(rules, held))
    before = copy.deepcopy(rules)
    out = merge_rules(rules, held, wanted)
    assert rules == before  # nothing is changed in place
    # The user's rules by identity (a lookalike may equal one of Patron's): the very same, in order.
    theirs = [id(r) for i, r in enumerate(rules) if i not in mine]
    assert [id(r) for r in out if id(r) in set(theirs)] == theirs
    assert Counter(PatronRule.of(r) for r in out if id(r) not in set(theirs)) == Counter(wanted)
    assert merge_rules(out, wanted, wanted) == out
    state = PolicyState("p", "1", {"global": {"rules": rules}}, "shop/checkout", tuple(held))
    after = settle(state, wanted, "shop/checkout")
    assert after.rules == out
    assert patch_for(after, wanted, "shop/checkout") is None


def test_patron_rule_shape_is_typed_not_parsed() -> None:
    rule = PatronRule(header="x-customer-id", customer='bad"bot: {x}', requests=13, shadow=True)
    assert rule.rule() == {
        "clientSelectors": [
            {"headers": [{"name": "x-customer-id", "type": "Exact", "value": 'bad"bot: {x}', "invert": False}]}
        ],
        "limit": {"requests": 13, "unit": "Second"},
        "shadowMode": True,
    }
    assert PatronRule.of(rule.rule()) == rule
    # The schema's defaults (type Exact, invert false) may be absent; anything else is not Patron's shape.
    bare = {"clientSelectors": [{"headers": [{"name": "h", "value": "c"}]}], "limit": {"requests": 2, "unit": "Second"}}
    assert PatronRule.of(bare) == PatronRule(header="h", customer="c", requests=2)
    for other in (
        {**bare, "shared": True},
        {**bare, "limit": {"requests": 2, "unit": "Minute"}},
        {**bare, "clientSelectors": [{"headers": [{"name": "h", "value": "c", "invert": True}]}]},
        {**bare, "clientSelectors": [{"headers": [{"name": "h", "value": "c"}], "methods": [{"value": "GET"}]}]},
        {**bare, "clientSelectors": [{"headers": [{"name": "h", "value": "c"}, {"name": "i", "value": "d"}]}]},
        USER_RULE,
        "not a rule",
    ):
        assert PatronRule.of(other) is None, other


def test_header_values_patron_cannot_match_are_named() -> None:
    assert header_value_problem("acme corp") is None
    assert header_value_problem("ünï") is None
    assert "1 to 1024" in str(header_value_problem("x" * 1025))
    assert "whitespace" in str(header_value_problem(" acme"))
    assert "control" in str(header_value_problem("a\nb"))


# ------------------------------------------------------------------ the planner with this backend


def test_storming_customer_gets_one_rule_next_to_the_users_then_it_is_removed_alone() -> None:
    p = Policy(policy([USER_RULE, LOOKALIKE]))
    plan = p.step(storm())
    (rec,) = p.tl.records
    assert (rec.target, rec.customer, rec.state, rec.limit, rec.key) == (
        "BackendTrafficPolicy/checkout", "bigbot", "Active", 36, None,
    )  # fmt: skip
    assert rec.target_ref is not None and rec.target_ref.kind == "BackendTrafficPolicy"
    assert [s.message for s in plan.steps] == [
        "Throttle BackendTrafficPolicy/checkout customer bigbot: 36 req/s (baseline 30 x 1.2)"
    ]
    mine = PatronRule(header="x-customer-id", customer="bigbot", requests=36)
    assert p.rules == [USER_RULE, LOOKALIKE, mine.rule()]  # the lookalike is the user's: kept, not taken
    assert p.notes == {OWNER_ANNOTATION: "shop/checkout", RULES_ANNOTATION: dump_claims([mine])}
    assert p.step(storm()).effects == ()  # held and in place: nothing to write
    # Recovery: Patron's rule goes, the lookalike and the user's rule stay, and so do they only.
    for _ in range(30):
        plan = p.step(assessment("none", customer("bigbot")))
    assert p.tl.records[0].state == "Reverted"
    assert p.rules == [USER_RULE, LOOKALIKE] and p.notes == {}


def test_a_policy_without_rate_limits_gets_global_rules_and_loses_them_again() -> None:
    p = Policy(policy(None), header="x-tenant", shadow=True)
    p.step(storm("warning", "a", "b"))
    assert p.obj["spec"]["rateLimit"] == {
        "global": {
            "rules": [PatronRule(header="x-tenant", customer=c, requests=36, shadow=True).rule() for c in ("a", "b")]
        }
    }
    p.tl.spec = make_spec({})
    p.step(storm("warning", "a", "b"))
    assert "rateLimit" not in p.obj["spec"] and p.notes == {}
    assert p.obj["spec"]["targetRefs"]  # the rest of the policy is untouched


def test_a_policy_owned_by_another_customerslo_is_a_conflict_and_never_written() -> None:
    other = PatronRule(header="x-customer-id", customer="zed", requests=5)
    p = Policy(policy([USER_RULE, other.rule()], owner="shop/other", claims=dump_claims([other])))
    plan = p.step(storm())
    assert plan.effects == () and plan.steps == ()
    assert plan.conflicts == ("BackendTrafficPolicy checkout is owned by shop/other: not throttled",)
    for bad, who in (("[1, 2]", UNREADABLE), (dump_claims([other]), UNOWNED)):
        p = Policy(policy([USER_RULE], owner=None, claims=bad))
        plan = p.step(storm())
        assert plan.effects == () and plan.conflicts == (
            f"BackendTrafficPolicy checkout is owned by {who}: not throttled",
        )


def test_a_held_rule_is_lifted_when_another_takes_the_policy() -> None:
    p = Policy(policy([USER_RULE]))
    p.step(storm())
    p.obj["metadata"]["annotations"][OWNER_ANNOTATION] = "shop/other"
    plan = p.step(storm())
    assert [s.verb for s in plan.steps] == ["revert"] and plan.effects == ()
    assert "BackendTrafficPolicy checkout is now owned by shop/other" in plan.steps[0].message


def test_dry_run_and_bad_names_write_nothing() -> None:
    p = Policy(policy([USER_RULE]))
    plan = p.step(storm(), dry_run=True)
    assert plan.effects == () and p.rules == [USER_RULE]
    assert p.tl.records[0].detail.startswith("dry run: would Throttle BackendTrafficPolicy/checkout customer bigbot")
    p = Policy(policy([USER_RULE]))
    plan = p.step(storm("warning", "bad\nbot"))
    assert plan.effects == ()
    (rec,) = p.tl.records
    assert rec.state == "Skipped" and "cannot be an exact header value: control characters" in rec.detail
    p = Policy(policy([USER_RULE]))
    plan = throttle.plan(p.tl.situation(storm()), {BTP: None})
    assert plan.steps[0].record is not None
    assert plan.steps[0].record.detail == (
        "BackendTrafficPolicy checkout not found in namespace shop; "
        "Patron adds its rules to an existing BackendTrafficPolicy but never creates it"
    )


def test_moving_the_throttle_from_the_config_map_to_the_policy_lifts_the_entries_there() -> None:
    from patron.actions.throttle_configmap import ConfigMapState

    tl = Timeline(make_spec({"throttle": {"configMap": "rl", "domain": "d", "ttl": "1h"}}))
    cm = ("ConfigMap", "rl")
    sit = tl.situation(storm())
    first = throttle.plan(sit, {cm: ConfigMapState("rl", "1", {})})
    tl.records = merge(sit, complete(sit, first.steps))
    content = first.effects[0].content
    tl.spec = make_spec({"throttle": THROTTLE})
    tl.advance(2)
    sit = tl.situation(storm())
    plan = throttle.plan(
        sit, {cm: ConfigMapState("rl", "2", {"patron-checkout.yaml": content}), BTP: PolicyState.of(policy([]))}
    )
    kinds = sorted((w.kind, getattr(w, "content", "")) for w in plan.effects)
    assert kinds == [("BackendTrafficPolicy", ""), ("ConfigMap", None)]
    assert "lifted, actions.throttle now writes BackendTrafficPolicy checkout" in plan.steps[0].message


# ------------------------------------------------------------------ writes (fake API server)


def test_a_conflicting_write_is_merged_again_with_what_the_user_added() -> None:
    kube = FakeKube()
    kube.add("BackendTrafficPolicy", "shop", policy([USER_RULE]))
    state = asyncio.run(BACKEND.observe(kube, "shop", "checkout"))
    assert state is not None
    mine = PatronRule(header="x-customer-id", customer="bigbot", requests=36)
    write = WritePolicy("checkout", "shop/checkout", (mine,), patch_for(state, [mine], "shop/checkout") or {})
    # Meanwhile the user adds a rule: the guarded patch is refused (409), read again, merged again.
    later = {**USER_RULE, "limit": {"requests": 7, "unit": "Hour"}}
    obj = kube.obj("BackendTrafficPolicy", "shop", "checkout")
    obj["spec"]["rateLimit"]["global"]["rules"].append(later)
    obj["metadata"]["resourceVersion"] = "999"
    asyncio.run(BACKEND.execute(kube, "shop", write))
    obj = kube.obj("BackendTrafficPolicy", "shop", "checkout")
    assert obj["spec"]["rateLimit"]["global"]["rules"] == [USER_RULE, later, mine.rule()]
    assert json.loads(obj["metadata"]["annotations"][RULES_ANNOTATION]) == [mine.model_dump()]
    assert [m for m, _ in kube.requests] == ["GET", "PATCH", "GET", "PATCH"]
    # Taken by another CustomerSLO between the read and the write: refused, nothing written.
    obj["metadata"]["annotations"][OWNER_ANNOTATION] = "shop/other"
    obj["metadata"]["resourceVersion"] = "1999"
    with pytest.raises(OwnedElsewhere):
        asyncio.run(BACKEND.execute(kube, "shop", write))


# ------------------------------------------------------------------ act() over the fake API server


def test_forbidden_policy_is_named_on_the_status_then_the_rule_goes_in_and_out() -> None:
    """Without the chart's actions.throttle.backendTrafficPolicy RBAC the read is Forbidden: the
    ActionsActive message names it (one ActionFailed Event); once granted, the rule goes in and,
    after recovery, out again, the user's rule staying as it was."""
    from tests.unit.test_actions_faults import CALM, NS, STORM, evaluate, reasons, records, refuse, world

    kube = world(("a", {"throttle": THROTTLE}))
    kube.add("BackendTrafficPolicy", NS, policy([USER_RULE]))
    refuse(kube, "GET", "/backendtrafficpolicies/", 403, "Forbidden")
    t0 = T0
    first = evaluate(kube, "a", STORM, t0)
    (cond,) = [c for c in kube.obj("CustomerSLO", NS, "a")["status"]["conditions"] if c["type"] == "ActionsActive"]
    assert "throttle: reading its targets failed: BackendTrafficPolicy/checkout: HTTP 403 Forbidden" in cond["message"]
    assert reasons(first).count("ActionFailed") == 1
    kube.faults.clear()
    evaluate(kube, "a", STORM, t0 + timedelta(seconds=2))
    obj = kube.obj("BackendTrafficPolicy", NS, "checkout")
    mine = PatronRule(header="x-customer-id", customer="bigbot", requests=36)
    assert obj["spec"]["rateLimit"]["global"]["rules"] == [USER_RULE, mine.rule()]
    assert [(r.target, r.state) for r in records(kube) if r.type == "Throttle"] == [
        ("BackendTrafficPolicy/checkout", "Active")
    ]
    evaluate(kube, "a", CALM, t0 + timedelta(seconds=4))
    evaluate(kube, "a", CALM, t0 + timedelta(seconds=30))
    obj = kube.obj("BackendTrafficPolicy", NS, "checkout")
    assert obj["spec"]["rateLimit"]["global"]["rules"] == [USER_RULE]
    assert not (obj["metadata"].get("annotations") or {})


def test_replay_simulates_the_policy() -> None:
    """`patron replay` plans the policy's rules with the same planner and shows them."""
    from patron.actions.simulate import Simulated, act_offline
    from patron.reconcile import Outcome, evaluated

    spec = make_spec({"throttle": THROTTLE})
    objects = Simulated.initial(spec, 2)
    assert objects.describe() == {"BackendTrafficPolicy/checkout": {"rateLimit": None}}
    a = storm()
    outcome = evaluated(spec, {}, a, 1, T0)
    result, _, objects = act_offline(spec, a, Outcome(outcome.status), objects, T0, "checkout", "shop")
    mine = PatronRule(header="x-customer-id", customer="bigbot", requests=36)
    assert objects.describe() == {"BackendTrafficPolicy/checkout": {"rateLimit": {"global": {"rules": [mine.rule()]}}}}
    assert [e.reason for e in result.events if e.reason.startswith("Action")] == ["ActionApplied"]
