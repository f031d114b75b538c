"""Scale: raise a Deployment's replicas by `step` up to `maxReplicas`, or, when a
HorizontalPodAutoscaler targets the Deployment, its minReplicas instead (never also bounded above by
the HPA's maxReplicas). Steps are `cooldown` apart.

The record keeps the original value (originalReplicas) and the value held (replicas); after
`recovery` without impact the original is restored, unless someone else changed the value since
Patron set it (then it is left alone, and the record says so). A held value that someone lowered
during the incident is set again; every write, re-sets included, stays within the bound (a lowered
maxReplicas lowers what Patron holds, never below the original).

Ownership: the object carries the annotation `patron.dev/owner: <namespace>/<name>`, written with
every change (one merge patch, guarded by resourceVersion) and removed when the value is given
back. An object another CustomerSLO owns is never changed (ActionsActive reason Conflict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from patron.actions.plan import Key, Plan, Situation, Step, apply, at, revert, skip
from patron.api.durations import parse_duration
from patron.api.models import OWNER_ANNOTATION, ScaleAction
from patron.api.status import ActionRecord, TargetRef
from patron.kube import ApiError, K8s
from patron.status import timestamp

HPA: Literal["HorizontalPodAutoscaler"] = "HorizontalPodAutoscaler"
ATTEMPTS = 3  # a write refused with 409 is retried with a fresh read this often in all


class OwnedElsewhere(Exception):
    """The object was taken by another owner between Patron's read and its write."""


@dataclass(frozen=True)
class Scalable:
    """A number Patron may raise: a Deployment's replicas, or an HPA's minReplicas (<= maxReplicas)."""

    target: str  # Deployment/<name> | HorizontalPodAutoscaler/<name>
    value: int
    upper: int | None = None  # the HPA's maxReplicas
    running: int = 0  # the HPA's Deployment's replicas now: a raise starts from there
    owner: str | None = None  # its patron.dev/owner annotation

    @property
    def unit(self) -> str:
        return unit_of(self.target)


@dataclass(frozen=True)
class Observed:
    desired: str | None  # the target to raise now: the HPA when one targets the Deployment
    objects: Mapping[str, Scalable | None] = field(default_factory=dict)  # None: not found


@dataclass(frozen=True)
class SetValue:
    """Set the value (None: leave it) and claim the object for `owner` (claim False: remove the claim)."""

    ref: TargetRef
    value: int | None
    owner: str
    claim: bool = True

    @property
    def target(self) -> str:
        return f"{self.ref.kind}/{self.ref.name}"


def ref_of(target: str) -> TargetRef:
    kind, name = target.split("/", 1)
    return TargetRef.model_validate({"kind": kind, "name": name})


def unit_of(target: str) -> str:
    return "minReplicas" if target.startswith(HPA + "/") else "replicas"


def detail(value: int, target: str, original: int | None, note: str) -> str:
    """E.g. '6 replicas (original 2; step 2, max 20)' (text only: the values are typed fields)."""
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


def _foreign(sit: Situation, obj: Scalable | None) -> str | None:
    """The other CustomerSLO that owns `obj`, if any."""
    return obj.owner if obj is not None and obj.owner not in (None, sit.owner) else None


def plan(sit: Situation, observed: Observed) -> Plan:
    spec = sit.spec.actions.scale
    steps: dict[Key, Step] = {}
    effects: list[SetValue] = []
    for record in sit.of_type("Scale", "Active", "Skipped", "Reverting"):
        obj = observed.objects.get(record.target)
        owner = _foreign(sit, obj)
        why = _lift_reason(sit, spec, record, observed.desired)
        why = f"{record.target} is now owned by {owner}" if owner and record.held else why
        if why is None and record.state != "Reverting":
            continue
        why = why or "a revert in progress"
        named = spec is not None and record.target in (observed.desired, f"Deployment/{spec.target.name}")
        text, effect = _give_back(sit, record, obj, owner, why, named)
        step = revert(sit, record, text, f"Scale {record.target}: {text}")
        steps[step.key] = step
        if step.verb == "revert" and effect is not None:
            effects.append(effect)
    conflicts: tuple[str, ...] = ()
    if spec is not None and observed.desired is not None and sit.reaches(spec.min_severity):
        obj = observed.objects.get(observed.desired)
        owner = _foreign(sit, obj)
        if owner is not None:
            conflicts = (f"{observed.desired} is owned by {owner}: not scaled",)
        elif ("Scale", observed.desired, None) not in steps:
            step, raised = _raise(sit, spec, observed.desired, obj)
            steps[step.key] = step
            effects.extend(() if sit.dry_run else raised)
    return Plan(tuple(steps.values()), tuple(effects), conflicts)


