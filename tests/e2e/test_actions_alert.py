"""Alerts end to end: a real Alertmanager and its webhook receiver."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.e2e.test_actions_helpers import World, slo, world_fixture  # noqa: F401
from tests.support.wait import wait_for

ALERT = {"perCustomer": True, "labels": {"team": "payments"}, "runbookURL": "https://runbooks.example/checkout"}


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def received(w: World, alertname: str, status: str, customer: str | None = None) -> list[dict]:
    return [
        a
        for a in w.alerts()
        if a["labels"]["alertname"] == alertname and a["status"] == status and a["labels"].get("customer") == customer
    ]


@pytest.mark.slow
def test_alert_names_the_customers_and_resolves_after_recovery(world: World) -> None:
    w = world
    for name in ("acme", "bob", "carol"):
        w.exporter.set(name, rps=10)
    w.start_operator()
    w.apply(slo(w.namespace, actions={"alert": ALERT}))
    wait_for(lambda: w.status().get("lastEvaluationTime"), timeout=90, what="a first evaluation")
    w.exporter.set("acme", rps=10, errors=1.0)
    w.exporter.set("bob", rps=10, errors=1.0)

    (slo_alert,) = wait_for(
        lambda: received(w, "CustomerImpact", "firing"), timeout=90, what="CustomerImpact at the receiver"
    )
    assert slo_alert["labels"] == {
        "alertname": "CustomerImpact",
        "namespace": w.namespace,
        "customerslo": "checkout",
        "service": w.namespace,
        "severity": "warning",
        "team": "payments",
    }
    assert slo_alert["annotations"]["impacted_customers"] == "acme, bob"  # worst first: acme weighs 10
    assert slo_alert["annotations"]["runbook_url"] == "https://runbooks.example/checkout"
    assert slo_alert["annotations"]["summary"] == f"{w.namespace}: 2 of 3 active customers impacted (warning)"
    assert slo_alert["generatorURL"].startswith(w.testbed.prometheus_url + "/graph?g0.expr=")

    for customer, tier in (("acme", "enterprise"), ("bob", "none")):
        (alert,) = wait_for(
            lambda c=customer: received(w, "CustomerImpacted", "firing", c),
            timeout=90,
            what=f"CustomerImpacted {customer}",
        )
        assert alert["labels"] == {
            **slo_alert["labels"],
            "alertname": "CustomerImpacted",
            "customer": customer,
            "tier": tier,
        }
        query = parse_qs(urlsplit(alert["generatorURL"]).query)["g0.expr"][0]
        assert f'customer="{customer}"' in query and f'service="{w.namespace}"' in query
    assert received(w, "CustomerImpacted", "firing", "carol") == []

    messages = w.messages("ActionApplied")
    assert "Alert CustomerImpact (warning): firing" in messages
    assert "Alert CustomerImpacted (warning) customer acme: firing" in messages
    assert w.condition("ActionsActive")["reason"] == "Alerting"

    w.exporter.set("acme", rps=10)
    w.exporter.set("bob", rps=10)
    ended = parse_time(
        wait_for(lambda: w.status().get("incident", {}).get("ended"), timeout=60, what="the incident to end")
    )
    (resolved,) = wait_for(
        lambda: received(w, "CustomerImpact", "resolved"), timeout=60, what="the resolved CustomerImpact"
    )
    # Resolved `recovery` (20s) after the impact ended, not before.
    assert parse_time(resolved["endsAt"]) >= ended + timedelta(seconds=20)
    assert parse_time(resolved["endsAt"]) < ended + timedelta(seconds=30)
    for customer in ("acme", "bob"):
        wait_for(
            lambda c=customer: received(w, "CustomerImpacted", "resolved", c),
            timeout=90,
            what=f"{customer}'s alert resolved",
        )
    assert "Alert CustomerImpact (warning): resolved" in w.messages("ActionReverted")
    wait_for(lambda: w.condition("ActionsActive").get("status") == "False", timeout=90, what="ActionsActive False")
    assert [r["state"] for r in w.records("Alert")] == ["Reverted"] * 3
    # Nothing fires twice: one firing and one resolved notification per alert.
    assert len(received(w, "CustomerImpact", "firing")) == 1


@pytest.mark.slow
def test_no_alert_is_lost_while_alertmanager_is_down(world: World) -> None:
    w = world
    w.exporter.set("acme", rps=10)
    w.exporter.set("bob", rps=10)
    w.start_operator()
    w.apply(slo(w.namespace, actions={"alert": {}}))
    wait_for(lambda: w.status().get("lastEvaluationTime"), timeout=90, what="a first evaluation")
    w.testbed.stop("alertmanager")
    try:
        down = time.monotonic()
        w.exporter.set("acme", rps=10, errors=1.0)
        wait_for(
            lambda: [r for r in w.records("Alert") if r["state"] == "Active"], timeout=90, what="the alert decided"
        )
        time.sleep(max(0.0, 60 - (time.monotonic() - down)))
        assert received(w, "CustomerImpact", "firing") == []
    finally:
        w.testbed.start("alertmanager")
    (firing,) = wait_for(
        lambda: received(w, "CustomerImpact", "firing"), timeout=60, what="the firing alert after the restart"
    )
    assert firing["annotations"]["impacted_customers"] == "acme"

    # The resolve, too, waits for Alertmanager: it is sent once and retried until delivered.
    w.testbed.stop("alertmanager")
    try:
        w.exporter.set("acme", rps=10)
        wait_for(
            lambda: [r for r in w.records("Alert") if r["state"] == "Reverted"],
            timeout=90,
            what="the alert resolved by Patron",
        )
        time.sleep(5)
    finally:
        w.testbed.start("alertmanager")
    (resolved,) = wait_for(
        lambda: received(w, "CustomerImpact", "resolved"), timeout=60, what="the resolved alert after the restart"
    )
    assert resolved["labels"] == firing["labels"]
