"""`patron report`: the post-mortem of a CustomerSLO's current or last incident.

`build_report` is pure: the CustomerSLO as stored, its Events, and what Prometheus holds about the
incident (per-customer counts, per-minute series, the operator's own metrics; each None when
unavailable) in; a plain dict out, rendered as a table, Markdown, JSON or CSV (the outreach list) here,
as HTML by patron.report_html. The CLI does the I/O.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from patron.api.durations import format_duration
from patron.api.models import CustomerSLOSpec
from patron.api.selectors import quote
from patron.impact.assess import Series, TierIndex, by_label, error_ratio
from patron.impact.queries import series_selectors
from patron.status import parse_timestamp, timestamp
from patron.text import printable, table

if TYPE_CHECKING:
    from patron.impact.prometheus import RangeSeries

ACTION_EVENTS = ("ActionApplied", "ActionReverted", "ActionSkipped")
INCIDENT_EVENTS = ("ImpactStarted", "ImpactResolved")
WORST = 10
# Range queries stay under Prometheus' 11,000 points per series: the step grows in whole minutes.
MAX_POINTS = 10_000
# Points across the HTML report's customers chart (the operator's own metrics).
CHART_POINTS = 500
OUTREACH_COLUMNS = (
    "customer",
    "tier",
    "first_failed_minute",
    "last_failed_minute",
    "failed_requests",
    "worst_error_ratio",
    "lost",
    "storming",
    "throttled",
)
# A spreadsheet reads a cell starting with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _increase_queries(spec: CustomerSLOSpec, seconds: int) -> dict[str, str]:
    total, bad, _ = series_selectors(spec)
    label, window = spec.customer_label, format_duration(seconds)
    return {
        "requests": f"sum by ({label}) (increase({total.render()}[{window}]))",
        "bad": f"sum by ({label}) (increase({bad.render()}[{window}]))",
    }


def incident_queries(spec: CustomerSLOSpec, started: datetime, ended: datetime) -> dict[str, str]:
    """Requests and failures per customer over [started, ended], evaluated at `ended`."""
    return _increase_queries(spec, max(60, int((ended - started).total_seconds())))


def range_step(started: datetime, ended: datetime) -> int:
    """Seconds between points of the incident's range queries: 60, or whole minutes keeping <= MAX_POINTS."""
    seconds = max(0.0, (ended - started).total_seconds())
    return 60 * max(1, math.ceil(seconds / MAX_POINTS / 60))


def chart_step(started: datetime, ended: datetime) -> int:
    """Seconds between points of the customers chart: about CHART_POINTS points, at least one a second."""
    return max(1, math.ceil((ended - started).total_seconds() / CHART_POINTS))


def minute_queries(spec: CustomerSLOSpec, step: int) -> dict[str, str]:
    """Requests and failures per customer in each `step` (range queries; one per kind, whatever the customers)."""
    return _increase_queries(spec, step)


def operator_query(namespace: str, name: str) -> str:
    """Active and impacted customers of one CustomerSLO as the operator exported them (patron.metrics)."""
    return (
        f"max by (state) (patron_customerslo_customers{{namespace={quote(namespace)}, "
        f'customerslo={quote(name)}, state=~"active|impacted"}})'
    )


@dataclass(frozen=True)
class IncidentData:
    """What Prometheus holds about the incident; each part None when it could not be read."""

    minutes: Mapping[str, RangeSeries] | None = None  # minute_queries over the incident
    customers: RangeSeries | None = None  # operator_query over the incident


def build_report(
    obj: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    counts: Mapping[str, Series] | None,
    spec: CustomerSLOSpec,
    data: IncidentData | None = None,
) -> dict[str, Any]:
    """The report's content; `counts` holds the results of incident_queries, or None if unavailable.

    `data` adds the per-minute series (outreach list) and the operator's own customer counts (chart).
    """
    data = data or IncidentData()
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
    failed = {c["customer"]: c["failedRequests"] for c in customers}
    outreach = _outreach(spec, incident, status, failed if counts is not None else None, data.minutes)
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
        "actionsHeld": [a for a in _records(status) if a.get("state") == "Active"],
        "outreach": outreach,
        "customersOverTime": _customers_over_time(data.customers),
    }
    return report


