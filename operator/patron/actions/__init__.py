"""Actions: what Patron does about customer impact. `act` is the one entry point from reconcile.

Integration seam (issue 4): `act` receives the outcome of the evaluation (status + events) and
returns it with `status.actions`, the ActionsActive condition and action Events added.
`spec` is None when the spec is invalid; `assessment` is None when the data could not be trusted:
then nothing new is started and nothing Active is reverted (actions are held where they are;
firing alerts are still re-sent so they do not expire; a revert already under way is finished).

One evaluation: observe the objects each configured (or held) kind needs, plan every kind (pure),
write the planned `status.actions` first when objects are about to change (through the one
StatusWriter, so a crash between the change and the final status write cannot make a restart step
twice, forget an original value or lose a revert: a revert is written as Reverting), then change
the objects. A kind whose changes succeeded has its Reverting records made Reverted; a kind whose
reads or writes fail keeps its records as they were (a pending revert stays Reverting) and is
retried next evaluation, with one ActionFailed Event per failure kind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from patron import metrics
from patron.actions import alert, rollback, scale, throttle
from patron.actions.alertmanager import AlertmanagerClient
from patron.actions.plan import (
    OwnedElsewhere,
    Plan,
    Situation,
    Step,
    actions_condition,
    complete,
    dump_records,
    events,
    evictions,
    failed,
    merge_evicting,
    parse_records,
)
from patron.api.models import CustomerSLOSpec
from patron.api.status import ActionRecord
from patron.config import OperatorConfig
from patron.impact.assess import Assessment
from patron.kube import ApiError, K8s, StatusWriter
from patron.reconcile import Event, Outcome
from patron.status import parse_timestamp, set_condition

__all__ = [
    "ActionContext",
    "AlertmanagerClient",
    "Released",
    "act",
    "finish",
    "kind_names",
    "release",
]


UNTRUSTED = "the data cannot be trusted: actions are held"


@dataclass(frozen=True)
class ActionContext:
    obj: dict[str, Any]  # the CustomerSLO as read at the start of this reconcile
    k8s: K8s
    writer: StatusWriter  # the one way its status is written (write-ahead and final write)
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
    kept, evicted = merge_evicting(sit, result.steps)
    notes = [*result.notes, *(() if sit.fresh else (UNTRUSTED,))]
    return _finish(context, outcome, kept, (*events(result.steps), *evictions(evicted)), notes, result.conflicts)


@dataclass(frozen=True)
class Released:
    """What a release left: `done` when nothing is held any more (the finalizer may go)."""

    done: bool
    events: tuple[Event, ...]
    left: tuple[ActionRecord, ...]  # Active or Reverting records still held


async def release(context: ActionContext) -> Released:
    """The CustomerSLO is being deleted: give back everything Patron holds (throttle entries,
    raised replicas), resolve its alerts; the records are written (Reverting, then Reverted) through
    the StatusWriter, so a retry continues where this one stopped. A paused or undone rollout stays
    as it is."""
    status = context.writer.current
    records = parse_records(status.get("actions") or [])
    if not any(r.held for r in records):
        return Released(True, (), ())
    spec = CustomerSLOSpec.from_body(context.obj.get("spec") or {})
    sit = _situation(context, spec, None, status.get("incident"), records, releasing=True)
    result = await _run(context, sit, status)
    kept, evicted = merge_evicting(sit, result.steps)
    generation = context.obj["metadata"].get("generation")
    out = finish(
        Outcome(dict(status)), kept, (*events(result.steps), *evictions(evicted)), result.notes, generation, context.now
    )
    await context.writer.write(out.status)
    left = tuple(r for r in kept if r.held)
    return Released(not left and not result.notes, out.events, left)


def abandoned(context: ActionContext, left: Sequence[ActionRecord]) -> Event | None:
    """Past config.release_give_up (RELEASE_GIVE_UP, 10 minutes by default) after the
    deletionTimestamp: the ReleaseAbandoned Event naming what was left behind (None while there
    is still time)."""
    deleted = context.obj["metadata"].get("deletionTimestamp")
    give_up = timedelta(seconds=context.config.release_give_up)
    if deleted is None or context.now < parse_timestamp(deleted) + give_up:
        return None
    what = "; ".join(_held_text(r) for r in left) or "nothing recorded (the last attempt failed)"
    return Event("ReleaseAbandoned", f"gave up giving back after {give_up}; left behind: {what}", "Warning")


def _held_text(r: ActionRecord) -> str:
    """What a held record leaves behind, from its typed fields."""
    if r.type == "Throttle":
        return f"{throttle.place_of(r).at} entry for customer {r.customer} ({r.limit} req/s)"
    if r.type == "Scale":
        return f"{r.target} at {r.replicas} (original {r.original_replicas})"
    who = f" customer {r.customer}" if r.customer else ""
    return f"{r.type} {r.target}{who} ({r.state})"


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


def _kinds(context: ActionContext, sit: Situation, status: Mapping[str, Any]) -> list[_Kind]:
    k8s = context.k8s
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
    configured or still has records to decide about. A rollback goes before a scale step: it judges
    the Deployment as observed. (Shared with the offline planner of `patron replay`.)"""
    names = ["alert"]
    open_states = ("Active", "Skipped", "Reverting")
    if sit.spec.actions.throttle or sit.of_type("Throttle", *open_states):
        names.append("throttle")
    if sit.spec.actions.rollback or sit.of_type("Rollback", *open_states):
        names.append("rollback")
    if sit.spec.actions.scale or sit.of_type("Scale", *open_states):
        names.append("scale")
    return names


