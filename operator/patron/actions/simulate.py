"""Offline planning for `patron replay`: the operator's own planners, run against simulated objects.

`act` observes real objects, plans every kind and changes the objects; here the objects are a
`Simulated` value that the planned effects are applied to, so the next replay step sees what the
operator would have left behind. Nothing here does I/O and nothing is sent.

- Throttle: the ConfigMaps and BackendTrafficPolicies Patron writes into, with their content (replay
  starts with the configured one existing and holding nothing of Patron's, a policy with no rules).
- Scale: Deployments with their replicas and no HorizontalPodAutoscaler.
- Alerts: planned as if an Alertmanager were configured (fire/resolve steps; nothing is sent).
- Rollback: not simulated. Judging it needs the Deployment's revision history, which a replay
  does not have; it is reported as a note instead of guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from patron.actions import UNTRUSTED, alert, finish, kind_names, scale, throttle, throttle_configmap, throttle_policy
from patron.actions.plan import Situation, Step, complete, events, evictions, merge_evicting, parse_records
from patron.api.models import CustomerSLOSpec
from patron.impact.assess import Assessment
from patron.reconcile import Outcome

ROLLBACK_NOT_SIMULATED = (
    "rollback: not simulated (it needs the Deployment's revision history; replay does not guess it)"
)


@dataclass(frozen=True)
class Simulated:
    """The objects a replay carries between steps."""

    throttles: throttle.Observed = field(default_factory=dict)  # by (kind, name), as throttle.observe
    replicas: Mapping[str, int] = field(default_factory=dict)  # Deployment name -> spec.replicas

    @classmethod
    def initial(cls, spec: CustomerSLOSpec, replicas: int) -> Simulated:
        """The configured throttle target holding nothing of Patron's; the scale target at
        `replicas`, no HPA."""
        actions = spec.actions
        throttles: dict[tuple[str, str], Any] = {}
        if actions.throttle is not None and actions.throttle.config_map is not None:
            name = actions.throttle.config_map
            throttles[("ConfigMap", name)] = throttle_configmap.ConfigMapState(name, "1", {})
        elif actions.throttle is not None and actions.throttle.backend_traffic_policy is not None:
            name = actions.throttle.backend_traffic_policy.name
            throttles[("BackendTrafficPolicy", name)] = throttle_policy.PolicyState(name, "1", None)
        deployments = {actions.scale.target.name: replicas} if actions.scale is not None else {}
        return cls(throttles, deployments)

    def describe(self) -> dict[str, Any]:
        """E.g. {"Deployment/checkout": 5, "ConfigMap/ratelimit": {"patron-x.yaml": "..."},
        "BackendTrafficPolicy/checkout": {"rateLimit": ...}}."""
        out: dict[str, Any] = {f"Deployment/{name}": value for name, value in sorted(self.replicas.items())}
        for (kind, name), state in sorted(self.throttles.items()):
            if state is None:
                out[f"{kind}/{name}"] = None
            elif isinstance(state, throttle_configmap.ConfigMapState):
                out[f"{kind}/{name}"] = dict(state.data or {})
            else:
                out[f"{kind}/{name}"] = {"rateLimit": state.rate_limit}
        return out


def plan_offline(
    sit: Situation, status: Mapping[str, Any], objects: Simulated, prometheus_url: str = ""
) -> tuple[list[Step], list[str], Simulated]:
    """Every kind's steps (as `act` plans them, in the same order), notes, and the objects after
    the planned effects (which always succeed: every revert completes)."""
    steps: list[Step] = []
    notes: list[str] = []
    for name in kind_names(sit):
        if name == "alert":
            plan = alert.plan(sit, status, prometheus_url, True)
        elif name == "throttle":
            plan = throttle.plan(sit, objects.throttles)
            objects = replace(objects, throttles=throttle.simulate(objects.throttles, plan.effects))
        elif name == "scale":
            plan = scale.plan(sit, _observe_scale(sit, objects))
            objects = replace(objects, replicas=_set_values(objects.replicas, plan.effects))
        else:
            notes.append(ROLLBACK_NOT_SIMULATED)
            continue
        steps.extend(complete(sit, plan.steps))
        notes.extend(plan.notes)
    return steps, notes, objects


def act_offline(
    spec: CustomerSLOSpec,
    assessment: Assessment | None,
    outcome: Outcome,
    objects: Simulated,
    now: datetime,
    name: str,
    namespace: str,
    prometheus_url: str = "",
) -> tuple[Outcome, tuple[str, ...], Simulated]:
    """`act` without a cluster: the outcome with status.actions, ActionsActive and the action
    Events, the notes, and the simulated objects afterwards."""
    sit = Situation(
        now=now,
        namespace=namespace,
        name=name,
        spec=spec,
        records=parse_records(outcome.status.get("actions") or []),
        assessment=assessment,
        incident=outcome.status.get("incident"),
        dry_run=spec.dry_run,
    )
    steps, notes, objects = plan_offline(sit, outcome.status, objects, prometheus_url)
    notes = [*notes, *(() if sit.fresh else (UNTRUSTED,))]
    kept, evicted = merge_evicting(sit, steps)
    result = finish(outcome, kept, (*events(steps), *evictions(evicted)), notes, None, now)
    return result, tuple(notes), objects


def _observe_scale(sit: Situation, objects: Simulated) -> scale.Observed:
    spec = sit.spec.actions.scale
    found = {
        f"Deployment/{name}": scale.Scalable(f"Deployment/{name}", value) for name, value in objects.replicas.items()
    }
    held = {r.target: found.get(r.target) for r in sit.of_type("Scale", "Active", "Reverting")}
    return scale.Observed(f"Deployment/{spec.target.name}" if spec else None, {**held, **found})


def _set_values(replicas: Mapping[str, int], effects: Sequence[Any]) -> dict[str, int]:
    out = dict(replicas)
    for change in effects:
        if change.ref.kind == "Deployment" and change.value is not None:
            out[change.ref.name] = change.value
    return out
