"""`patron replay`: what Patron would have seen and done over a past period.

Each step runs the operator's own evaluation (`evaluate`, `evaluated`/`failed`) at a past time and
carries the status forward exactly as the operator would, so severities, incidents and Events match
what a live operator evaluating at the same instants decides.

Actions are planned by the operator's own planners (`patron.actions.simulate`) against simulated
objects carried from step to step: the throttle target (which starts holding nothing of Patron's) and the
scale target Deployment (at `replicas`, no HPA). Alerts are planned as if an Alertmanager were
configured; nothing is sent or changed. Rollback is not simulated (a note says so).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from patron.actions.simulate import Simulated, act_offline
from patron.api.models import CustomerSLOSpec
from patron.impact.assess import DataProblem
from patron.impact.evaluate import evaluate
from patron.impact.prometheus import Prometheus
from patron.reconcile import evaluated, failed
from patron.status import timestamp
from patron.text import printable, table

MAX_STEPS = 10_000


@dataclass(frozen=True)
class ReplayStep:
    at: str
    severity: str
    active: int
    impacted: int
    lost: int
    storming: int
    worst: tuple[str, ...]
    problem: str | None
    events: tuple[str, ...]
    # The action Events the operator would post ("ActionApplied: <message>", ...).
    actions: tuple[str, ...] = ()
    # status.actions after this step (the records Patron holds).
    records: tuple[dict[str, Any], ...] = ()
    # The simulated objects after this step (Deployment replicas, ConfigMap data).
    objects: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def instants(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    if step <= timedelta(0) or end < start:
        raise ValueError("--to must not be before --from, and --step must be positive")
    count = int((end - start) / step) + 1
    if count > MAX_STEPS:
        raise ValueError(f"{count} steps is more than {MAX_STEPS}: use a larger --step or a shorter period")
    return (start + i * step for i in range(count))


def replay(
    spec: CustomerSLOSpec,
    prometheus: Prometheus,
    start: datetime,
    end: datetime,
    step: timedelta,
    replicas: int = 3,
    name: str = "replay",
    namespace: str = "default",
) -> list[ReplayStep]:
    """`replicas`: the scale target's replicas when the period starts; `name`/`namespace`: the
    CustomerSLO's (the throttle key is named after it)."""
    if replicas < 0:
        raise ValueError("--replicas must not be negative")
    status: dict[str, Any] = {}
    objects = Simulated.initial(spec, replicas)
    out = []
    for at in instants(start, end, step):
        try:
            assessment = evaluate(spec, prometheus, at, f"{namespace}/{name}")
            outcome = evaluated(spec, status, assessment, None, at)
            problem = None
        except DataProblem as err:
            if err.reason == "PrometheusUnavailable":
                raise
            assessment = None
            outcome = failed(status, err, None, at)
            problem = f"{err.reason}: {err.message}"
        impact_events = outcome.events
        outcome, notes, objects = act_offline(
            spec, assessment, outcome, objects, at, name, namespace, getattr(prometheus, "url", "")
        )
        status = outcome.status
        action_events = outcome.events[len(impact_events) :]
        out.append(
            ReplayStep(
                at=timestamp(at),
                severity=status.get("severity", "unknown"),
                active=status.get("activeCustomers", 0),
                impacted=status.get("impactedCustomers", 0),
                lost=status.get("lostCustomers", 0),
                storming=status.get("stormingCustomers", 0),
                worst=tuple(i["customer"] for i in status.get("impacted", [])[:5]),
                problem=problem,
                events=tuple(f"{e.reason}: {e.message}" for e in impact_events),
                actions=tuple(f"{e.reason}: {e.message}" for e in action_events),
                records=tuple(status.get("actions") or ()),
                objects=objects.describe(),
                notes=notes,
            )
        )
    return out


def render(steps: Sequence[ReplayStep], output: str) -> str:
    if output == "json":
        return json.dumps([asdict(s) for s in steps], ensure_ascii=False, indent=2) + "\n"
    header = ("TIME", "SEVERITY", "IMPACTED/ACTIVE", "LOST", "STORMING", "WORST", "HELD", "EVENTS")
    rows = [
        (
            s.at,
            s.severity if not s.problem else f"({s.problem.split(':')[0]})",
            f"{s.impacted}/{s.active}",
            str(s.lost),
            str(s.storming),
            ", ".join(s.worst),
            _held(s.records),
            "; ".join(e.split(":")[0] for e in s.events),
        )
        for s in steps
    ]
    head, *body = table(header, rows)
    lines = [head]
    for s, line in zip(steps, body, strict=True):
        lines.append(line)
        lines.extend(f"    {printable(a)}" for a in s.actions)
    notes = dict.fromkeys(n for s in steps for n in s.notes)
    lines.extend(f"note: {printable(n)}" for n in notes)
    return "\n".join(lines) + "\n"


def _held(records: Sequence[dict[str, Any]]) -> str:
    """Active records by type, e.g. "Scale 1, Throttle 2"."""
    counts: dict[str, int] = {}
    for r in records:
        if r.get("state") == "Active":
            counts[r["type"]] = counts.get(r["type"], 0) + 1
    return ", ".join(f"{t} {n}" for t, n in counts.items()) or "-"
