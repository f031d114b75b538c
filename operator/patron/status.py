"""Status building: pure functions from an Assessment and the previous status to the next status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from patron.api.durations import parse_duration
from patron.api.models import SEVERITY_ORDER, CustomerSLOSpec
from patron.impact.assess import Assessment

# The incident keeps the names of affected customers so `customersAffected` is exact; past this
# many it stops adding names (the count is then a lower bound, and the report says so).
MAX_INCIDENT_NAMES = 1000

Status = dict[str, Any]


def timestamp(at: datetime) -> str:
    """RFC 3339, second precision, UTC: the format of metav1.Time."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime moves only when `status` changes."""
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now) if changed or old is None else old["lastTransitionTime"],
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    order = {"Ready": 0, "CustomerImpact": 1, "ActionsActive": 2}
    return sorted(out, key=lambda c: order.get(str(c.get("type")), 9))


def impact_message(a: Assessment) -> str:
    """E.g. '4 of 120 active customers impacted (3.3%), weighted 21%'."""
    msg = (
        f"{len(a.impacted)} of {a.active_count} active customers impacted "
        f"({a.impacted_fraction:.1%}), weighted {a.weighted_impact:.0%}"
    )
    if a.impacted:
        msg += "; worst: " + ", ".join(c.customer for c in a.impacted[:5])
    return msg


def impact_fields(spec: CustomerSLOSpec, a: Assessment, previous: Mapping[str, Any], now: datetime) -> Status:
    """The measured fields of status (what `patron evaluate` prints), `since` kept from `previous`."""
    since = {i.get("customer"): i.get("since") for i in previous.get("impacted") or []}
    listed = a.impacted[: spec.impact.top_customers]
    return {
        "severity": a.severity,
        "activeCustomers": a.active_count,
        "impactedCustomers": len(a.impacted),
        "impactedFraction": round(a.impacted_fraction, 4),
        "weightedImpact": round(a.weighted_impact, 4),
        "lostCustomers": len(a.lost),
        "stormingCustomers": len(a.storming),
        "lastEvaluationTime": timestamp(now),
        "dataAgeSeconds": round(a.data_age),
        "impacted": [
            {
                "customer": c.customer,
                "tier": c.tier,
                "errorRatio": round(c.error_ratio, 6),
                "burnRate": round(c.burn_rate, 3),
                "budgetRemaining": round(c.budget_remaining, 4),
                "requestRate": round(c.request_rate, 4),
                "since": since.get(c.customer) or timestamp(now),
                "lost": c.lost,
                "storming": c.storming,
            }
            for c in listed
        ],
    }


def next_incident(
    spec: CustomerSLOSpec, previous: Mapping[str, Any] | None, a: Assessment, now: datetime
) -> dict[str, Any] | None:
    """The incident after this assessment.

    An incident starts at the first evaluation with a severity and ends at the first without one.
    Impact that returns within `recovery` of the end reopens the same incident (no flapping incidents).
    """
    active = a.severity != "none"
    prev = dict(previous) if previous else None
    if prev and prev.get("ended"):
        reopen = active and now - parse_timestamp(prev["ended"]) < timedelta(seconds=parse_duration(spec.recovery))
        if not reopen:
            if not active:
                return prev
            prev = None
        else:
            prev.pop("ended", None)
    if prev is None:
        if not active:
            return None
        prev = {
            "started": timestamp(now),
            "peakImpactedCustomers": 0,
            "customersAffected": 0,
            "peakSeverity": "none",
            "affected": [],
            "lost": [],
            "storming": [],
        }
    if not active:
        prev["ended"] = timestamp(now)
        return prev
    prev["peakImpactedCustomers"] = max(int(prev.get("peakImpactedCustomers", 0)), len(a.impacted))
    if SEVERITY_ORDER[a.severity] > SEVERITY_ORDER.get(str(prev.get("peakSeverity", "none")), 0):
        prev["peakSeverity"] = a.severity
    for key, found in (("affected", a.impacted), ("lost", a.lost), ("storming", a.storming)):
        names = list(prev.get(key) or [])
        seen = set(names)
        names.extend(c.customer for c in found if c.customer not in seen and len(names) < MAX_INCIDENT_NAMES)
        prev[key] = names
    prev["customersAffected"] = max(int(prev.get("customersAffected", 0)), len(prev["affected"]))
    return prev


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch turning `old` into `new` (None deletes a key)."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before or key not in old:
            patch[key] = value
    return patch
