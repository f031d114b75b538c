"""Alerts: which alerts fire and what they say (pure); delivery is the AlertmanagerClient's.

- SLO level: `CustomerImpact`, from the first evaluation with a severity until `recovery` after
  the incident ended. Its `severity` label is the incident's peak severity, so an alert never
  steps down; an escalation resolves the warning alert and fires the critical one.
- Per customer (perCustomer): `CustomerImpacted` with `customer` and `tier`, for the worst
  `impact.topCustomers` impacted customers; a customer no longer impacted keeps its alert for
  `recovery` (record `expires`), so alerts do not flap.
- Every evaluation re-sends each firing alert with endsAt = now + 4 x interval (also while the
  data cannot be trusted: an alert must not expire because Prometheus is down); a resolved alert is
  sent once with endsAt = now (the client retries it until delivered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from patron.actions.alertmanager import Alert
from patron.actions.plan import Key, Plan, Situation, Step, apply, at, hold, key_of, merge, revert, skip
from patron.api.durations import parse_duration
from patron.api.models import CustomerSLOSpec, Severity
from patron.api.status import ActionRecord, AlertName
from patron.impact.assess import NO_TIER, TierIndex
from patron.impact.queries import series_selectors
from patron.status import timestamp

SLO_ALERT: AlertName = "CustomerImpact"
CUSTOMER_ALERT: AlertName = "CustomerImpacted"
# impacted_customers names at most this many customers, then "(+N more)".
MAX_NAMED = 50


def alert_record(alertname: AlertName, severity: Severity, **fields: Any) -> ActionRecord:
    """An Alert record: its target names the alert and its severity label, e.g.
    CustomerImpact{severity="critical"} (typed in alertname and severity)."""
    target = f'{alertname}{{severity="{severity}"}}'
    return ActionRecord(type="Alert", target=target, alertname=alertname, severity=severity, **fields)


def _name(record: ActionRecord) -> tuple[str, str]:
    return str(record.alertname), str(record.severity)


def error_ratio_query(spec: CustomerSLOSpec, customer: str | None = None) -> str:
    """errorRatio per customer over S (DESIGN.md), optionally for one customer (escaped)."""
    total, bad, bad_is_good = series_selectors(spec)
    label = spec.customer_label
    if customer is not None:
        total, bad = total.with_matcher(label, "=", customer), bad.with_matcher(label, "=", customer)
    window = spec.first_window.short
    ratio = f"sum by ({label}) (rate({bad.render()}[{window}])) / sum by ({label}) (rate({total.render()}[{window}]))"
    return f"1 - {ratio}" if bad_is_good else ratio


def graph_url(prometheus_url: str, query: str) -> str:
    return f"{prometheus_url.rstrip('/')}/graph?" + urlencode({"g0.expr": query, "g0.tab": "0", "g0.range_input": "1h"})


def plan(sit: Situation, status: Mapping[str, Any], prometheus_url: str, can_send: bool) -> Plan:
    spec = sit.spec.actions.alert
    desired = _desired(sit)
    steps: dict[Key, Step] = {}
    for record in sit.of_type("Alert", "Active", "Skipped", "Reverting"):
        key = key_of(record)
        want = desired.get(key)
        if record.state == "Reverting":
            name, severity = _name(record)
            steps[key] = revert(sit, record, record.detail, f"Alert {name} ({severity}): resolved")
        elif want is not None and record.state == "Active":
            del desired[key]
            if record.expires != want.expires:
                steps[key] = hold(record, expires=want.expires)
        elif want is not None:
            continue  # a Skipped decision: decided again below
        elif spec is not None and not sit.fresh and not sit.releasing:
            continue  # the data cannot be trusted: hold (and keep re-sending)
        elif _lingers(sit, record):
            if record.expires is None:
                recovery = timedelta(seconds=parse_duration(sit.spec.recovery))
                steps[key] = hold(record, expires=timestamp(sit.now + recovery))
        else:
            name, severity = _name(record)
            who = f" customer {record.customer}" if record.customer else ""
            steps[key] = revert(sit, record, "resolved", f"Alert {name} ({severity}){who}: resolved")
    for key, record in desired.items():
        name, severity = _name(record)
        who = f" customer {record.customer}" if record.customer else ""
        if can_send:
            steps[key] = apply(sit, record, f"Alert {name} ({severity}){who}: firing")
        else:
            reason = "no Alertmanager configured: run patron with --alertmanager-url"
            steps[key] = skip(
                sit, record.model_copy(update={"state": "Skipped"}), reason, f"Alert {name}{who}: {reason}"
            )
    effects: tuple[Alert, ...] = ()
    if can_send and not sit.dry_run:
        effects = _payloads(sit, tuple(steps.values()), status, prometheus_url)
    return Plan(tuple(steps.values()), effects)


def _desired(sit: Situation) -> dict[Key, ActionRecord]:
    """The alerts that should fire now, as new records."""
    spec = sit.spec.actions.alert
    incident = sit.incident or {}
    peak = str(incident.get("peakSeverity", "none"))
    if spec is None or sit.assessment is None or not incident or sit.recovered or peak not in ("warning", "critical"):
        return {}
    severity: Severity = "critical" if peak == "critical" else "warning"
    release = sit.release_at
    slo = alert_record(
        SLO_ALERT,
        severity,
        state="Active",
        since=sit.stamp(),
        detail=f"{peak}: customer impact on {sit.spec.service}",
        expires=timestamp(release) if release else None,
    )
    out: dict[Key, ActionRecord] = {key_of(slo): slo}
    if spec.per_customer and sit.incident_open_since is not None:
        for c in sit.assessment.impacted[: sit.spec.impact.top_customers]:
            record = alert_record(
                CUSTOMER_ALERT,
                severity,
                customer=c.customer,
                state="Active",
                since=sit.stamp(),
                detail=f"{peak}: customer {c.customer} (tier {c.tier}) impacted",
            )
            out[key_of(record)] = record
    return out


def _lingers(sit: Situation, record: ActionRecord) -> bool:
    """A per-customer alert whose customer is no longer impacted, within `recovery` of that."""
    if record.state != "Active" or record.customer is None or sit.spec.actions.alert is None:
        return False
    if not sit.spec.actions.alert.per_customer or sit.releasing or not sit.fresh or sit.recovered:
        return False
    if record.severity != str((sit.incident or {}).get("peakSeverity")):
        return False
    expires = at(record.expires)
    return expires is None or sit.now < expires


def _payloads(
    sit: Situation, steps: Sequence[Step], status: Mapping[str, Any], prometheus_url: str
) -> tuple[Alert, ...]:
    """Every firing alert (endsAt = now + 4 x interval) and every alert resolved now (endsAt = now)."""
    ends = sit.now + timedelta(seconds=4 * parse_duration(sit.spec.interval))
    firing = [r for r in merge(sit, steps) if r.type == "Alert" and r.state == "Active"]
    resolved = [before for s in steps if s.verb == "revert" and (before := sit.previous(s.key)) is not None]
    return tuple(
        [build(sit, r, status, prometheus_url, ends) for r in firing]
        + [build(sit, r, status, prometheus_url, sit.now, resolved=True) for r in resolved]
    )


def build(
    sit: Situation,
    record: ActionRecord,
    status: Mapping[str, Any],
    prometheus_url: str,
    ends_at: datetime,
    resolved: bool = False,
) -> Alert:
    """The Alertmanager alert for a record: labels identify it, annotations describe the impact."""
    spec = sit.spec
    name, severity = _name(record)
    labels = {
        **(spec.actions.alert.labels if spec.actions.alert else {}),
        "alertname": name,
        "namespace": sit.namespace,
        "customerslo": sit.name,
        "service": spec.service,
        "severity": severity,
    }
    annotations = (
        _slo_annotations(sit, status) if record.customer is None else _customer_annotations(sit, record, status)
    )
    if record.customer is not None:
        tier = TierIndex(spec.customers.tiers)(record.customer)
        labels |= {"customer": record.customer, "tier": tier.name if tier else NO_TIER}
    if spec.actions.alert and spec.actions.alert.runbook_url:
        annotations["runbook_url"] = spec.actions.alert.runbook_url
    return Alert(
        labels=labels,
        annotations=annotations,
        starts_at=at(record.since) or sit.now,
        ends_at=ends_at,
        generator_url=graph_url(prometheus_url, error_ratio_query(spec, record.customer)),
        resolved=resolved,
    )


def _data_note(status: Mapping[str, Any]) -> str:
    ready: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("status") == "False":
        return f" Evaluation failing ({ready.get('reason')}: {ready.get('message')}); figures are the last known."
    return ""


def _slo_annotations(sit: Situation, status: Mapping[str, Any]) -> dict[str, str]:
    impacted = [str(i.get("customer")) for i in status.get("impacted") or []]
    count = int(status.get("impactedCustomers") or 0)
    names = ", ".join(impacted[:MAX_NAMED])
    if count > min(len(impacted), MAX_NAMED):
        names += f", ... (+{count - min(len(impacted), MAX_NAMED)} more)"
    incident = sit.incident or {}
    active = int(status.get("activeCustomers") or 0)
    summary = f"{sit.spec.service}: {count} of {active} active customers impacted ({status.get('severity', 'none')})"
    description = (
        f"{count} of {active} active customers impacted ({float(status.get('impactedFraction') or 0):.1%}), "
        f"weighted {float(status.get('weightedImpact') or 0):.0%}; "
        f"lost {int(status.get('lostCustomers') or 0)}, storming {int(status.get('stormingCustomers') or 0)}. "
        f"Incident since {incident.get('started')}, peak {incident.get('peakSeverity')}, "
        f"{int(incident.get('customersAffected') or 0)} customers affected."
    )
    if incident.get("ended"):
        description += f" Impact ended {incident['ended']}; resolves at {sit.release_at and timestamp(sit.release_at)}."
    return {
        "summary": summary,
        "description": description + _data_note(status),
        "impacted_customers": names,
    }


def _customer_annotations(sit: Situation, record: ActionRecord, status: Mapping[str, Any]) -> dict[str, str]:
    entry = next((i for i in status.get("impacted") or [] if i.get("customer") == record.customer), None)
    if entry is None:
        description = f"No longer impacted; the alert resolves at {record.expires or 'the end of recovery'}."
    else:
        description = (
            f"error ratio {float(entry['errorRatio']):.2%}, burn rate {float(entry['burnRate']):.1f}, "
            f"budget remaining {float(entry['budgetRemaining']):.1%}, {float(entry['requestRate']):.3g} req/s"
            + ("; gave up (lost)" if entry.get("lost") else "")
            + ("; retry storm" if entry.get("storming") else "")
            + f"; impacted since {entry.get('since')}."
        )
    return {
        "summary": f"{sit.spec.service}: customer {record.customer} impacted",
        "description": description + _data_note(status),
    }
