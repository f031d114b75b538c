"""What one evaluation changes: the next status and the Events to post. Pure; handlers do the I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from patron.api.models import CustomerSLOSpec
from patron.api.tenancy import TenancyError, enforce_namespace_label
from patron.impact.assess import Assessment, DataProblem
from patron.status import impact_fields, impact_message, next_incident, set_condition

# Status fields that change every evaluation without meaning anything changed: a status that
# differs only in these is not written (but for the heartbeat), and no message carries them.
VOLATILE = ("lastEvaluationTime", "dataAgeSeconds")
# An evaluation that starts more than max(interval, LAG_FLOOR) seconds after it was due is Lagging.
LAG_FLOOR = 30.0


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: str = "Normal"


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Written:
    """Patron's last status write of an object: the whole object it returned, and the
    resourceVersion of the watched body that evaluation started from."""

    seen: str
    obj: Mapping[str, Any]


def freshest(body: Mapping[str, Any], written: Written | None) -> Mapping[str, Any] | None:
    """The newest known state of an object: the watched `body` (Kopf's), or the object Patron's last
    write returned while the watch has not delivered that write yet. None when it cannot be told
    (the watch delivered some other change, not yet ours): then it must be read afresh."""
    if written is None:
        return body
    version = (body.get("metadata") or {}).get("resourceVersion")
    if version == (written.obj.get("metadata") or {}).get("resourceVersion"):
        return body
    if version == written.seen:
        return written.obj
    return None


def parse_spec(spec: Mapping[str, Any], namespace_label: str | None = None, namespace: str = "") -> CustomerSLOSpec:
    """The spec as a model; DataProblem('InvalidSpec') naming each bad field and what is allowed.

    With `namespace_label`, every selector is confined to `namespace` (patron.api.tenancy).
    """
    try:
        model = CustomerSLOSpec.from_body(dict(spec))
        return enforce_namespace_label(model, namespace_label, namespace) if namespace_label else model
    except TenancyError as err:
        raise DataProblem("InvalidSpec", str(err)) from None
    except ValidationError as err:
        parts = []
        for e in err.errors():
            where = ".".join(str(p) for p in ("spec", *e["loc"]))
            parts.append(f"{where}: {e['msg']}")
        raise DataProblem("InvalidSpec", "; ".join(parts)) from None


def failed(previous: Mapping[str, Any], problem: DataProblem, generation: int | None, now: datetime) -> Outcome:
    """Ready=False with the problem's reason; every measured field and the incident are kept as they were."""
    status = dict(previous)
    status["conditions"] = set_condition(
        previous.get("conditions") or [], "Ready", "False", problem.reason, problem.message, generation, now
    )
    status["observedGeneration"] = generation
    events: tuple[Event, ...] = ()
    old_ready: Mapping[str, Any] = next((c for c in previous.get("conditions") or [] if c.get("type") == "Ready"), {})
    if old_ready.get("reason") != problem.reason:
        events = (Event(problem.reason, problem.message, "Warning"),)
    return Outcome(status, events)


def evaluated(
    spec: CustomerSLOSpec, previous: Mapping[str, Any], a: Assessment, generation: int | None, now: datetime
) -> Outcome:
    """Status after a successful evaluation, with ImpactStarted/ImpactResolved on incident edges."""
    status = dict(previous)
    status.update(impact_fields(spec, a, previous, now))
    status["observedGeneration"] = generation
    ready_msg = f"evaluated {a.active_count} active customers"
    if a.notes:
        ready_msg += "; " + "; ".join(a.notes)
    conditions = set_condition(
        previous.get("conditions") or [], "Ready", "True", "Evaluated", ready_msg, generation, now
    )
    impacted = a.severity != "none"
    conditions = set_condition(
        conditions,
        "CustomerImpact",
        "True" if impacted else "False",
        a.severity.capitalize() if impacted else "NoImpact",
        impact_message(a),
        generation,
        now,
    )
    status["conditions"] = conditions
    before = previous.get("incident")
    incident = next_incident(spec, before, a, now)
    events: list[Event] = []
    was_open = bool(before) and not before.get("ended")  # type: ignore[union-attr]
    is_open = bool(incident) and not incident.get("ended")  # type: ignore[union-attr]
    if is_open and not was_open:
        events.append(Event("ImpactStarted", f"{a.severity}: {impact_message(a)}", "Warning"))
    if was_open and not is_open:
        events.append(Event("ImpactResolved", impact_message(a)))
    if incident is None:
        status.pop("incident", None)
    else:
        status["incident"] = incident
    return Outcome(status, tuple(events))


def material(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status without fields that change on every evaluation."""
    return {k: v for k, v in status.items() if k not in VOLATILE}


def lag_threshold(interval: float) -> float:
    """Seconds past due after which an evaluation is Lagging: max(interval, LAG_FLOOR)."""
    return max(interval, LAG_FLOOR)


def _ready(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)


def lagging(
    outcome: Outcome, lag: float, threshold: float, generation: int | None, now: datetime, previous: dict[str, Any]
) -> Outcome:
    """Ready=True reason Lagging when the evaluation started more than `threshold` s late; an
    object whose `previous` status was already Lagging stays so until its lag is under threshold/2.

    The data was evaluated (Ready stays True) but later than spec.interval promises: the operator
    has more work than its concurrency limit keeps up with. The message names no figure and the
    hysteresis keeps a lag near the threshold from flipping the reason, so a lagging fleet does not
    rewrite every status on every evaluation.
    """
    ready = _ready(outcome.status)
    was_lagging = (_ready(previous) or {}).get("reason") == "Lagging"
    if lag <= (threshold / 2 if was_lagging else threshold) or ready is None or ready.get("status") != "True":
        return outcome
    conditions = outcome.status.get("conditions") or []
    message = (
        f"{ready.get('message', '')}; started more than {threshold:g} s after it was due: the operator is "
        "overloaded (patron_evaluation_lag_seconds; raise --max-concurrent-evaluations or shard)"
    )
    status = dict(outcome.status)
    status["conditions"] = set_condition(conditions, "Ready", "True", "Lagging", message, generation, now)
    return Outcome(status, outcome.events)
