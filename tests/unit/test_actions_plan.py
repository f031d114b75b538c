"""The shared action core: steps, dry run, record retention, Events, ActionsActive; and the
builders the other test_actions_* modules use (a CustomerSLO, an Assessment, a Situation)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from patron.actions.plan import (
    MAX_REVERTED,
    Situation,
    actions_condition,
    apply,
    complete,
    events,
    failed,
    merge,
    retain,
    revert,
    skip,
)
from patron.api.models import CustomerSLOSpec
from patron.api.status import ActionRecord
from patron.impact.assess import Assessment, CustomerImpact
from patron.status import next_incident, timestamp

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def make_spec(actions: Mapping[str, Any] | None = None, **extra: Any) -> CustomerSLOSpec:
    body: dict[str, Any] = {
        "service": "checkout",
        "objective": 99,
        "indicator": {
            "ratio": {
                "errors": 'http_requests_total{service="checkout",code=~"5.."}',
                "total": 'http_requests_total{service="checkout"}',
            }
        },
        "interval": "2s",
        "recovery": "20s",
        "customers": {"tiers": [{"name": "enterprise", "weight": 10, "customers": ["acme"]}]},
        "actions": dict(actions or {}),
        **extra,
    }
    return CustomerSLOSpec.model_validate(body)


def customer(
    name: str, impacted: bool = False, storming: bool = False, baseline: float | None = 10.0, burn: float = 50.0
) -> CustomerImpact:
    return CustomerImpact(
        customer=name,
        tier="enterprise" if name == "acme" else "none",
        weight=10.0 if name == "acme" else 1.0,
        request_rate=10.0,
        error_ratio=burn / 100 if impacted else 0.0,
        burn_rate=burn if impacted else 0.0,
        budget_remaining=0.5,
        impacted=impacted,
        lost=False,
        storming=storming,
        short_rate=40.0 if storming else 10.0,
        baseline_rate=baseline,
    )


def assessment(severity: str, *customers: CustomerImpact) -> Assessment:
    cs = customers or (customer("ok"),)
    hit = sum(1 for c in cs if c.impacted)
    return Assessment(severity, tuple(cs), hit / len(cs), hit / len(cs), 1.0)


class Timeline:
    """Evaluations of one CustomerSLO over time: incident bookkeeping as the operator does it."""

    def __init__(self, spec: CustomerSLOSpec, start: datetime = T0) -> None:
        self.spec = spec
        self.now = start
        self.incident: dict[str, Any] | None = None
        self.records: tuple[ActionRecord, ...] = ()

    def situation(self, a: Assessment | None, dry_run: bool = False, releasing: bool = False) -> Situation:
        if a is not None:
            self.incident = next_incident(self.spec, self.incident, a, self.now)
        return Situation(
            now=self.now,
            namespace="shop",
            name="checkout",
            spec=self.spec,
            records=self.records,
            assessment=a,
            incident=self.incident,
            dry_run=dry_run or self.spec.dry_run,
            releasing=releasing,
        )

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def record(type_: str = "Scale", state: str = "Active", since: datetime = T0, **kw: Any) -> ActionRecord:
    target = kw.pop("target", "ConfigMap/rl" if type_ == "Throttle" else "Deployment/web")
    return ActionRecord.model_validate(
        {"type": type_, "target": target, "state": state, "since": timestamp(since), **kw}
    )


def sit_with(*records: ActionRecord, dry_run: bool = False, incident: dict[str, Any] | None = None) -> Situation:
    return Situation(T0, "shop", "checkout", make_spec(), records, assessment("none"), incident, dry_run)


def test_apply_is_recorded_as_skipped_under_dry_run_and_only_once() -> None:
    new = record(detail="4 replicas")
    step = apply(sit_with(dry_run=True), new, "scale Deployment/web 2 -> 4")
    assert step.verb == "skip" and step.record is not None
    assert (step.record.state, step.record.detail) == ("Skipped", "dry run: would scale Deployment/web 2 -> 4")
    # The same decision in the next evaluation keeps the record (and its since): no second Event.
    again = apply(
        sit_with(step.record, dry_run=True), new.model_copy(update={"since": "later"}), "scale Deployment/web 2 -> 4"
    )
    assert again.verb == "hold" and again.record == step.record
    assert events([step, again])[0].reason == "ActionSkipped" and len(events([step, again])) == 1


def test_dry_run_freezes_held_actions() -> None:
    held = record(detail="4 replicas (original 2; step 2, max 6)", replicas=4, originalReplicas=2)
    sit = sit_with(held, dry_run=True)
    assert apply(sit, held.model_copy(update={"detail": "6 replicas"}), "x").record == held
    assert revert(sit, held, "restored", "x").verb == "hold"


def test_revert_of_a_dry_run_decision_drops_it_with_an_event() -> None:
    decided = record(state="Skipped", detail="dry run: would scale")
    step = revert(sit_with(decided, dry_run=True), decided, "restored", "impact gone")
    assert step.record is None and step.verb == "skip"
    assert merge(sit_with(decided), [step]) == ()


def test_revert_is_pending_until_complete() -> None:
    """Regression (issue 9): a revert is recorded Reverting before it is attempted, and only a
    change that succeeded makes it Reverted (and posts ActionReverted)."""
    held = record(detail="4 replicas", since=T0 - timedelta(hours=1))
    step = revert(sit_with(held), held, "restored 2 replicas", "m")
    assert step.record is not None
    assert (step.record.state, step.record.since, step.record.detail) == (
        "Reverting",
        timestamp(T0),
        "restored 2 replicas",
    )
    assert events([step]) == ()
    # A failed change keeps it Reverting: retried next evaluation (no ActionReverted yet).
    (kept,) = failed(sit_with(held), [step], "ConfigMap/rl: HTTP 429 Too Many Requests")
    assert kept.record == step.record and events([kept]) == ()
    # The retry (the record read back Reverting) keeps `since`, then completes.
    later = Situation(T0 + timedelta(seconds=30), "shop", "checkout", make_spec(), (step.record,), None, None)
    again = revert(later, step.record, "restored 2 replicas", "m")
    assert again.record is not None and (again.record.state, again.record.since) == ("Reverting", timestamp(T0))
    (done,) = complete(later, [again])
    assert done.record is not None and done.record.state == "Reverted"
    assert [e.reason for e in events([done])] == ["ActionReverted"]


def test_skip_posts_once_per_reason() -> None:
    held = record(detail="6 replicas (original 2; step 2, max 6)")
    first = skip(sit_with(held), held, "6 replicas (original 2; at the bound 6)")
    assert first.verb == "skip" and first.record is not None and first.record.state == "Active"
    assert skip(sit_with(first.record), held, "6 replicas (original 2; at the bound 6)").verb == "hold"


def test_failed_change_keeps_held_records_and_names_the_error() -> None:
    held = record(detail="4 replicas")
    new = record(type_="Throttle", customer="bot", detail="36 req/s")
    sit = sit_with(held)
    steps = [apply(sit, held.model_copy(update={"detail": "6 replicas"}), "step"), apply(sit, new, "throttle bot")]
    out = failed(sit, steps, "HTTP 403 Forbidden")
    after = merge(sit, out)
    assert held in after
    bot = next(r for r in after if r.customer == "bot")
    assert (bot.state, bot.detail) == ("Skipped", "failed: HTTP 403 Forbidden")
    assert events(out) == ()  # the ActionFailed Event comes once per failure kind, from the note


def test_v01_records_are_migrated_when_read() -> None:
    throttle = record(type_="Throttle", customer="bot", detail="36 req/s (baseline 30 x 1.2)", original="k.yaml")
    assert (throttle.key, throttle.limit, throttle.original) == ("k.yaml", 36, None)
    assert throttle.target_ref is not None and (throttle.target_ref.kind, throttle.target_ref.name) == (
        "ConfigMap",
        "rl",
    )
    scale = record(detail="4 replicas (original 2; step 2, max 6)", original="2")
    assert (scale.replicas, scale.original_replicas) == (4, 2)
    alert = record(type_="Alert", target='CustomerImpact{severity="critical"}')
    assert (alert.alertname, alert.severity, alert.target_ref) == ("CustomerImpact", "critical", None)


@given(
    st.lists(
        st.tuples(st.sampled_from(["Active", "Skipped", "Reverting", "Reverted"]), st.integers(0, 10_000)), max_size=60
    )
)
def test_retention_keeps_everything_held_and_a_bounded_history(items: list[tuple[str, int]]) -> None:
    records = [
        record(type_="Throttle", state=s, since=T0 + timedelta(seconds=t), customer=f"c{i}", detail="1 req/s")
        for i, (s, t) in enumerate(items)
    ]
    kept, evicted = retain(records, None)
    assert evicted == ()
    assert {r.customer for r in kept if r.state != "Reverted"} == {r.customer for r in records if r.state != "Reverted"}
    reverted = sorted((r for r in records if r.state == "Reverted"), key=lambda r: r.since, reverse=True)
    assert [r for r in kept if r.state == "Reverted"] == sorted(reverted[:MAX_REVERTED], key=lambda r: r.customer or "")
    assert retain(kept, None) == (kept, ())  # stable


def test_retention_keeps_the_newest_rollback_and_the_open_incidents_history() -> None:
    old_rollback = record(type_="Rollback", state="Reverted", since=T0 - timedelta(days=1), revision="3")
    lifted = [
        record(type_="Throttle", state="Reverted", since=T0 + timedelta(seconds=i), customer=f"c{i}") for i in range(9)
    ]
    kept, _ = retain([old_rollback, *lifted], T0)
    assert old_rollback in kept and len(kept) == 10
    assert len(retain([old_rollback, *lifted], None)[0]) == MAX_REVERTED + 1


def test_actions_active_condition() -> None:
    assert actions_condition([]) == ("False", "None", "no action held")
    throttle = record(type_="Throttle", target="ConfigMap/rl", customer="bot", detail="36 req/s")
    scale = record(detail="4 replicas (original 2; step 2, max 6)")
    state, reason, message = actions_condition([throttle, scale])
    assert (state, reason) == ("True", "Scaling")
    assert "Deployment/web: 4 replicas" in message and "throttling 1 customer(s) in ConfigMap/rl: bot" in message
    assert actions_condition([record(type_="Rollback", detail="paused"), scale])[1] == "RolledBack"
    dry = record(state="Skipped", detail="dry run: would scale")
    assert actions_condition([dry])[:2] == ("False", "DryRun")
    assert actions_condition([], ["the data cannot be trusted: actions are held"])[2].endswith("actions are held")
