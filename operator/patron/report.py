"""`patron report`: the post-mortem of a CustomerSLO's current or last incident.

`build_report` is pure: the CustomerSLO as stored, its Events, and the per-customer request counts
over the incident (from Prometheus, when reachable) in; a plain dict out, rendered as a table,
Markdown or JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from patron.api.durations import format_duration
from patron.api.models import CustomerSLOSpec
from patron.impact.assess import Series, TierIndex, by_label, error_ratio
from patron.impact.queries import series_selectors
from patron.status import parse_timestamp
from patron.text import printable, table

ACTION_EVENTS = ("ActionApplied", "ActionReverted", "ActionSkipped")
INCIDENT_EVENTS = ("ImpactStarted", "ImpactResolved")
WORST = 10


def incident_queries(spec: CustomerSLOSpec, started: datetime, ended: datetime) -> dict[str, str]:
    """Requests and failures per customer over [started, ended], evaluated at `ended`."""
    total, bad, _ = series_selectors(spec)
    seconds = max(60, int((ended - started).total_seconds()))
    label, window = spec.customer_label, format_duration(seconds)
    return {
        "requests": f"sum by ({label}) (increase({total.render()}[{window}]))",
        "bad": f"sum by ({label}) (increase({bad.render()}[{window}]))",
    }


def build_report(
    obj: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    counts: Mapping[str, Series] | None,
    spec: CustomerSLOSpec,
) -> dict[str, Any]:
    """The report's content; `counts` holds the results of incident_queries, or None if unavailable."""
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    incident = status.get("incident") or {}
    tiers = TierIndex(spec.customers.tiers)
    _, _, bad_is_good = series_selectors(spec)
    report: dict[str, Any] = {
        "customerSLO": f"{meta.get('namespace')}/{meta.get('name')}",
        "service": spec.service,
        "objective": spec.objective,
        "severityNow": status.get("severity", "unknown"),
        "incident": None,
    }
    if not incident:
        return report
    started = incident["started"]
    ended = incident.get("ended")
    duration = (parse_timestamp(ended) if ended else None, parse_timestamp(started))
    customers: list[dict[str, Any]] = []
    if counts is not None:
        label = spec.customer_label
        requests = by_label(counts.get("requests", ()), label)
        bad = by_label(counts.get("bad", ()), label)
        for name in incident.get("affected", []):
            total = requests.get(name, 0.0)
            ratio = error_ratio(bad.get(name, 0.0), total, bad_is_good)
            tier = tiers(name)
            customers.append(
                {
                    "customer": name,
                    "tier": tier.name if tier else "none",
                    "requests": round(total),
                    "failedRequests": round(total * ratio),
                    "errorRatio": round(ratio, 4),
                }
            )
        customers.sort(key=lambda c: (-c["failedRequests"], c["customer"]))
    report["incident"] = {
        "started": started,
        "ended": ended,
        "durationSeconds": int((duration[0] - duration[1]).total_seconds()) if duration[0] else None,
        "peakSeverity": incident.get("peakSeverity"),
        "customersAffected": incident.get("customersAffected", 0),
        "peakImpactedCustomers": incident.get("peakImpactedCustomers", 0),
        "worstCustomers": customers[:WORST],
        "failedRequestsByCustomer": None if counts is None else {c["customer"]: c["failedRequests"] for c in customers},
        "lostCustomers": incident.get("lost", []),
        "stormingCustomers": incident.get("storming", []),
        "timeline": _timeline(events, started),
        "actionsHeld": [a for a in status.get("actions") or [] if a.get("state") == "Active"],
    }
    return report


def _timeline(events: Sequence[Mapping[str, Any]], since: str) -> list[dict[str, Any]]:
    """Incident and action Events at or after the incident's start, oldest first."""
    rows = []
    for e in events:
        when = e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or ""
        if e.get("reason") in ACTION_EVENTS + INCIDENT_EVENTS and when and when[:19] >= since[:19]:
            rows.append({"time": when[:19] + "Z", "event": e["reason"], "message": e.get("message", "")})
    return sorted(rows, key=lambda r: r["time"])


def render(report: Mapping[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(report, ensure_ascii=False, indent=2)
    md = output == "markdown"
    head = "## " if md else ""
    lines = [f"{head}Incident report: {report['customerSLO']} ({report['service']}, objective {report['objective']}%)"]
    inc = report.get("incident")
    if not inc:
        lines.append(f"No incident recorded. Severity now: {report['severityNow']}.")
        return "\n".join(printable(line) for line in lines) + "\n"
    seconds = inc["durationSeconds"]
    dur = "ongoing" if seconds is None else f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
    facts = [
        ("Started", inc["started"]),
        ("Ended", inc["ended"] or "ongoing"),
        ("Duration", dur),
        ("Peak severity", inc["peakSeverity"]),
        ("Customers affected", str(inc["customersAffected"])),
        ("Peak impacted at once", str(inc["peakImpactedCustomers"])),
        ("Lost customers", ", ".join(inc["lostCustomers"]) or "none"),
        ("Storming customers", ", ".join(inc["stormingCustomers"]) or "none"),
    ]
    lines += [f"- **{k}:** {v}" if md else f"{k + ':':<24}{v}" for k, v in facts]
    lines.append("")
    lines.append(f"{'### ' if md else ''}Worst-hit customers")
    if inc["failedRequestsByCustomer"] is None:
        lines.append("(Prometheus not reachable: failed requests per customer unknown)")
    else:
        rows = [
            (c["customer"], c["tier"], str(c["failedRequests"]), str(c["requests"]), f"{c['errorRatio']:.2%}")
            for c in inc["worstCustomers"]
        ]
        lines += _table(("CUSTOMER", "TIER", "FAILED", "REQUESTS", "ERROR RATIO"), rows, md)
    lines.append("")
    lines.append(f"{'### ' if md else ''}Timeline")
    lines += _table(("TIME", "EVENT", "DETAIL"), [(r["time"], r["event"], r["message"]) for r in inc["timeline"]], md)
    return "\n".join(printable(line) for line in lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> list[str]:
    if markdown:
        esc = [[printable(cell).replace("|", "\\|") for cell in row] for row in rows]
        return [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in esc),
        ]
    if not rows:
        return ["(none)"]
    return table(header, rows)


def report_time(obj: Mapping[str, Any], now: datetime) -> tuple[datetime, datetime] | None:
    """[started, ended or now] of the incident on `obj`, or None."""
    incident = (obj.get("status") or {}).get("incident")
    if not incident:
        return None
    end = parse_timestamp(incident["ended"]) if incident.get("ended") else now
    return parse_timestamp(incident["started"]), end
