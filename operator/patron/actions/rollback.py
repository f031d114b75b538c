"""Rollback: when impact began within `within` after the Deployment's newest rollout, pause it
(`spec.paused`) or undo it (the pod template of the previous revision's ReplicaSet, without its
pod-template-hash label, as `kubectl rollout undo` does). At most once per revision (the record
keeps the revision; the newest Rollback record per target is always retained) and at most once per
incident: an undo is itself a new revision, and rolling back the rollback would flip-flop. A change
that failed (e.g. the template changed meanwhile) is decided again at the next evaluation.

The newest rollout is the owned ReplicaSet with the highest deployment.kubernetes.io/revision; its
creationTimestamp is when it rolled out. (An undo reuses the old ReplicaSet, whose timestamp is
old, so an undo is never taken for a new bad rollout.)

Patron never resumes or rolls forward: the bad revision needs a person. A pause stays Active until
the Deployment is resumed or rolls out again; an undo is released after `recovery`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from patron.actions.plan import Key, Plan, Situation, Step, apply, at, is_failure, revert, skip
from patron.api.durations import parse_duration
from patron.api.status import ActionRecord, TargetRef
from patron.kube import K8s
from patron.status import parse_timestamp

REVISION = "deployment.kubernetes.io/revision"


@dataclass(frozen=True)
class Revision:
    number: int
    created: datetime
    template: Mapping[str, Any]


@dataclass(frozen=True)
class DeploymentState:
    name: str
    template: Mapping[str, Any]  # spec.template now
    paused: bool
    revisions: tuple[Revision, ...]  # of the ReplicaSets it owns

    @property
    def newest(self) -> Revision | None:
        return max(self.revisions, key=lambda r: r.number, default=None)

    def before(self, number: int) -> Revision | None:
        return max((r for r in self.revisions if r.number < number), key=lambda r: r.number, default=None)


@dataclass(frozen=True)
class PatchDeployment:
    name: str
    ops: tuple[dict[str, Any], ...]  # JSON patch, guarded by a test of spec.template


def undo_template(template: Mapping[str, Any]) -> dict[str, Any]:
    """A ReplicaSet's pod template as a Deployment's: without pod-template-hash (and creationTimestamp)."""
    out = copy.deepcopy(dict(template))
    metadata = out.setdefault("metadata", {})
    metadata.pop("creationTimestamp", None)
    (metadata.get("labels") or {}).pop("pod-template-hash", None)
    return out


def _name(record: ActionRecord) -> str:
    """The Deployment a Rollback record names (its validated targetRef)."""
    assert record.target_ref is not None
    return record.target_ref.name


def _paused(record: ActionRecord) -> bool:
    return record.detail.startswith("paused")


def _release_reason(sit: Situation, record: ActionRecord, dep: DeploymentState | None) -> str | None:
    if dep is None:
        return "the Deployment no longer exists"
    newest = dep.newest
    if _paused(record):
        if not dep.paused:
            return "the Deployment was resumed"
        if newest is None or str(newest.number) != record.revision:
            return "a newer revision rolled out"
        return None
    return f"no impact for {sit.spec.recovery}" if sit.recovered else None


def plan(sit: Situation, deployments: Mapping[str, DeploymentState | None]) -> Plan:
    spec = sit.spec.actions.rollback
    steps: dict[Key, Step] = {}
    for record in sit.of_type("Rollback", "Active", "Reverting"):
        why = _release_reason(sit, record, deployments.get(_name(record)))
        if why or record.state == "Reverting":
            text = f"released: {why}" if why else record.detail
            steps[("Rollback", record.target, None)] = revert(sit, record, text, f"Rollback {record.target}: {text}")
    if sit.recovered:
        # Decisions not carried out (dry run, already paused) are kept as history: never twice per revision.
        for record in sit.of_type("Rollback", "Skipped"):
            update = {"state": "Reverted", "since": sit.stamp()}
            steps[("Rollback", record.target, None)] = Step(
                "hold", ("Rollback", record.target, None), record.model_copy(update=update), ""
            )
    started = sit.incident_open_since
    if spec is None or started is None or not sit.reaches(spec.min_severity):
        return Plan(tuple(steps.values()))
    target = f"Deployment/{spec.target.name}"
    key: Key = ("Rollback", target, None)
    dep = deployments.get(spec.target.name)
    ref = TargetRef(kind="Deployment", name=spec.target.name)
    new = ActionRecord(type="Rollback", target=target, target_ref=ref, state="Skipped", since=sit.stamp())
    if dep is None:
        steps[key] = skip(sit, new, f"{target} not found in namespace {sit.namespace}")
        return Plan(tuple(steps.values()))
    newest = dep.newest
    within = timedelta(seconds=parse_duration(spec.within))
    if newest is None or not newest.created <= started <= newest.created + within:
        return Plan(tuple(steps.values()))
    before = sit.previous(key)
    if before is not None and not is_failure(before):
        decided = at(before.since)
        if before.revision == str(newest.number) or (decided is not None and decided >= started):
            return Plan(tuple(steps.values()))  # once per revision, and once per incident
    new = new.model_copy(update={"revision": str(newest.number)})
    why = f"impact began {int((started - newest.created).total_seconds())}s after revision {newest.number} rolled out"
    # The change holds only for the template judged: a concurrent scale (replicas) does not matter.
    guard = {"op": "test", "path": "/spec/template", "value": dep.template}
    effects: tuple[PatchDeployment, ...] = ()
    if spec.mode == "pause":
        if dep.paused:
            steps[key] = skip(sit, new, f"not paused: revision {newest.number} was already paused; {why}")
        else:
            text = f"paused at revision {newest.number}: {why}"
            steps[key] = apply(
                sit, new.model_copy(update={"state": "Active", "detail": text}), f"Rollback {target}: {text}"
            )
            effects = (PatchDeployment(dep.name, (guard, {"op": "add", "path": "/spec/paused", "value": True})),)
    else:
        previous = dep.before(newest.number)
        if dep.paused or previous is None:
            reason = "the Deployment is paused" if dep.paused else "there is no earlier revision"
            steps[key] = skip(sit, new, f"not undone: {reason}; {why}")
        else:
            text = f"undone: revision {newest.number} -> template of revision {previous.number}: {why}"
            steps[key] = apply(
                sit, new.model_copy(update={"state": "Active", "detail": text}), f"Rollback {target}: {text}"
            )
            op = {"op": "replace", "path": "/spec/template", "value": undo_template(previous.template)}
            effects = (PatchDeployment(dep.name, (guard, op)),)
    return Plan(tuple(steps.values()), () if sit.dry_run else effects)


async def observe(k8s: K8s, sit: Situation) -> dict[str, DeploymentState | None]:
    spec = sit.spec.actions.rollback
    names = {_name(r) for r in sit.of_type("Rollback", "Active", "Reverting")}
    names |= {spec.target.name} if spec else set()
    return {name: await _read(k8s, sit.namespace, name) for name in sorted(names)}


async def _read(k8s: K8s, namespace: str, name: str) -> DeploymentState | None:
    dep = await k8s.get("Deployment", namespace, name)
    if dep is None:
        return None
    labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    uid = dep["metadata"]["uid"]
    revisions = []
    for rs in await k8s.items("ReplicaSet", namespace, selector or None):
        meta = rs["metadata"]
        owned = any(o.get("uid") == uid and o.get("controller") for o in meta.get("ownerReferences") or [])
        number = (meta.get("annotations") or {}).get(REVISION, "")
        if owned and number.isdigit():
            created = parse_timestamp(meta["creationTimestamp"])
            revisions.append(Revision(int(number), created, (rs.get("spec") or {}).get("template") or {}))
    return DeploymentState(
        name=name,
        template=(dep.get("spec") or {}).get("template") or {},
        paused=bool((dep.get("spec") or {}).get("paused")),
        revisions=tuple(revisions),
    )


async def execute(k8s: K8s, namespace: str, effects: Sequence[Any]) -> None:
    for patch in effects:
        await k8s.json_patch("Deployment", namespace, patch.name, list(patch.ops))
