"""The CustomerSLO status as models: the CRD's status schema and the shape `patron report` reads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from patron.api.models import Model


class Condition(Model):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class ImpactedCustomer(Model):
    """One impacted customer; ratios over the short window S, budget over spec.window."""

    customer: str
    tier: str
    error_ratio: float
    burn_rate: float
    budget_remaining: float
    request_rate: float
    since: str
    lost: bool = False
    storming: bool = False


class ActionRecord(Model):
    """An action Patron holds (state Active/Skipped) or recently reverted (Reverted)."""

    type: Literal["Alert", "Throttle", "Scale", "Rollback"]
    target: str
    customer: str | None = None
    state: Literal["Active", "Skipped", "Reverted"]
    since: str
    detail: str = ""
    original: str | None = Field(default=None, description="What to restore on revert (e.g. replicas).")
    expires: str | None = None
    revision: str | None = None


class Incident(Model):
    """The current or last incident: from the first evaluation with a severity to the first without."""

    started: str
    ended: str | None = None
    peak_impacted_customers: int = 0
    customers_affected: int = 0
    peak_severity: str = "none"
    affected: list[str] = Field(default_factory=list, description="Customers impacted during the incident.")
    lost: list[str] = Field(default_factory=list)
    storming: list[str] = Field(default_factory=list)


class CustomerSLOStatus(Model):
    """What Patron measured and holds; `kubectl get/describe/wait` read it."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    severity: Literal["none", "warning", "critical"] | None = None
    active_customers: int | None = None
    impacted_customers: int | None = None
    impacted_fraction: float | None = None
    weighted_impact: float | None = None
    lost_customers: int | None = None
    storming_customers: int | None = None
    last_evaluation_time: str | None = None
    data_age_seconds: int | None = Field(
        default=None,
        description="Age of the newest sample at lastEvaluationTime; like lastEvaluationTime, a change "
        "in it alone is not written but with the heartbeat.",
    )
    impacted: list[ImpactedCustomer] = Field(default_factory=list)
    actions: list[ActionRecord] = Field(default_factory=list)
    incident: Incident | None = None
