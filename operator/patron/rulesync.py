"""The PrometheusRule Patron owns for a CustomerSLO (`--manage-prometheus-rules`).

`patron-<name>` in the CustomerSLO's namespace holds exactly what `patron rules -o prometheusrule`
prints (patron.impact.rules.prometheus_rule, one function for both), labelled with the operator's
--prometheus-rule-label labels and spec.recordingRules.labels, annotated `patron.dev/owner:
<ns>/<name>`, with a controller ownerReference to the CustomerSLO: the garbage collector deletes it
with the CustomerSLO. It is written only when it differs from what it should be (a merge patch
guarded by its resourceVersion), and deleted when spec.recordingRules is disabled. A PrometheusRule
of that name that this CustomerSLO does not own (no controller ownerReference with its uid) is
never touched.

The condition RecordingRules says how it stands; it is there while spec.recordingRules is enabled,
or while a rule of a disabled one still has to go:

- True, Managed: the PrometheusRule is in step with the spec;
- False, NotManaged: the operator does not manage PrometheusRules (flag off, or the Prometheus
  Operator's CRD is not served): the user loads `patron rules` output;
- False, NotOwned: a PrometheusRule of that name belongs to someone else: left untouched;
- False, Forbidden / Failed: a request was refused (RBAC) or failed; retried next evaluation.

`desired` and `decide` are pure; `sync` observes and carries out through the K8s adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from patron import metrics
from patron.api.models import API_GROUP, API_VERSION, KIND, OWNER_ANNOTATION, CustomerSLOSpec
from patron.config import OperatorConfig
from patron.impact.rules import prometheus_rule, rule_name
from patron.kube import ApiError, K8s, Served
from patron.status import merge_patch, set_condition

CONDITION = "RecordingRules"
KIND_NAME: Literal["PrometheusRule"] = "PrometheusRule"
LOAD_YOURSELF = "load the output of `patron rules -f <file>` (-o prometheusrule for the Prometheus Operator) yourself"
FLAG_OFF = f"this operator does not manage PrometheusRules (--manage-prometheus-rules is off): {LOAD_YOURSELF}"
NOT_SERVED = f"the Prometheus Operator's PrometheusRule CRD (monitoring.coreos.com/v1) is not served: {LOAD_YOURSELF}"

Verb = Literal["create", "update", "delete", "none", "conflict"]
# (status, reason, message) of the RecordingRules condition; None: no condition.
Report = tuple[str, str, str] | None


@dataclass(frozen=True)
class Owner:
    """The CustomerSLO a PrometheusRule belongs to."""

    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
        }

    def owns(self, obj: Mapping[str, Any]) -> bool:
        """`obj` has a controller ownerReference to this CustomerSLO (its uid: not a namesake)."""
        refs = (obj.get("metadata") or {}).get("ownerReferences") or []
        return any(r.get("uid") == self.uid and r.get("controller") is True for r in refs)


def desired(owner: Owner, spec: CustomerSLOSpec, labels: Mapping[str, str]) -> dict[str, Any]:
    """The PrometheusRule as it should be: `patron rules -o prometheusrule`'s, owned."""
    rule = prometheus_rule(spec, owner.namespace, owner.name, labels)
    rule["metadata"]["annotations"] = {OWNER_ANNOTATION: owner.key}
    rule["metadata"]["ownerReferences"] = [owner.reference()]
    return rule


@dataclass(frozen=True)
class Step:
    """What to do: create `body`, update with the merge patch `body`, delete while the object still
    has the preconditions `body`, nothing, or nothing because the object is someone else's."""

    verb: Verb
    name: str
    body: dict[str, Any] | None = None


def update_patch(want: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch turning `current` into `want`: exactly its labels, its owner annotation (other
    annotations stay) and its spec; guarded by current's resourceVersion. {} when in step."""
    meta, want_meta = current.get("metadata") or {}, want["metadata"]
    patch: dict[str, Any] = {}
    labels = merge_patch(meta.get("labels") or {}, want_meta["labels"])
    owner = want_meta["annotations"][OWNER_ANNOTATION]
    spec = merge_patch(current.get("spec") or {}, want["spec"])
    if labels:
        patch.setdefault("metadata", {})["labels"] = labels
    if (meta.get("annotations") or {}).get(OWNER_ANNOTATION) != owner:
        patch.setdefault("metadata", {})["annotations"] = {OWNER_ANNOTATION: owner}
    if spec:
        patch["spec"] = spec
    if patch:
        patch.setdefault("metadata", {})["resourceVersion"] = meta.get("resourceVersion")
    return patch


def decide(want: Mapping[str, Any] | None, current: Mapping[str, Any] | None, owner: Owner) -> Step:
    """`want` None: the rule should not exist (spec.recordingRules disabled)."""
    name = rule_name(owner.name)
    if current is None:
        return Step("create", name, dict(want)) if want is not None else Step("none", name)
    if not owner.owns(current):
        return Step("conflict", name) if want is not None else Step("none", name)
    if want is None:
        meta = current["metadata"]
        return Step("delete", name, {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]})
    patch = update_patch(want, current)
    return Step("update", name, patch) if patch else Step("none", name)


