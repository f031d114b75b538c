"""Throttle into Envoy Gateway end to end: Patron's rules in BackendTrafficPolicies, written through
the real v1.9.1 CRD schema (rendered from Envoy Gateway's Go module by hack/tools.sh) next to the
user's own rules, shadow mode, dry run, a second CustomerSLO in Conflict, and the revert."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.test_actions_helpers import World, slo, world_fixture  # noqa: F401
from tests.e2e.test_actions_throttle import storm_under_throttles
from tests.support.wait import wait_for

# The user's rules: 100 req/s per tenant, and a rule for bigbot of exactly Patron's shape (not Patron's).
USER_RULES = [
    {
        "clientSelectors": [{"headers": [{"name": "x-tenant", "type": "Distinct"}]}],
        "limit": {"requests": 100, "unit": "Second"},
    },
    {
        "clientSelectors": [{"headers": [{"name": "x-customer-id", "type": "Exact", "value": "bigbot"}]}],
        "limit": {"requests": 500, "unit": "Second"},
    },
]


def policy(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": {"name": name},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "checkout"}],
            "rateLimit": {"global": {"rules": USER_RULES}},
        },
    }


def to(name: str, **extra: Any) -> dict[str, Any]:
    return {"backendTrafficPolicy": {"name": name}, "headroom": 1.25, "ttl": "10m", **extra}


def rules(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(((obj["spec"].get("rateLimit") or {}).get("global") or {}).get("rules") or [])


def rules_of(w: World, name: str) -> list[dict[str, Any]]:
    return rules(w.get("backendtrafficpolicy", name))


def notes(w: World, name: str) -> dict[str, str]:
    return {k: v for k, v in (w.get("backendtrafficpolicy", name)["metadata"].get("annotations") or {}).items()
            if k.startswith("patron.dev/")}  # fmt: skip


def patron_rule(header: str, shadow: bool = False) -> dict[str, Any]:
    """bigbot's rule as the API server stores it: limit ceil(10 req/s x 1.25) = 13, the schema's defaults."""
    match = {"name": header, "type": "Exact", "value": "bigbot", "invert": False}
    return {"clientSelectors": [{"headers": [match]}], "limit": {"requests": 13, "unit": "Second"}} | (
        {"shadowMode": True} if shadow else {}
    )


@pytest.mark.slow
def test_storming_customer_gets_a_rule_next_to_the_users_rules_then_only_it_is_removed(
    world: World, envoy_gateway_crds: str
) -> None:
    w = world
    w.apply(policy("checkout"), policy("shadow"), policy("dry"))
    users = rules_of(w, "checkout")  # as the API server stored them (with the schema's defaults)
    assert users[1]["clientSelectors"][0]["headers"][0]["invert"] is False
    before_dry = w.get("backendtrafficpolicy", "dry")
    storm_under_throttles(w, {"checkout": to("checkout"), "shadow": to("shadow", shadow=True, header="x-tenant-id")})
    dry = slo(w.namespace, "dry", actions={"throttle": to("dry")}, dryRun=True)
    dry["spec"]["impact"]["retryStorm"]["baseline"] = "15s"
    w.apply(dry)

    got = wait_for(lambda: rules_of(w, "checkout") if len(rules_of(w, "checkout")) > 2 else None, 90, "bigbot's rule")
    assert got == [*users, patron_rule("x-customer-id")]  # the user's rules untouched, in their order
    wait_for(lambda: len(rules_of(w, "shadow")) > 2, 30, "the shadow rule")
    assert rules_of(w, "shadow") == [*users, patron_rule("x-tenant-id", shadow=True)]
    owner = f"{w.namespace}/checkout"
    claim = {"header": "x-customer-id", "customer": "bigbot", "requests": 13, "shadow": False}
    annotations = notes(w, "checkout")
    assert annotations["patron.dev/owner"] == owner
    assert json.loads(annotations["patron.dev/throttle-rules"]) == [claim]
    assert ("patron.dev", "Update", "") in w.managers("backendtrafficpolicy", "checkout")
    (record,) = w.records("Throttle")
    assert (record["target"], record["targetRef"], record["customer"], record["limit"], record["state"]) == (
        "BackendTrafficPolicy/checkout", {"kind": "BackendTrafficPolicy", "name": "checkout"}, "bigbot", 13, "Active",
    )  # fmt: skip
    assert "key" not in record and w.condition("ActionsActive")["reason"] == "Throttling"
    assert "Throttle BackendTrafficPolicy/checkout customer bigbot: 13 req/s (baseline 10 x 1.25)" in w.messages(
        "ActionApplied"
    )

    # Dry run: decided and recorded, the policy never written.
    (decided,) = wait_for(lambda: w.records("Throttle", "dry"), 60, "the dry-run decision")
    assert (decided["state"], decided["detail"]) == (
        "Skipped",
        "dry run: would Throttle BackendTrafficPolicy/dry customer bigbot: 13 req/s (baseline 10 x 1.25)",
    )
    after_dry = w.get("backendtrafficpolicy", "dry")
    assert after_dry["metadata"]["resourceVersion"] == before_dry["metadata"]["resourceVersion"]

    # A second CustomerSLO naming the same policy: Conflict, and the policy stays as it is.
    w.apply(slo(w.namespace, "intruder", actions={"throttle": to("checkout")}))
    conflict = wait_for(
        lambda: (c := w.condition("ActionsActive", "intruder")).get("reason") == "Conflict" and c,
        60,
        "the intruder's Conflict",
    )
    assert f"BackendTrafficPolicy checkout is owned by {owner}: not throttled" in conflict["message"]
    assert w.records("Throttle", "intruder") == []
    assert rules_of(w, "checkout") == [*users, patron_rule("x-customer-id")]
    assert notes(w, "checkout") == annotations

    # Recovery: only Patron's rules go, and its annotations with them.
    w.exporter.set("bigbot", rps=10)
    w.exporter.set("carol", rps=10)
    wait_for(lambda: rules_of(w, "checkout") == users, 90, "bigbot's rule removed after recovery")
    wait_for(lambda: rules_of(w, "shadow") == users, 30, "the shadow rule removed")
    assert notes(w, "checkout") == {} and notes(w, "shadow") == {}
    (record,) = w.records("Throttle")
    assert (record["state"], record["detail"]) == ("Reverted", "lifted: no impact for 20s")
    applied = [m for m in w.messages("ActionApplied") if "BackendTrafficPolicy/checkout" in m]
    assert len(applied) == 1  # one rule, one lift: never set twice
    assert (
        w.get("backendtrafficpolicy", "dry")["metadata"]["resourceVersion"] == before_dry["metadata"]["resourceVersion"]
    )
