"""patron.metrics.observe / forget: per-CustomerSLO series set from a status, dropped on delete."""

from __future__ import annotations

from prometheus_client import REGISTRY

from patron import metrics
from patron.api.models import CustomerSLOSpec


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


STATUS = {
    "conditions": [{"type": "Ready", "status": "True", "reason": "Evaluated"}],
    "severity": "critical",
    "activeCustomers": 120,
    "impactedCustomers": 4,
    "lostCustomers": 1,
    "stormingCustomers": 2,
    "weightedImpact": 0.21,
    "incident": {"started": "2026-11-26T10:00:00Z", "ended": None},
    "actions": [
        {"type": "Throttle", "state": "Active", "customer": "a"},
        {"type": "Throttle", "state": "Reverting", "customer": "b"},
        {"type": "Throttle", "state": "Reverted", "customer": "c"},
        {"type": "Scale", "state": "Skipped"},
        {"type": "Alert", "state": "Active"},
        "garbage",
        {"type": "Bogus", "state": "Active"},
    ],
}


SPEC = CustomerSLOSpec.model_validate(
    {
        "service": "checkout",
        "objective": 99.5,
        "indicator": {"ratio": {"errors": 'req_total{code=~"5.."}', "total": "req_total"}},
    }
)


def test_observe_sets_every_series_and_forget_drops_them() -> None:
    slo = {"namespace": "shop", "customerslo": "checkout"}
    metrics.observe("shop", "checkout", STATUS, 0.25, SPEC)
    assert value("patron_customerslo_error_budget", **slo) == SPEC.error_budget == 1 - 99.5 / 100
    assert value("patron_customerslo_severity", **slo) == 2
    states = ("active", "impacted", "lost", "storming")
    assert [value("patron_customerslo_customers", **slo, state=s) for s in states] == [120, 4, 1, 2]
    assert value("patron_customerslo_weighted_impact", **slo) == 0.21
    assert value("patron_customerslo_incident_open", **slo) == 1
    held = {t: value("patron_customerslo_actions", **slo, type=t) for t in ("Alert", "Throttle", "Scale", "Rollback")}
    assert held == {"Alert": 1, "Throttle": 2, "Scale": 0, "Rollback": 0}
    assert value("patron_evaluation_seconds_count", **slo) == 1
    assert value("patron_evaluation_seconds_sum", **slo) == 0.25

    # A failed evaluation keeps the gauges (as the status does) and counts the failure by reason.
    failed = {**STATUS, "conditions": [{"type": "Ready", "status": "False", "reason": "NoData"}], "incident": None}
    metrics.observe("shop", "checkout", failed, 0.1)
    metrics.observe("shop", "checkout", failed, 0.1)
    assert value("patron_customerslo_evaluation_failures_total", **slo, reason="NoData") == 2
    assert value("patron_customerslo_severity", **slo) == 2 and value("patron_customerslo_incident_open", **slo) == 0
    assert value("patron_customerslo_error_budget", **slo) == SPEC.error_budget  # no spec: the last one's

    metrics.observe("shop", "other", STATUS, 0.1, SPEC)
    metrics.forget("shop", "checkout")
    text = "\n".join(f"{s.name}{s.labels}" for m in REGISTRY.collect() for s in m.samples)
    assert "'customerslo': 'checkout'" not in text
    assert value("patron_customerslo_severity", namespace="shop", customerslo="other") == 2
    assert value("patron_customerslo_error_budget", namespace="shop", customerslo="other") == SPEC.error_budget


def test_never_evaluated_leaves_gauges_unset() -> None:
    metrics.observe(
        "shop", "fresh", {"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}]}, 0.0
    )
    assert value("patron_customerslo_severity", namespace="shop", customerslo="fresh") is None
    assert value("patron_customerslo_error_budget", namespace="shop", customerslo="fresh") is None
    assert value("patron_customerslo_customers", namespace="shop", customerslo="fresh", state="active") is None
    assert (
        value(
            "patron_customerslo_evaluation_failures_total", namespace="shop", customerslo="fresh", reason="InvalidSpec"
        )
        == 1
    )
    metrics.forget("shop", "fresh")
