"""Throttle end to end: a storming customer's entry in a shared envoyproxy/ratelimit ConfigMap."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from tests.e2e.test_actions_helpers import World, slo, world_fixture  # noqa: F401
from tests.support.wait import wait_for

# Keys of the ConfigMap that belong to others; byte for byte what must stay (odd bytes on purpose).
OTHERS = {
    "config.yaml": "domain: shop\ndescriptors:\n  - key: path\n    rate_limit: {unit: minute, requests_per_unit: 9}\n",
    "notes.txt": "  trailing spaces   \n\tand a tab, ünïcödé, no final newline",
}


def throttle(shadow: bool, domain: str) -> dict[str, Any]:
    return {"configMap": "ratelimit-config", "domain": domain, "headroom": 1.25, "shadow": shadow, "ttl": "10m"}


def entries(w: World, key: str) -> list[dict[str, Any]] | None:
    data = w.get("configmap", "ratelimit-config").get("data") or {}
    return yaml.safe_load(data[key])["descriptors"] if key in data else None


def storm_under_throttles(w: World, throttles: dict[str, dict[str, Any]], **spec: Any) -> None:
    """acme, bigbot and carol at 10 req/s; one CustomerSLO per entry of `throttles` (name: its
    actions.throttle) throttles at the same moments; then bigbot storms (6x its baseline: limit
    ceil(10 x 1.25) = 13) and carol suffers."""
    for name in ("acme", "bigbot", "carol"):
        w.exporter.set(name, rps=10)
    w.start_operator()
    slos = [slo(w.namespace, name, actions={"throttle": body}, **spec) for name, body in throttles.items()]
    for body in slos:
        body["spec"]["impact"]["retryStorm"]["baseline"] = "15s"
    w.apply(*slos)
    # The baseline is the rate over L (1m) 15s earlier: it is exact once 75s of history exist.
    time.sleep(80)
    w.exporter.set("bigbot", rps=60)  # a retry storm: 6x its baseline
    w.exporter.set("carol", rps=10, errors=1.0)  # ...and others suffer: warning


def storm_under_two_throttles(w: World) -> None:
    """CustomerSLOs `checkout` (domain checkout) and `shadow` (domain shadow, shadow mode) throttle
    into two keys of ConfigMap ratelimit-config."""
    storm_under_throttles(w, {"checkout": throttle(False, "checkout"), "shadow": throttle(True, "shadow")})


@pytest.mark.slow
def test_storming_customer_is_throttled_other_keys_untouched_then_lifted(world: World) -> None:
    w = world
    w.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ratelimit-config"}, "data": OTHERS})
    storm_under_two_throttles(w)

    got = wait_for(lambda: entries(w, "patron-checkout.yaml"), timeout=90, what="bigbot's entry")
    # limit = ceil(baseline 10 req/s x headroom 1.25) = 13
    assert got == [{"key": "customer_id", "value": "bigbot", "rate_limit": {"unit": "second", "requests_per_unit": 13}}]
    shadow = wait_for(lambda: entries(w, "patron-shadow.yaml"), timeout=30, what="the shadow entry")
    assert shadow == [{**got[0], "shadow_mode": True}]
    cm = w.get("configmap", "ratelimit-config")
    assert {k: v for k, v in cm["data"].items() if not k.startswith("patron-")} == OTHERS
    assert ("patron.dev", "Update", "") in w.managers("configmap", "ratelimit-config")

    (record,) = w.records("Throttle")
    assert (record["target"], record["customer"], record["state"]) == ("ConfigMap/ratelimit-config", "bigbot", "Active")
    assert record["detail"] == "13 req/s (baseline 10 x 1.25)"
    assert (record["key"], record["limit"], record["targetRef"]) == (
        "patron-checkout.yaml",
        13,
        {"kind": "ConfigMap", "name": "ratelimit-config"},
    )
    assert cm["data"]["patron-checkout.yaml"].startswith(f"# patron.dev/owner: {w.namespace}/checkout\n")
    assert w.condition("ActionsActive")["reason"] == "Throttling"
    assert (
        "Throttle ConfigMap/ratelimit-config key patron-checkout.yaml customer bigbot: 13 req/s (baseline 10 x 1.25)"
        in w.messages("ActionApplied")
    )

    w.exporter.set("bigbot", rps=10)
    w.exporter.set("carol", rps=10)
    wait_for(lambda: entries(w, "patron-checkout.yaml") is None, timeout=90, what="the entry removed after recovery")
    wait_for(lambda: entries(w, "patron-shadow.yaml") is None, timeout=30, what="the shadow entry removed")
    cm = w.get("configmap", "ratelimit-config")
    assert cm["data"] == OTHERS
    (record,) = w.records("Throttle")
    assert (record["state"], record["detail"]) == ("Reverted", "lifted: no impact for 20s")
    assert w.condition("ActionsActive")["status"] == "False"
    # One entry, one lift: the throttle was never set twice.
    applied = [m for m in w.messages("ActionApplied") if m.startswith("Throttle") and "patron-checkout" in m]
    assert len(applied) == 1


def test_missing_config_map_is_reported_not_created(world: World) -> None:
    """Patron never creates the ratelimit ConfigMap: it is the rate limiter's, mounted by it."""
    w = world
    from tests.support.exporter import Exporter

    assert isinstance(w.exporter, Exporter)
    w.exporter.set("bigbot", rps=10)
    w.start_operator()
    w.apply(slo(w.namespace, actions={"throttle": throttle(False, "checkout")}))
    wait_for(lambda: w.status().get("lastEvaluationTime"), timeout=90, what="a first evaluation")
    assert w.kubectl("get", "configmap", "ratelimit-config", check=False).returncode != 0
    assert w.condition("ActionsActive")["reason"] == "None"
