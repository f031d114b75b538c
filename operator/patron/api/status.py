"""The CustomerSLO status as models: the CRD's status schema and the shape `patron report` reads."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from patron.api.models import OBJECT_NAME_PATTERN, Model, ObjectName, Severity


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


TargetKind = Literal["ConfigMap", "BackendTrafficPolicy", "Deployment", "HorizontalPodAutoscaler"]
ActionType = Literal["Alert", "Throttle", "Scale", "Rollback"]
ActionState = Literal["Active", "Skipped", "Reverting", "Reverted"]
AlertName = Literal["CustomerImpact", "CustomerImpacted"]
# The kinds each action type may name (paths are built only from a targetRef of these kinds).
TARGET_KINDS: dict[str, tuple[str, ...]] = {
    "Throttle": ("ConfigMap", "BackendTrafficPolicy"),
    "Scale": ("Deployment", "HorizontalPodAutoscaler"),
    "Rollback": ("Deployment",),
    "Alert": (),
}
_NAME = OBJECT_NAME_PATTERN.strip("^$")
# `<Kind>/<name>` (name a DNS-1123 subdomain) or `CustomerImpact{severity="warning"}` and the like.
TARGET_PATTERN = (
    rf"^((ConfigMap|BackendTrafficPolicy|Deployment|HorizontalPodAutoscaler)/{_NAME}"
    r'|(CustomerImpact|CustomerImpacted)\{severity="(warning|critical)"\})$'
)
ALERT_TARGET = r'(CustomerImpact|CustomerImpacted)\{severity="(warning|critical)"\}'
CONFIG_MAP_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


class TargetRef(Model):
    """The object an action changes, in the CustomerSLO's own namespace (there is no namespace field)."""

    kind: TargetKind
    name: ObjectName


class ActionRecord(Model):
    """An action Patron holds (Active), decided but did not do (Skipped), is giving back (Reverting:
    recorded before the change is attempted, until it succeeded) or gave back (Reverted).

    The held values are typed fields; `detail` is human text only and never parsed. v0.1 records
    (`original` plus the held value at the start of `detail`) are migrated when read."""

    type: ActionType
    target: str = Field(
        pattern=TARGET_PATTERN,
        max_length=len("HorizontalPodAutoscaler/") + 253,
        description="For people, and the record's key.",
    )
    target_ref: TargetRef | None = Field(default=None, description="The object changed (absent for alerts).")
    customer: str | None = None
    state: ActionState
    since: str
    detail: str = ""
    expires: str | None = None
    revision: str | None = None
    key: str | None = Field(
        default=None, pattern=CONFIG_MAP_KEY_PATTERN, max_length=253, description="Throttle into a ConfigMap: its key."
    )
    limit: int | None = Field(default=None, ge=1, description="Throttle: requests per second.")
    replicas: int | None = Field(default=None, ge=0, description="Scale: the value Patron holds.")
    original_replicas: int | None = Field(default=None, ge=0, description="Scale: the value to restore.")
    alertname: AlertName | None = None
    severity: Severity | None = None
    original: str | None = Field(default=None, description="v0.1 only: migrated to the typed fields when read.")

    @model_validator(mode="before")
    @classmethod
    def _migrate_v01(cls, data: Any) -> Any:
        """v0.1: Throttle `original` -> key, Scale `original` -> originalReplicas, the integer `detail`
        starts with -> limit / replicas; targetRef from `target`; alertname/severity from `target`."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        type_, target = out.get("type"), str(out.get("target") or "")
        original = out.pop("original", None)
        held = re.match(r"(\d+)\b", str(out.get("detail") or ""))
        if type_ == "Throttle":
            out.setdefault("key", original)
            if held and out.get("state") in ("Active", "Reverting"):
                out.setdefault("limit", int(held.group(1)))
        elif type_ == "Scale":
            if original is not None and str(original).isdigit():
                out.setdefault("originalReplicas", int(original))
            if held and out.get("state") in ("Active", "Reverting") and "originalReplicas" in out:
                out.setdefault("replicas", int(held.group(1)))
        alert = re.fullmatch(ALERT_TARGET, target)
        if type_ == "Alert" and alert:
            out.setdefault("alertname", alert.group(1))
            out.setdefault("severity", alert.group(2))
        if type_ != "Alert" and "targetRef" not in out and "target_ref" not in out and "/" in target:
            kind, name = target.split("/", 1)
            out["targetRef"] = {"kind": kind, "name": name}
        return {k: v for k, v in out.items() if v is not None}

    @model_validator(mode="after")
    def _consistent(self) -> ActionRecord:
        """targetRef agrees with `target` and is a kind the action type may change."""
        if self.type == "Alert":
            if self.target_ref is not None or self.target != f'{self.alertname}{{severity="{self.severity}"}}':
                raise ValueError("an Alert record has no targetRef and its target names its alertname and severity")
            return self
        ref = self.target_ref
        if ref is None or ref.kind not in TARGET_KINDS[self.type] or self.target != f"{ref.kind}/{ref.name}":
            raise ValueError(f"a {self.type} record needs targetRef of kind {TARGET_KINDS[self.type]} matching target")
        return self

    @property
    def held(self) -> bool:
        """Patron holds (or is still giving back) a change to the world."""
        return self.state in ("Active", "Reverting")


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