def _give_back(
    sit: Situation, record: ActionRecord, obj: Scalable | None, owner: str | None, why: str, named: bool
) -> tuple[str, SetValue | None]:
    """The revert's text and change: restore the original (and remove the owner mark) when the
    object still has the value Patron set (or already the original); else leave the value. An
    object without Patron's owner mark is changed only when the spec names it (v0.1 set no mark):
    a record written into the status by hand cannot make Patron scale another object."""
    unit = unit_of(record.target)
    original, held = record.original_replicas, record.replicas
    if record.state == "Skipped" or obj is None or original is None or record.target_ref is None:
        return f"released: {why}", None
    if owner is not None:
        return f"left at {obj.value} {unit}: {why}", None
    claim = obj.owner == sit.owner
    if not claim and not named:
        return f"left at {obj.value} {unit}: it does not carry this CustomerSLO's owner mark; {why}", None
    if obj.value not in (held, original):
        text = f"left at {obj.value} {unit}: changed by someone else since Patron set {held}; {why}"
        return text, SetValue(record.target_ref, None, sit.owner, claim=False) if claim else None
    if obj.value == original and not claim:
        return f"restored {original} {unit}: {why}", None
    return f"restored {original} {unit}: {why}", SetValue(record.target_ref, original, sit.owner, claim=False)


def _raise(sit: Situation, spec: ScaleAction, target: str, obj: Scalable | None) -> tuple[Step, tuple[SetValue, ...]]:
    """The next step: value = min(max(observed, held, running) + step, bound), one per cooldown.
    Every write stays within max(bound, original): a held value above a lowered bound comes down."""
    key: Key = ("Scale", target, None)
    before = sit.previous(key)
    ref = ref_of(target)
    new = ActionRecord(type="Scale", target=target, target_ref=ref, state="Skipped", since=sit.stamp())
    if obj is None:
        return skip(sit, new, f"{target} not found in namespace {sit.namespace}"), ()
    active = before if before is not None and before.state == "Active" else None
    held = active.replicas if active else None
    current = max(obj.value, held or 0, obj.running)
    original = active.original_replicas if active and active.original_replicas is not None else obj.value
    bound = min(spec.max_replicas, obj.upper) if obj.upper else spec.max_replicas
    ceiling = max(bound, original)
    if active is not None and held is not None and held > ceiling:
        record = active.model_copy(
            update={"replicas": ceiling, "detail": detail(ceiling, target, original, f"max {bound}")}
        )
        message = f"Scale {target}: {obj.unit} {held} -> {ceiling}, the bound is now {bound} (original {original})"
        change = (SetValue(ref, ceiling, sit.owner),) if obj.value <= held else ()
        return apply(sit, record, message), change
    if active is not None and held is not None and obj.value < held:
        # The value held is not in place (lowered by someone else, or written ahead by a process
        # that died before the change): set it back first; a step from a value not in place would
        # be two steps at once. The next step follows the cooldown as usual.
        message = f"Scale {target}: {obj.unit} {obj.value} -> {held}, the value Patron holds (not in place)"
        return apply(sit, active, message), (SetValue(ref, held, sit.owner),)
    changed = at(before.since) if before is not None and before.state in ("Active", "Reverted") else None
    ready = changed + timedelta(seconds=parse_duration(spec.cooldown)) if changed else None
    if before is not None and before.state == "Skipped" and before.expires:
        ready = at(before.expires)  # a cooldown skip carries the end of the cooldown it waits for
    if current < bound and (ready is None or sit.now >= ready):
        value = min(current + spec.step, bound)
        record = new.model_copy(
            update={
                "state": "Active",
                "original_replicas": original,
                "replicas": value,
                "detail": detail(value, target, original, f"step {spec.step}, max {bound}"),
            }
        )
        message = f"Scale {target}: {obj.unit} {current} -> {value} (original {original}, max {bound})"
        return apply(sit, record, message), (SetValue(ref, value, sit.owner),)
    note = (
        f"at the bound {bound}" if current >= bound else f"cooldown {spec.cooldown} until {timestamp(ready or sit.now)}"
    )
    if active is None:
        waiting = new.model_copy(update={"expires": timestamp(ready)}) if ready and current < bound else new
        return skip(
            sit, waiting, f"not raised: {obj.unit} {obj.value}, {note}", f"Scale {target}: not raised: {note}"
        ), ()
    assert held is not None
    return skip(sit, active, detail(held, target, original, note), f"Scale {target}: no further step, {note}"), ()


