"""Patron's own Prometheus metrics (served by `patron run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVALUATIONS = Counter("patron_evaluations_total", "CustomerSLO evaluations by outcome (Ready reason).", ["outcome"])
EVALUATION_SECONDS = Histogram("patron_evaluation_duration_seconds", "Wall time of one evaluation.")
QUERIES = Counter("patron_prometheus_queries_total", "Prometheus queries by outcome.", ["outcome"])
QUERY_SECONDS = Histogram("patron_prometheus_query_duration_seconds", "Wall time of one Prometheus query.")
ACTIONS = Counter("patron_actions_total", "Actions decided, by kind and what happened.", ["action", "result"])
ERRORS = Counter("patron_errors_total", "Unexpected errors in handlers.", ["where"])
IMPACTED = Gauge("patron_impacted_customers", "Impacted customers per CustomerSLO.", ["namespace", "customerslo"])
LAST_EVALUATION = Gauge(
    "patron_last_evaluation_timestamp_seconds",
    "Unix time at which the CustomerSLO's last evaluation ended (whatever its outcome).",
    ["namespace", "customerslo"],
)
