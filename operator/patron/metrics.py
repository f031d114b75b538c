"""Patron's own Prometheus metrics (served by `patron run --metrics-port`).

Per-CustomerSLO series carry the labels `namespace` and `customerslo`, never a customer: their number
grows with CustomerSLOs, not with customers. `observe` sets them all from one evaluation's status;
`forget` drops them when the CustomerSLO is deleted. Names and labels: docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from patron.api.models import SEVERITY_ORDER, CustomerSLOSpec

EVALUATIONS = Counter("patron_evaluations_total", "CustomerSLO evaluations by outcome (Ready reason).", ["outcome"])
EVALUATION_SECONDS = Histogram("patron_evaluation_duration_seconds", "Wall time of one evaluation.")
QUERIES = Counter("patron_prometheus_queries_total", "Prometheus queries by outcome.", ["outcome"])
QUERY_SECONDS = Histogram("patron_prometheus_query_duration_seconds", "Wall time of one Prometheus query.")
ACTIONS = Counter("patron_actions_total", "Actions decided, by kind and what happened.", ["action", "result"])
ERRORS = Counter("patron_errors_total", "Unexpected errors in handlers.", ["where"])
EVALUATION_LAG = Histogram(
    "patron_evaluation_lag_seconds",
    "How late evaluations start: start - due time (the wait for a --max-concurrent-evaluations slot).",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
SCHEDULED = Gauge("patron_scheduled_customerslos", "CustomerSLOs this operator evaluates (0 on a standby peer).")
SLO = ["namespace", "customerslo"]
IMPACTED = Gauge("patron_impacted_customers", "Impacted customers per CustomerSLO.", SLO)
LAST_EVALUATION = Gauge(
    "patron_last_evaluation_timestamp_seconds",
    "Unix time at which the CustomerSLO's last evaluation ended (whatever its outcome).",
    SLO,
)
SEVERITY = Gauge("patron_customerslo_severity", "status.severity: 0 none, 1 warning, 2 critical.", SLO)
CUSTOMERS = Gauge(
    "patron_customerslo_customers",
    "status.activeCustomers, impactedCustomers, lostCustomers, stormingCustomers, by state.",
    [*SLO, "state"],
)
WEIGHTED_IMPACT = Gauge("patron_customerslo_weighted_impact", "status.weightedImpact (0 to 1).", SLO)
ERROR_BUDGET = Gauge(
    "patron_customerslo_error_budget",
    "1 - spec.objective/100, the allowed error ratio: a burn rate is an error ratio over it.",
    SLO,
)
INCIDENT_OPEN = Gauge("patron_customerslo_incident_open", "1 while status.incident has no end, else 0.", SLO)
HELD = Gauge(
    "patron_customerslo_actions",
    "Changes Patron holds (status.actions records Active or Reverting), by type.",
    [*SLO, "type"],
)
SLO_EVALUATION_SECONDS = Histogram(
    "patron_evaluation_seconds", "Wall time of one evaluation of a CustomerSLO, its actions included.", SLO
)
FAILURES = Counter(
    "patron_customerslo_evaluation_failures_total",
    "Evaluations that ended Ready=False, by reason (InvalidSpec, PrometheusUnavailable, NoData, ...).",
    [*SLO, "reason"],
)
STATES = {
    "active": "activeCustomers",
    "impacted": "impactedCustomers",
    "lost": "lostCustomers",
    "storming": "stormingCustomers",
}
ACTION_TYPES = ("Alert", "Throttle", "Scale", "Rollback")
PER_SLO = (
    IMPACTED,
    LAST_EVALUATION,
    SEVERITY,
    CUSTOMERS,
    WEIGHTED_IMPACT,
    INCIDENT_OPEN,
    ERROR_BUDGET,
    HELD,
    SLO_EVALUATION_SECONDS,
    FAILURES,
)


def observe(
    namespace: str, name: str, status: Mapping[str, Any], seconds: float, spec: CustomerSLOSpec | None = None
) -> None:
    """Set every per-CustomerSLO metric from the status one evaluation wrote, taking `seconds`, and
    the error budget from its `spec` (None: the spec did not parse).

    The gauges mirror the status: after a failed evaluation (Ready=False) they keep the last measured
    values, as the status does, and the failure is counted by its reason. A field the status lacks
    (never evaluated) leaves its gauge unset rather than 0; so does a spec that never parsed.
    """
    if spec is not None:
        ERROR_BUDGET.labels(namespace, name).set(spec.error_budget)
    SLO_EVALUATION_SECONDS.labels(namespace, name).observe(seconds)
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") == "False":
        FAILURES.labels(namespace, name, str(ready.get("reason"))).inc()
    if status.get("severity") in SEVERITY_ORDER:
        SEVERITY.labels(namespace, name).set(SEVERITY_ORDER[status["severity"]])
    for state, field in STATES.items():
        if isinstance(status.get(field), int | float):
            CUSTOMERS.labels(namespace, name, state).set(status[field])
    if isinstance(status.get("weightedImpact"), int | float):
        WEIGHTED_IMPACT.labels(namespace, name).set(status["weightedImpact"])
    incident = status.get("incident")
    INCIDENT_OPEN.labels(namespace, name).set(1 if isinstance(incident, Mapping) and not incident.get("ended") else 0)
    held = dict.fromkeys(ACTION_TYPES, 0)
    for record in status.get("actions") or []:
        if (
            isinstance(record, Mapping)
            and record.get("type") in held
            and record.get("state") in ("Active", "Reverting")
        ):
            held[record["type"]] += 1
    for type_, count in held.items():
        HELD.labels(namespace, name, type_).set(count)


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted CustomerSLO, so dashboards and alerts do not see it linger."""
    for metric in PER_SLO:
        metric.remove_by_labels({"namespace": namespace, "customerslo": name})