async def observe(k8s: K8s, sit: Situation) -> Observed:
    spec = sit.spec.actions.scale
    objects: dict[str, Scalable | None] = {}
    desired = None
    if spec is not None:
        hpa = await _find_hpa(k8s, sit.namespace, spec.target.name)
        deployment = f"Deployment/{spec.target.name}"
        objects[deployment] = await _read(k8s, sit.namespace, ref_of(deployment))
        if hpa is not None:
            running = objects[deployment]
            desired = f"{HPA}/{hpa['metadata']['name']}"
            objects[desired] = _hpa_value(hpa, running.value if running else 0)
        else:
            desired = deployment
    for record in sit.of_type("Scale", "Active", "Reverting"):
        if record.target not in objects and record.target_ref is not None:
            objects[record.target] = await _read(k8s, sit.namespace, record.target_ref)
    return Observed(desired, objects)


def _owner(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(OWNER_ANNOTATION)


def _hpa_value(hpa: Mapping[str, Any], running: int = 0) -> Scalable:
    spec = hpa.get("spec") or {}
    name = hpa["metadata"]["name"]
    return Scalable(f"{HPA}/{name}", int(spec.get("minReplicas") or 1), int(spec["maxReplicas"]), running, _owner(hpa))


async def _find_hpa(k8s: K8s, namespace: str, deployment: str) -> dict[str, Any] | None:
    """The first HPA (by name) whose scaleTargetRef is apps Deployment `deployment`."""
    for hpa in sorted(await k8s.items(HPA, namespace), key=lambda h: h["metadata"]["name"]):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        group = str(ref.get("apiVersion") or "apps/v1").split("/")[0]
        if ref.get("kind") == "Deployment" and ref.get("name") == deployment and group == "apps":
            return hpa
    return None


async def _read(k8s: K8s, namespace: str, ref: TargetRef) -> Scalable | None:
    obj = await k8s.get(ref.kind, namespace, ref.name)
    if obj is None:
        return None
    if ref.kind == HPA:
        return _hpa_value(obj)
    replicas = (obj.get("spec") or {}).get("replicas")
    return Scalable(f"{ref.kind}/{ref.name}", int(1 if replicas is None else replicas), owner=_owner(obj))


def _patch(change: SetValue, resource_version: str) -> dict[str, Any]:
    """One merge patch: the owner annotation (set or removed) and the value, guarded by resourceVersion."""
    patch: dict[str, Any] = {
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {OWNER_ANNOTATION: change.owner if change.claim else None},
        }
    }
    if change.value is not None:
        patch["spec"] = {"minReplicas" if change.ref.kind == HPA else "replicas": change.value}
    return patch


async def execute(k8s: K8s, namespace: str, effects: Sequence[Any]) -> None:
    """Each change is read fresh and written guarded by its resourceVersion; a 409 is retried with a
    fresh read (ATTEMPTS in all); an object another CustomerSLO claimed meanwhile is left alone."""
    for change in effects:
        ref: TargetRef = change.ref
        for attempt in range(ATTEMPTS):
            obj = await k8s.get(ref.kind, namespace, ref.name)
            if obj is None:
                break  # gone: nothing to give back, nothing to raise
            owner = _owner(obj)
            if owner not in (None, change.owner):
                if change.claim:
                    raise OwnedElsewhere(f"{change.target} is owned by {owner}")
                break  # given back meanwhile and claimed by another: not Patron's to change
            if not change.claim and owner is None and change.value is None:
                break  # nothing of Patron's left on it
            try:
                await k8s.merge_patch(ref.kind, namespace, ref.name, _patch(change, obj["metadata"]["resourceVersion"]))
                break
            except ApiError as err:
                if err.status != 409 or attempt == ATTEMPTS - 1:
                    raise
