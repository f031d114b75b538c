"""`patron replay`: what Patron would have seen and done over a past period.

Each step runs the operator's own evaluation (`evaluate`, `evaluated`/`failed`) at a past time and
carries the status forward exactly as the operator would, so severities, incidents and Events match
what a live operator evaluating at the same instants decides.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from patron.api.models import CustomerSLOSpec
from patron.impact.assess import DataProblem
from patron.impact.evaluate import evaluate
from patron.impact.prometheus import Prometheus
from patron.reconcile import evaluated, failed
from patron.status import timestamp

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


def instants(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    if step <= timedelta(0) or end < start:
        raise ValueError("--to must not be before --from, and --step must be positive")
    count = int((end - start) / step) + 1
    if count > MAX_STEPS:
        raise ValueError(f"{count} steps is more than {MAX_STEPS}: use a larger --step or a shorter period")
    return (start + i * step for i in range(count))


def replay(
    spec: CustomerSLOSpec, prometheus: Prometheus, start: datetime, end: datetime, step: timedelta
) -> list[ReplayStep]:
    status: dict[str, Any] = {}
    out = []
    for at in instants(start, end, step):
        try:
            outcome = evaluated(spec, status, evaluate(spec, prometheus, at), None, at)
            problem = None
        except DataProblem as err:
            if err.reason == "PrometheusUnavailable":
                raise
            outcome = failed(status, err, None, at)
            problem = f"{err.reason}: {err.message}"
        status = outcome.status
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
                events=tuple(f"{e.reason}: {e.message}" for e in outcome.events),
            )
        )
    return out


def render(steps: Sequence[ReplayStep], output: str) -> str:
    if output == "json":
        return json.dumps([asdict(s) for s in steps], ensure_ascii=False, indent=2) + "\n"
    header = ("TIME", "SEVERITY", "IMPACTED/ACTIVE", "LOST", "STORMING", "WORST", "EVENTS")
    rows = [
        (
            s.at,
            s.severity if not s.problem else f"({s.problem.split(':')[0]})",
            f"{s.impacted}/{s.active}",
            str(s.lost),
            str(s.storming),
            ", ".join(s.worst),
            "; ".join(e.split(":")[0] for e in s.events),
        )
        for s in steps
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines) + "\n"
