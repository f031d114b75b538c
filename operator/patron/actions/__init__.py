"""Actions: what Patron does about customer impact. `act` is the one entry point from reconcile.

Integration seam (issue 4): `act` receives the outcome of the evaluation (status + events) and
returns it with `status.actions`, the ActionsActive condition and action Events added.
`spec` is None when the spec is invalid; `assessment` is None when the data could not be trusted:
then nothing new is started and nothing is reverted (actions are held where they are; firing alerts
are still re-sent so they do not expire).

One evaluation: observe the objects each configured (or held) kind needs, plan every kind (pure),
write the planned `status.actions` first when objects are about to change (so a crash between the
change and the status write cannot make a restart step twice or forget an original value), then
change the objects. A kind whose reads or writes fail keeps its records as they were.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from patron import metrics
from patron.actions import alert, rollback, scale, throttle
from patron.actions.alertmanager import AlertmanagerClient
from patron.actions.k8s import K8s, slo_path
from patron.actions.plan import (
    Plan,
    Situation,
    Step,
    actions_condition,
    dump_records,
    events,
    failed,
    merge,
    parse_records,
)
from patron.api.models import CustomerSLOSpec
from patron.api.status import ActionRecord
from patron.config import OperatorConfig
from patron.impact.assess import Assessment
from patron.kube import Kube
from patron.reconcile import Event, Outcome
from patron.status import set_condition

__all__ = ["ActionContext", "AlertmanagerClient", "act", "finish", "kind_names", "release"]


UNTRUSTED = "the data cannot be trusted: actions are held"


@dataclass(frozen=True)
class ActionContext:
    obj: dict[str, Any]  # the CustomerSLO as read at the start of this reconcile
    kube: Kube
    config: OperatorConfig
    alerts: Any  # the operator's Alertmanager client (set up at startup), or None
    now: datetime
    logger: logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class _Kind:
    name: str
    plan: Callable[[], Awaitable[Plan]]
    execute: Callable[[Sequence[Any]], Awaitable[None]]
    changes_objects: bool = True


async def act(
    context: ActionContext, spec: CustomerSLOSpec | None, assessment: Assessment | None, outcome: Outcome
) -> Outcome:
    records = parse_records(outcome.status.get("actions") or [])
    if spec is None:
        return _finish(context, outcome, records, (), ("the spec is invalid: actions are held",))
    sit = _situation(context, spec, assessment, outcome.status.get("incident"), records, releasing=False)
    result = await _run(context, sit, outcome.status)
    notes = [*result.notes, *(() if sit.fresh else (UNTRUSTED,))]
    return _finish(context, outcome, merge(sit, result.steps), events(result.steps), notes)


async def release(context: ActionContext) -> tuple[Event, ...]:
    """The CustomerSLO is being deleted: give back everything Patron holds (throttle entries,
    raised replicas), resolve its alerts. A paused or undone rollout stays as it is."""
    status = context.obj.get("status") or {}
    records = parse_records(status.get("actions") or [])
    if not any(r.state == "Active" for r in records):
        return ()
    spec = CustomerSLOSpec.from_body(context.obj.get("spec") or {})
    sit = _situation(context, spec, None, status.get("incident"), records, releasing=True)
    result = await _run(context, sit, status)
    failures = [s.message for s in result.steps if s.failure] + result.notes
    if failures:
        raise RuntimeError("; ".join(failures))
    return events(result.steps)


def _situation(
    context: ActionContext,
    spec: CustomerSLOSpec,
    assessment: Assessment | None,
    incident: Mapping[str, Any] | None,
    records: tuple[ActionRecord, ...],
    releasing: bool,
) -> Situation:
    meta = context.obj["metadata"]
    return Situation(
        now=context.now,
        namespace=meta["namespace"],
        name=meta["name"],
        spec=spec,
        records=records,
        assessment=assessment,
        incident=incident,
        dry_run=spec.dry_run or context.config.dry_run,
        releasing=releasing,
    )


def _kinds(context: ActionContext, sit: Situation, status: dict[str, Any]) -> list[_Kind]:
    k8s = K8s(context.kube.client)
    ns = sit.namespace
    client: AlertmanagerClient | None = context.alerts

    async def plan_alerts() -> Plan:
        return alert.plan(sit, status, context.config.prometheus_url, client is not None)

    async def send(alerts: Sequence[Any]) -> None:
        if client is not None:
            client.send(alerts)

    async def plan_throttle() -> Plan:
        return throttle.plan(sit, await throttle.observe(k8s, sit))

    async def plan_scale() -> Plan:
        return scale.plan(sit, await scale.observe(k8s, sit))

    async def plan_rollback() -> Plan:
        return rollback.plan(sit, await rollback.observe(k8s, sit))

    kinds = {
        "alert": _Kind("alert", plan_alerts, send, changes_objects=False),
        "throttle": _Kind("throttle", plan_throttle, lambda e: throttle.execute(k8s, ns, e)),
        "rollback": _Kind("rollback", plan_rollback, lambda e: rollback.execute(k8s, ns, e)),
        "scale": _Kind("scale", plan_scale, lambda e: scale.execute(k8s, ns, e)),
    }
    return [kinds[name] for name in kind_names(sit)]


def kind_names(sit: Situation) -> list[str]:
    """The kinds planned in this evaluation, in order: alerts always; another kind when it is
    configured or still holds records. A rollback goes before a scale step: it judges the
    Deployment as observed. (Shared with the offline planner of `patron replay`.)"""
    names = ["alert"]
    if sit.spec.actions.throttle or sit.of_type("Throttle", "Active", "Skipped"):
        names.append("throttle")
    if sit.spec.actions.rollback or sit.of_type("Rollback", "Active", "Skipped"):
        names.append("rollback")
    if sit.spec.actions.scale or sit.of_type("Scale", "Active", "Skipped"):
        names.append("scale")
    return names


async def _run(context: ActionContext, sit: Situation, status: dict[str, Any]) -> _Result:
    """Plan every kind, write the plan ahead of object changes, then carry it out."""
    result = _Result()
    plans: list[tuple[_Kind, Plan]] = []
    for kind in _kinds(context, sit, status):
        try:
            plans.append((kind, await kind.plan()))
        except Exception as err:
            result.notes.append(f"{kind.name}: reading its targets failed: {_error(err)}")
            _log_failure(context, kind.name, err)
    if any(kind.changes_objects and plan.effects for kind, plan in plans):
        ahead = merge(sit, [s for _, plan in plans for s in plan.steps])
        await K8s(context.kube.client).patch_status(slo_path(sit.namespace, sit.name), {"actions": dump_records(ahead)})
    for kind, plan in plans:
        try:
            await kind.execute(plan.effects)
        except Exception as err:
            result.steps.extend(failed(sit, plan.steps, _error(err)))
            _log_failure(context, kind.name, err)
            continue
        for step in plan.steps:
            if step.verb != "hold":
                metrics.ACTIONS.labels(action=kind.name, result=step.verb).inc()
        result.steps.extend(plan.steps)
    return result


@dataclass
class _Result:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # problems that hold a whole kind


def _log_failure(context: ActionContext, kind: str, err: Exception) -> None:
    metrics.ACTIONS.labels(action=kind, result="failed").inc()
    if isinstance(err, ApiException):
        context.logger.warning("%s action: %s", kind, _error(err))
    else:
        metrics.ERRORS.labels(where=f"action-{kind}").inc()
        context.logger.exception("%s action failed", kind)


def _error(err: Exception) -> str:
    """A short, stable description of a failure (for an API error: its status and the server's message)."""
    if not isinstance(err, ApiException):
        return f"{type(err).__name__}: {err}"
    try:
        message = json.loads(err.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"HTTP {err.status} {err.reason}" + (f": {message}" if message else "")


def _finish(
    context: ActionContext,
    outcome: Outcome,
    records: Sequence[ActionRecord],
    action_events: Sequence[Event],
    notes: Sequence[str],
) -> Outcome:
    return finish(outcome, records, action_events, notes, context.obj["metadata"].get("generation"), context.now)


def finish(
    outcome: Outcome,
    records: Sequence[ActionRecord],
    action_events: Sequence[Event],
    notes: Sequence[str],
    generation: int | None,
    now: datetime,
) -> Outcome:
    """The outcome with `status.actions`, the ActionsActive condition and the action Events (pure)."""
    status = dict(outcome.status)
    status["actions"] = dump_records(records)
    state, reason, message = actions_condition(records, notes)
    before: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "ActionsActive"), {})
    fresh_notes = [n for n in notes if n not in str(before.get("message", ""))]
    action_events = [*action_events, *(Event("ActionFailed", n, "Warning") for n in fresh_notes if "failed" in n)]
    status["conditions"] = set_condition(
        status.get("conditions") or [],
        "ActionsActive",
        state,
        reason,
        message,
        generation,
        now,
    )
    return Outcome(status, (*outcome.events, *action_events))
