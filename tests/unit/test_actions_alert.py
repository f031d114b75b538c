"""Alert decisions and payloads (pure): labels, annotations, re-send, escalation, resolve."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hypothesis import given
from hypothesis import strategies as st

from patron.actions import alert
from patron.actions.alertmanager import Alert
from patron.actions.plan import complete, events, merge
from patron.impact.assess import Assessment
from patron.status import impact_fields
from tests.unit.test_actions_plan import T0, Timeline, assessment, customer, make_spec

ALERT = {"perCustomer": True, "labels": {"team": "payments"}, "runbookURL": "https://runbooks.example/checkout"}
PROM = "http://prometheus:9090"


def run(tl: Timeline, a: Assessment | None, can_send: bool = True) -> tuple[list[Alert], list[str]]:
    sit = tl.situation(a)
    status: dict[str, Any] = impact_fields(tl.spec, a, {}, tl.now) if a else {}
    plan = alert.plan(sit, status, PROM, can_send)
    steps = complete(sit, plan.steps)  # sent
    tl.records = merge(sit, steps)
    return list(plan.effects), [e.message for e in events(steps)]


def by_name(alerts: list[Alert]) -> dict[tuple[str, str | None, str], Alert]:
    return {(a.labels["alertname"], a.labels.get("customer"), a.labels["severity"]): a for a in alerts}


def test_firing_alerts_name_the_customers_and_carry_every_label() -> None:
    tl = Timeline(make_spec({"alert": ALERT}))
    a = assessment("warning", customer("acme", True, burn=90), customer("bob", True, burn=95), customer("ok"))
    alerts, messages = run(tl, a)
    assert messages == [
        "Alert CustomerImpact (warning): firing",
        "Alert CustomerImpacted (warning) customer bob: firing",  # worst first
        "Alert CustomerImpacted (warning) customer acme: firing",
    ]
    got = by_name(alerts)
    slo = got[("CustomerImpact", None, "warning")]
    assert slo.labels == {
        "alertname": "CustomerImpact",
        "namespace": "shop",
        "customerslo": "checkout",
        "service": "checkout",
        "severity": "warning",
        "team": "payments",
    }
    assert slo.annotations["impacted_customers"] == "bob, acme"  # worst first
    assert slo.annotations["runbook_url"] == "https://runbooks.example/checkout"
    assert slo.annotations["summary"] == "checkout: 2 of 3 active customers impacted (warning)"
    assert (slo.starts_at, slo.ends_at) == (T0, T0 + timedelta(seconds=8))  # 4 x interval (2s)
    acme = got[("CustomerImpacted", "acme", "warning")]
    assert acme.labels["tier"] == "enterprise" and got[("CustomerImpacted", "bob", "warning")].labels["tier"] == "none"
    query = parse_qs(urlsplit(acme.generator_url).query)["g0.expr"][0]
    assert query == (
        'sum by (customer) (rate(http_requests_total{service="checkout",code=~"5..",customer="acme"}[5m]))'
        ' / sum by (customer) (rate(http_requests_total{service="checkout",customer="acme"}[5m]))'
    )
    assert acme.generator_url.startswith(PROM + "/graph?g0.expr=sum+by+%28customer%29")


def test_resent_every_evaluation_while_firing_then_resolved_once_after_recovery() -> None:
    tl = Timeline(make_spec({"alert": {}}))
    bad = assessment("critical", customer("acme", True))
    run(tl, bad)
    tl.advance(2)
    alerts, messages = run(tl, bad)
    assert messages == [] and [(a.starts_at, a.ends_at) for a in alerts] == [(T0, tl.now + timedelta(seconds=8))]
    good = assessment("none", customer("acme"))
    tl.advance(2)
    alerts, _ = run(tl, good)
    assert [a.resolved for a in alerts] == [False]  # still firing during recovery
    assert "resolves at 2026-11-26T10:00:24Z" in alerts[0].annotations["description"]
    tl.advance(20)
    alerts, messages = run(tl, good)
    assert messages == ["Alert CustomerImpact (critical): resolved"]
    assert [(a.resolved, a.ends_at, a.starts_at) for a in alerts] == [(True, tl.now, T0)]
    tl.advance(2)
    assert run(tl, good) == ([], [])


def test_escalation_resolves_the_warning_and_fires_critical() -> None:
    tl = Timeline(make_spec({"alert": {}}))
    run(tl, assessment("warning", customer("acme", True)))
    tl.advance(2)
    alerts, messages = run(tl, assessment("critical", customer("acme", True)))
    assert messages == ["Alert CustomerImpact (warning): resolved", "Alert CustomerImpact (critical): firing"]
    assert {(a.labels["severity"], a.resolved) for a in alerts} == {("warning", True), ("critical", False)}
    tl.advance(2)
    # The peak stays: back to warning does not step the alert down.
    alerts, messages = run(tl, assessment("warning", customer("acme", True)))
    assert messages == [] and [a.labels["severity"] for a in alerts] == ["critical"]


def test_a_customer_alert_lingers_for_recovery_after_the_customer_recovers() -> None:
    tl = Timeline(make_spec({"alert": ALERT}))
    run(tl, assessment("warning", customer("acme", True), customer("bob", True)))
    tl.advance(2)
    alerts, _ = run(tl, assessment("warning", customer("acme", True), customer("bob")))
    bob = by_name(alerts)[("CustomerImpacted", "bob", "warning")]
    assert not bob.resolved and bob.annotations["description"].startswith("No longer impacted; the alert resolves at")
    tl.advance(20)
    alerts, messages = run(tl, assessment("warning", customer("acme", True), customer("bob")))
    assert messages == ["Alert CustomerImpacted (warning) customer bob: resolved"]


def test_missing_data_keeps_resending_and_resolves_nothing() -> None:
    tl = Timeline(make_spec({"alert": {}}))
    run(tl, assessment("critical", customer("acme", True)))
    tl.advance(600)
    alerts, messages = run(tl, None)
    assert messages == [] and [(a.resolved, a.ends_at) for a in alerts] == [(False, tl.now + timedelta(seconds=8))]


def test_without_alertmanager_the_decision_is_skipped_with_a_reason() -> None:
    tl = Timeline(make_spec({"alert": {}}))
    alerts, messages = run(tl, assessment("critical", customer("acme", True)), can_send=False)
    assert alerts == []
    assert messages == ["Alert CustomerImpact: no Alertmanager configured: run patron with --alertmanager-url"]


def test_dry_run_sends_nothing() -> None:
    tl = Timeline(make_spec({"alert": {}}, dryRun=True))
    alerts, messages = run(tl, assessment("critical", customer("acme", True)))
    assert alerts == [] and messages == ["dry run: would Alert CustomerImpact (critical): firing"]


@given(st.text(min_size=1, max_size=30))
def test_customer_names_are_escaped_in_the_query(name: str) -> None:
    query = alert.error_ratio_query(make_spec(), name)
    from patron.api.selectors import parse_selector

    inner = query.split("rate(")[1].split("[5m]")[0]
    assert parse_selector(inner).matchers[-1].value == name


def test_to_json_is_alertmanager_v2() -> None:
    a = Alert({"alertname": "X"}, {"summary": "s"}, T0, T0 + timedelta(seconds=8), "http://p/graph")
    assert a.to_json() == {
        "labels": {"alertname": "X"},
        "annotations": {"summary": "s"},
        "startsAt": "2026-11-26T10:00:00.000Z",
        "endsAt": "2026-11-26T10:00:08.000Z",
        "generatorURL": "http://p/graph",
    }