async def _run(context: ActionContext, sit: Situation, status: Mapping[str, Any]) -> _Result:
    """Plan every kind, write the plan ahead of object changes, then carry it out."""
    result = _Result()
    plans: list[tuple[_Kind, Plan]] = []
    for kind in _kinds(context, sit, status):
        try:
            plans.append((kind, await kind.plan()))
        except Exception as err:
            result.notes.append(f"{kind.name}: reading its targets failed: {_error(err)}")
            _log_failure(context, kind.name, err)
    for _, plan in plans:
        result.conflicts.extend(plan.conflicts)
        result.notes.extend(plan.notes)
    if any(kind.changes_objects and plan.effects for kind, plan in plans):
        ahead, _ = merge_evicting(sit, [s for _, plan in plans for s in plan.steps])
        await context.writer.write({**context.writer.current, "actions": dump_records(ahead)})
    for kind, plan in plans:
        try:
            await kind.execute(plan.effects)
        except Exception as err:
            result.steps.extend(failed(sit, plan.steps, _error(err)))
            result.notes.append(f"{kind.name}: failed: {_error(err)}")
            _log_failure(context, kind.name, err)
            continue
        for step in plan.steps:
            if step.verb != "hold":
                metrics.ACTIONS.labels(action=kind.name, result=step.verb).inc()
        result.steps.extend(complete(sit, plan.steps))
    return result


@dataclass
class _Result:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # problems that hold a whole kind
    conflicts: list[str] = field(default_factory=list)  # targets another CustomerSLO owns


def _log_failure(context: ActionContext, kind: str, err: Exception) -> None:
    metrics.ACTIONS.labels(action=kind, result="failed").inc()
    if isinstance(err, (ApiError, scale.OwnedElsewhere, OwnedElsewhere)):
        context.logger.warning("%s action: %s", kind, err)
    else:
        metrics.ERRORS.labels(where=f"action-{kind}").inc()
        context.logger.exception("%s action failed", kind)


def _error(err: Exception) -> str:
    """The failure kind, stable across retries (for an API error: the object, status and reason;
    the server's message varies and goes to the log)."""
    if isinstance(err, ApiError):
        return err.kind
    return f"{type(err).__name__}: {err}"


def _finish(
    context: ActionContext,
    outcome: Outcome,
    records: Sequence[ActionRecord],
    action_events: Sequence[Event],
    notes: Sequence[str],
    conflicts: Sequence[str] = (),
) -> Outcome:
    generation = context.obj["metadata"].get("generation")
    return finish(outcome, records, action_events, notes, generation, context.now, conflicts)


def _failure_events(notes: Sequence[str], before: str = "") -> tuple[Event, ...]:
    """One ActionFailed Warning per failure note not already in the previous ActionsActive message."""
    return tuple(Event("ActionFailed", n, "Warning") for n in notes if "failed" in n and n not in before)


def finish(
    outcome: Outcome,
    records: Sequence[ActionRecord],
    action_events: Sequence[Event],
    notes: Sequence[str],
    generation: int | None,
    now: datetime,
    conflicts: Sequence[str] = (),
) -> Outcome:
    """The outcome with `status.actions`, the ActionsActive condition and the action Events (pure).
    ActionFailed and Conflict Events are posted once: while the same failure or conflict stands
    (it is named in the ActionsActive message), it posts nothing new."""
    status = dict(outcome.status)
    status["actions"] = dump_records(records)
    state, reason, message = actions_condition(records, notes, conflicts)
    before: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "ActionsActive"), {})
    said = str(before.get("message", ""))
    action_events = [
        *action_events,
        *_failure_events(notes, said),
        *(Event("Conflict", c, "Warning") for c in conflicts if c not in said),
    ]
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