def _records(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """status.actions as written by any Patron version (or by hand): only the records that are mappings."""
    actions = status.get("actions")
    return [a for a in actions if isinstance(a, Mapping)] if isinstance(actions, list) else []


def _names(value: object) -> set[str]:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


def _throttled(status: Mapping[str, Any], started: str) -> set[str]:
    """Customers Patron throttled during the incident: Throttle records held now or begun since `started`."""
    out = set()
    for a in _records(status):
        customer, state, since = a.get("customer"), a.get("state"), str(a.get("since") or "")
        held = state in ("Active", "Reverting") or (state != "Skipped" and since[:19] >= started[:19])
        if a.get("type") == "Throttle" and isinstance(customer, str) and held:
            out.add(customer)
    return out


def _per_customer(series: RangeSeries, label: str) -> dict[str, dict[float, float]]:
    return {labels.get(label, ""): dict(points) for labels, points in series}


def _outreach(
    spec: CustomerSLOSpec,
    incident: Mapping[str, Any],
    status: Mapping[str, Any],
    failed: Mapping[str, int] | None,
    minutes: Mapping[str, RangeSeries] | None,
) -> list[dict[str, Any]]:
    """One row per affected customer, sorted by tier weight, then failed requests (both descending).

    A minute is failed when its failures > 0; its time is the start of the minute. worstErrorRatio is
    the highest per-minute failures / requests. Unknown (no Prometheus) stays None, never 0.
    """
    tiers = TierIndex(spec.customers.tiers)
    _, _, bad_is_good = series_selectors(spec)
    label = spec.customer_label
    requests = _per_customer(minutes.get("requests", []), label) if minutes is not None else {}
    bad = _per_customer(minutes.get("bad", []), label) if minutes is not None else {}
    lost, storming = _names(incident.get("lost")), _names(incident.get("storming"))
    throttled = _throttled(status, str(incident.get("started") or ""))
    step = minutes_step(minutes) if minutes is not None else 60
    rows = []
    for name in sorted(_names(incident.get("affected"))):
        tier = tiers(name)
        row: dict[str, Any] = {
            "customer": name,
            "tier": tier.name if tier else "none",
            "weight": tier.weight if tier else 1.0,
            "firstFailedMinute": None,
            "lastFailedMinute": None,
            "failedRequests": None if failed is None else failed.get(name, 0),
            "worstErrorRatio": None,
            "lost": name in lost,
            "storming": name in storming,
            "throttled": name in throttled,
        }
        if minutes is not None:
            totals, bads = requests.get(name, {}), bad.get(name, {})
            bad_minutes = []
            worst = 0.0
            for t, total in sorted(totals.items()):
                ratio = error_ratio(bads.get(t, 0.0), total, bad_is_good) if total > 0 else 0.0
                if ratio * total >= 0.5:  # at least one failed request (increase() extrapolates)
                    bad_minutes.append(t)
                    worst = max(worst, ratio)
            if bad_minutes:
                row["firstFailedMinute"] = _minute(bad_minutes[0] - step)
                row["lastFailedMinute"] = _minute(bad_minutes[-1] - step)
            row["worstErrorRatio"] = round(worst, 4)
        rows.append(row)
    rows.sort(key=lambda r: (-r["weight"], -(r["failedRequests"] or 0), r["customer"]))
    return rows


def minutes_step(minutes: Mapping[str, RangeSeries]) -> int:
    """The step of minute_queries' results (the gap between their first two points); 60 when unknown."""
    for _, points in minutes.get("requests", []):
        if len(points) > 1:
            return int(points[1][0] - points[0][0])
    return 60


def _minute(unix: float) -> str:
    return timestamp(datetime.fromtimestamp(unix, UTC))


def _customers_over_time(series: RangeSeries | None) -> dict[str, list[list[float]]] | None:
    """{state: [[unix time, customers], ...]} for active and impacted; None when Prometheus had none."""
    if not series:
        return None
    out = {labels.get("state", ""): [[t, v] for t, v in points] for labels, points in series}
    return {state: out.get(state, []) for state in ("active", "impacted")}


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
    if output == "csv":
        return render_csv(report)
    md = output == "markdown"
    head = "## " if md else ""
    lines = [f"{head}Incident report: {report['customerSLO']} ({report['service']}, objective {report['objective']}%)"]
    inc = report.get("incident")
    if not inc:
        lines.append(f"No incident recorded. Severity now: {report['severityNow']}.")
        return "\n".join(printable(line) for line in lines) + "\n"
    facts = summary_facts(inc)
    lines += [f"- **{k}:** {v}" if md else f"{k + ':':<24}{v}" for k, v in facts]
    lines.append("")
    lines.append(f"{'### ' if md else ''}Worst-hit customers")
    if inc["failedRequestsByCustomer"] is None:
        lines.append("(Prometheus not reachable: failed requests per customer unknown)")
    else:
        lines += _table(WORST_HEADER, worst_rows(inc), md)
    lines.append("")
    lines.append(f"{'### ' if md else ''}Timeline")
    lines += _table(("TIME", "EVENT", "DETAIL"), [(r["time"], r["event"], r["message"]) for r in inc["timeline"]], md)
    return "\n".join(printable(line) for line in lines) + "\n"


def summary_facts(inc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The incident's summary as (label, value) pairs, the same in every format."""
    seconds = inc["durationSeconds"]
    dur = "ongoing" if seconds is None else f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
    return [
        ("Started", inc["started"]),
        ("Ended", inc["ended"] or "ongoing"),
        ("Duration", dur),
        ("Peak severity", str(inc["peakSeverity"])),
        ("Customers affected", str(inc["customersAffected"])),
        ("Peak impacted at once", str(inc["peakImpactedCustomers"])),
        ("Lost customers", ", ".join(inc["lostCustomers"]) or "none"),
        ("Storming customers", ", ".join(inc["stormingCustomers"]) or "none"),
    ]


WORST_HEADER = ("CUSTOMER", "TIER", "FAILED", "REQUESTS", "ERROR RATIO")


def worst_rows(inc: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    return [
        (c["customer"], c["tier"], str(c["failedRequests"]), str(c["requests"]), f"{c['errorRatio']:.2%}")
        for c in inc["worstCustomers"]
    ]


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


def spreadsheet_safe(cell: str) -> str:
    """`cell` with a leading apostrophe when a spreadsheet would read it as a formula (=, +, -, @, tab, CR)."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def render_csv(report: Mapping[str, Any]) -> str:
    """The outreach list (RFC 4180, every cell quoted); the header alone when there is no incident.

    Names are written as they are (commas, quotes and newlines survive csv quoting) except that a
    formula-like start gets an apostrophe (spreadsheet_safe); unknown numbers are empty cells.
    """
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(OUTREACH_COLUMNS)
    for row in (report.get("incident") or {}).get("outreach", []):
        writer.writerow(
            [
                spreadsheet_safe(row["customer"]),
                spreadsheet_safe(row["tier"]),
                row["firstFailedMinute"] or "",
                row["lastFailedMinute"] or "",
                "" if row["failedRequests"] is None else row["failedRequests"],
                "" if row["worstErrorRatio"] is None else f"{row['worstErrorRatio']:.4f}",
                str(row["lost"]).lower(),
                str(row["storming"]).lower(),
                str(row["throttled"]).lower(),
            ]
        )
    return out.getvalue()