def reported(step: Step, enabled: bool) -> Report:
    """The condition once `step` is done."""
    if step.verb == "conflict":
        return (
            "False",
            "NotOwned",
            f"PrometheusRule {step.name} exists and is not owned by this CustomerSLO: Patron leaves it untouched and "
            "does not manage this CustomerSLO's rules (delete or rename it, and Patron creates its own)",
        )
    if not enabled:
        return None
    return "True", "Managed", f"PrometheusRule {step.name} holds the recording rules, in step with the spec"


# The RBAC verb of each step's request.
REQUEST_VERB: dict[Verb, str] = {"create": "create", "update": "patch", "delete": "delete"}


def failure(verb: str, name: str, err: Exception) -> Report:
    """A refused or failed request (`verb`: its RBAC verb); the message names the object and the
    failure's kind, nothing that varies from one try to the next."""
    if isinstance(err, ApiError) and err.status == 403:
        return (
            "False",
            "Forbidden",
            f"the operator may not {verb} PrometheusRule {name} (HTTP 403 Forbidden): it needs get, create, patch "
            "and delete on prometheusrules.monitoring.coreos.com (chart value recordingRules.managePrometheusRules)",
        )
    if isinstance(err, ApiError):
        what = f"HTTP {err.status} {err.reason}" if err.target == f"{KIND_NAME}/{name}" else err.kind
    else:
        what = f"{type(err).__name__}: {err}"
    return "False", "Failed", f"{verb} PrometheusRule {name} failed: {what}; retried next evaluation"


def with_report(status: Mapping[str, Any], report: Report, generation: int | None, now: datetime) -> dict[str, Any]:
    """`status` with the RecordingRules condition set, or removed (report None)."""
    out = dict(status)
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != CONDITION]
    if report is not None:
        conditions = set_condition(status.get("conditions") or [], CONDITION, *report, generation, now)
    out["conditions"] = conditions
    return out


async def sync(
    k8s: K8s,
    served: Served,
    config: OperatorConfig,
    obj: Mapping[str, Any],
    spec: CustomerSLOSpec,
    status: Mapping[str, Any],
    now: datetime,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> dict[str, Any]:
    """Bring the CustomerSLO's PrometheusRule in step; the status with the RecordingRules condition.
    Nothing is asked of the API server for a CustomerSLO without recording rules and without the
    condition (a disabled one whose rule is gone)."""
    enabled = spec.recording_rules.enabled
    meta = obj["metadata"]
    if not enabled and not any(c.get("type") == CONDITION for c in status.get("conditions") or []):
        return dict(status)
    report: Report = None
    if config.manage_prometheus_rules:
        owner = Owner(meta["namespace"], meta["name"], meta["uid"])
        want = desired(owner, spec, dict(config.prometheus_rule_labels)) if enabled else None
        report = await _sync(k8s, served, owner, want, logger)
    elif enabled:
        report = ("False", "NotManaged", FLAG_OFF)
    return with_report(status, report, meta.get("generation"), now)


async def _sync(
    k8s: K8s,
    served: Served,
    owner: Owner,
    want: dict[str, Any] | None,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Report:
    name, verb = rule_name(owner.name), "get"
    try:
        if not await served():
            return ("False", "NotManaged", NOT_SERVED) if want is not None else None
        step = decide(want, await k8s.get(KIND_NAME, owner.namespace, name), owner)
        verb = REQUEST_VERB.get(step.verb, verb)
        if step.verb == "create" and step.body is not None:
            await k8s.create(KIND_NAME, owner.namespace, step.body)
        elif step.verb == "update" and step.body is not None:
            await k8s.merge_patch(KIND_NAME, owner.namespace, name, step.body)
        elif step.verb == "delete" and step.body is not None:
            await k8s.delete(KIND_NAME, owner.namespace, name, step.body)
    except Exception as err:  # refused (RBAC), failed, or unreachable: said on the condition, retried
        if isinstance(err, ApiError):
            if err.status == 404:  # e.g. the CRD went away since discovery
                served.forget()
            logger.warning("PrometheusRule %s: %s", name, err)
        else:
            metrics.ERRORS.labels(where="prometheusrule").inc()
            logger.exception("PrometheusRule %s: %s failed", name, verb)
        return failure(verb, name, err)
    return reported(step, want is not None)
