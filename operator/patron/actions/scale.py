"""Scale: raise a Deployment's replicas (through its scale subresource) by `step` up to
`maxReplicas`, or, when a HorizontalPodAutoscaler targets the Deployment, its minReplicas instead
(never also bounded above by the HPA's maxReplicas). Steps are `cooldown` apart.

The record keeps the original value; after `recovery` without impact it is restored, unless
someone else changed the value since Patron set it (then it is left alone, and the record says so).
A held value that someone lowered during the incident is set again (the floor Patron holds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from patron.actions.k8s import K8s, deployment_path, hpa_path
from patron.actions.plan import Key, Plan, Situation, Step, apply, at, held_value, revert, skip
from patron.api.durations import parse_duration
from patron.api.models import ScaleAction
from patron.api.status import ActionRecord
from patron.status import timestamp

HPA = "HorizontalPodAutoscaler"


@dataclass(frozen=True)
class Scalable:
    """A number Patron may raise: a Deployment's replicas, or an HPA's minReplicas (<= maxReplicas)."""

    target: str  # Deployment/<name> | HorizontalPodAutoscaler/<name>
    value: int
    upper: int | None = None  # the HPA's maxReplicas
    running: int = 0  # the HPA's Deployment's replicas now: a raise starts from there

    @property
    def unit(self) -> str:
        return unit_of(self.target)


@dataclass(frozen=True)
class Observed:
    desired: str | None  # the target to raise now: the HPA when one targets the Deployment
    objects: Mapping[str, Scalable | None] = field(default_factory=dict)  # None: not found


@dataclass(frozen=True)
class SetValue:
    target: str
    value: int


def unit_of(target: str) -> str:
    return "minReplicas" if target.startswith(HPA + "/") else "replicas"


def detail(value: int, target: str, original: str | None, note: str) -> str:
    """E.g. '6 replicas (original 2; step 2, max 20)': the held value first (plan.held_value)."""
    return f"{value} {unit_of(target)} (original {original}; {note})"


def _lift_reason(sit: Situation, spec: ScaleAction | None, record: ActionRecord, desired: str | None) -> str | None:
    if sit.releasing:
        return "the CustomerSLO was deleted"
    if spec is None:
        return "actions.scale was removed from the spec"
    if record.target not in (desired, f"Deployment/{spec.target.name}"):
        return f"actions.scale.target is now Deployment/{spec.target.name}"
    if sit.recovered:
        return f"no impact for {sit.spec.recovery}"
    return None


def plan(sit: Situation, observed: Observed) -> Plan:
    spec = sit.spec.actions.scale
    steps: dict[Key, Step] = {}
    effects: list[SetValue] = []
    for record in sit.of_type("Scale", "Active", "Skipped"):
        why = _lift_reason(sit, spec, record, observed.desired)
        if why is None:
            continue
        obj = observed.objects.get(record.target)
        held = held_value(record)
        unit = unit_of(record.target)
        if record.state == "Skipped" or obj is None or record.original is None:
            text = f"released: {why}"
        elif held is not None and obj.value != held:
            text = f"left at {obj.value} {unit}: changed by someone else since Patron set {held}; {why}"
        else:
            text = f"restored {record.original} {unit}: {why}"
            effects.append(SetValue(record.target, int(record.original)))
        steps[("Scale", record.target, None)] = revert(sit, record, text, f"Scale {record.target}: {text}")
    if spec is not None and observed.desired is not None and sit.reaches(spec.min_severity):
        step, effect = _raise(sit, spec, observed.desired, observed.objects.get(observed.desired))
        steps[step.key] = step
        effects.extend(effect)
    return Plan(tuple(steps.values()), () if sit.dry_run else tuple(effects))


def _raise(sit: Situation, spec: ScaleAction, target: str, obj: Scalable | None) -> tuple[Step, tuple[SetValue, ...]]:
    """The next step: value = min(max(observed, held, running) + step, bound), one per cooldown."""
    key: Key = ("Scale", target, None)
    before = sit.previous(key)
    new = ActionRecord(type="Scale", target=target, state="Skipped", since=sit.stamp())
    if obj is None:
        return skip(sit, new, f"{target} not found in namespace {sit.namespace}"), ()
    active = before if before is not None and before.state == "Active" else None
    held = held_value(active)
    current = max(obj.value, held or 0, obj.running)
    original = active.original if active else str(obj.value)
    bound = min(spec.max_replicas, obj.upper) if obj.upper else spec.max_replicas
    changed = at(before.since) if before is not None and before.state in ("Active", "Reverted") else None
    ready = changed + timedelta(seconds=parse_duration(spec.cooldown)) if changed else None
    if before is not None and before.state == "Skipped" and before.expires:
        ready = at(before.expires)  # a cooldown skip carries the end of the cooldown it waits for
    if current < bound and (ready is None or sit.now >= ready):
        value = min(current + spec.step, bound)
        record = new.model_copy(
            update={
                "state": "Active",
                "original": original,
                "detail": detail(value, target, original, f"step {spec.step}, max {bound}"),
            }
        )
        message = f"Scale {target}: {obj.unit} {current} -> {value} (original {original}, max {bound})"
        return apply(sit, record, message), (SetValue(target, value),)
    note = (
        f"at the bound {bound}" if current >= bound else f"cooldown {spec.cooldown} until {timestamp(ready or sit.now)}"
    )
    if active is None:
        waiting = new.model_copy(update={"expires": timestamp(ready)}) if ready and current < bound else new
        return skip(
            sit, waiting, f"not raised: {obj.unit} {obj.value}, {note}", f"Scale {target}: not raised: {note}"
        ), ()
    assert held is not None
    if obj.value < held:
        message = f"Scale {target}: {obj.unit} {obj.value} -> {held}, the value Patron holds (lowered by someone else)"
        return apply(sit, active, message), (SetValue(target, held),)
    return skip(sit, active, detail(held, target, original, note), f"Scale {target}: no further step, {note}"), ()


async def observe(k8s: K8s, sit: Situation) -> Observed:
    spec = sit.spec.actions.scale
    objects: dict[str, Scalable | None] = {}
    desired = None
    if spec is not None:
        hpa = await _find_hpa(k8s, sit.namespace, spec.target.name)
        deployment = f"Deployment/{spec.target.name}"
        objects[deployment] = await _read(k8s, sit.namespace, deployment)
        if hpa is not None:
            running = objects[deployment]
            desired = f"{HPA}/{hpa['metadata']['name']}"
            objects[desired] = _hpa_value(hpa, running.value if running else 0)
        else:
            desired = deployment
    for record in sit.of_type("Scale", "Active"):
        if record.target not in objects:
            objects[record.target] = await _read(k8s, sit.namespace, record.target)
    return Observed(desired, objects)


def _hpa_value(hpa: Mapping[str, Any], running: int = 0) -> Scalable:
    spec = hpa.get("spec") or {}
    name = hpa["metadata"]["name"]
    return Scalable(f"{HPA}/{name}", int(spec.get("minReplicas") or 1), int(spec["maxReplicas"]), running)


async def _find_hpa(k8s: K8s, namespace: str, deployment: str) -> dict[str, Any] | None:
    """The first HPA (by name) whose scaleTargetRef is apps Deployment `deployment`."""
    for hpa in sorted(await k8s.items(hpa_path(namespace)), key=lambda h: h["metadata"]["name"]):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        group = str(ref.get("apiVersion") or "apps/v1").split("/")[0]
        if ref.get("kind") == "Deployment" and ref.get("name") == deployment and group == "apps":
            return hpa
    return None


async def _read(k8s: K8s, namespace: str, target: str) -> Scalable | None:
    kind, name = target.split("/", 1)
    if kind == HPA:
        hpa = await k8s.get(hpa_path(namespace, name))
        return None if hpa is None else _hpa_value(hpa)
    scale = await k8s.get(deployment_path(namespace, name) + "/scale")
    return None if scale is None else Scalable(target, int((scale.get("spec") or {}).get("replicas") or 0))


async def execute(k8s: K8s, namespace: str, effects: Sequence[Any]) -> None:
    for change in effects:
        kind, name = change.target.split("/", 1)
        if kind == HPA:
            await k8s.merge_patch(hpa_path(namespace, name), {"spec": {"minReplicas": change.value}})
        else:
            await k8s.merge_patch(deployment_path(namespace, name) + "/scale", {"spec": {"replicas": change.value}})
