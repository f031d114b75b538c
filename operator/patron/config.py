"""Operator configuration: flags of `patron run`, each also an environment variable."""

from __future__ import annotations

from dataclasses import dataclass, field

from patron.impact.connection import Connection

# On delete, Patron tries to give back what it holds for this long (seconds) after the
# deletionTimestamp, then lets the CustomerSLO go with a ReleaseAbandoned Warning Event.
RELEASE_GIVE_UP = 600.0
# Evaluations running at once (--max-concurrent-evaluations): suits a small node (docs/operations.md);
# 8 kept 1,000 CustomerSLOs at interval 30s within the lag targets on 2 shared cores (docs/benchmarks.md).
MAX_CONCURRENT_EVALUATIONS = 8


@dataclass(frozen=True)
class OperatorConfig:
    prometheus_url: str
    alertmanager_urls: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    dry_run: bool = False  # operator-wide dry run, on top of each CustomerSLO's spec.dryRun
    metrics_port: int = 9464
    metrics_address: str = "127.0.0.1"
    prometheus_timeout: float = 10.0
    liveness_endpoint: str | None = None
    peering: str | None = None  # None: standalone (one replica); a name: Kopf peering for HA
    priority: int = 0  # Kopf peering priority; replicas must differ, or Kopf pauses them all
    release_give_up: float = RELEASE_GIVE_UP  # --release-give-up
    namespace_label: str | None = None  # tenancy: every selector gets <label>="<its CustomerSLO's namespace>"
    prometheus_connection: Connection = field(default_factory=Connection)
    alertmanager_connection: Connection = field(default_factory=lambda: Connection("--alertmanager"))
    max_concurrent_evaluations: int = MAX_CONCURRENT_EVALUATIONS
    # --manage-prometheus-rules: own a PrometheusRule per CustomerSLO with spec.recordingRules (patron.rulesync),
    # labelled with these (--prometheus-rule-label) and the spec's labels.
    manage_prometheus_rules: bool = False
    prometheus_rule_labels: tuple[tuple[str, str], ...] = ()


def split_list(values: list[str] | None) -> tuple[str, ...]:
    """Repeatable and/or comma-separated flag values, blanks dropped."""
    out: list[str] = []
    for value in values or []:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return tuple(out)
