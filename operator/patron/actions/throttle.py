"""Throttle: per-customer limits for storming customers, written by one backend adapter per rate
limiter: an envoyproxy/ratelimit ConfigMap key (throttle_configmap) or an Envoy Gateway
BackendTrafficPolicy (throttle_policy). This module decides; the adapters read, render and write.

- limit = max(ceil(baseline x headroom), minRequestsPerUnit), unit second; baseline is the
  customer's rate over L measured `retryStorm.baseline` earlier. The limit is fixed when the entry
  is made (a storm that outlasts its baseline offset would otherwise raise its own limit).
- An entry is lifted after `ttl` (and not set again for that customer in the same incident), after
  `recovery` without impact, or when actions.throttle is removed or moved to another target.
- What Patron holds in a target is a function of the Active records alone, so every evaluation
  re-asserts it. A target another CustomerSLO owns (its owner mark) is never written
  (ActionsActive reason Conflict, an Event naming the owner).
- At most MAX_THROTTLED customers have a throttle decision at once (Active, Reverting and Skipped
  records: held, being lifted, or decided but not done), loudest first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from patron.actions import throttle_configmap, throttle_policy
from patron.actions.plan import Key, Plan, Situation, Step, apply, at, key_of, revert, skip
from patron.api.durations import parse_duration
from patron.api.models import ThrottleAction
from patron.api.status import ActionRecord, TargetRef
from patron.kube import K8s
from patron.status import timestamp

# At most this many customers are held throttled at once by one CustomerSLO (the loudest first).
MAX_THROTTLED = 50
# What a backend observed, by (kind, name); None: the object does not exist.
Observed = Mapping[tuple[str, str], Any]


@dataclass(frozen=True, order=True)
class Place:
    """Where entries are held: a ConfigMap key, or a BackendTrafficPolicy (key "")."""

    kind: str
    name: str
    key: str = ""

    @property
    def target(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def text(self) -> str:
        """E.g. `ConfigMap ratelimit key patron-checkout.yaml`, `BackendTrafficPolicy checkout`."""
        return f"{self.kind} {self.name}" + (f" key {self.key}" if self.key else "")

    @property
    def at(self) -> str:
        """E.g. `ConfigMap/ratelimit key patron-checkout.yaml`, `BackendTrafficPolicy/checkout`."""
        return self.target + (f" key {self.key}" if self.key else "")


class Backend(Protocol):
    """One rate limiter's adapter: how its object is read, owned, rendered and written."""

    kind: str
    never_created: str  # why a missing target is not created (the Skipped record's reason)

    async def observe(self, k8s: K8s, namespace: str, name: str) -> Any: ...

    def other_owner(self, owner: str, state: Any, key: str, legacy: bool) -> str | None: ...

    def refuses(self, customer: str) -> str | None: ...

    def write(
        self, spec: ThrottleAction | None, owner: str, key: str, held: Sequence[ActionRecord], state: Any
    ) -> Any: ...

    async def execute(self, k8s: K8s, namespace: str, effect: Any) -> None: ...

    def simulate(self, state: Any, effect: Any) -> Any: ...


BACKENDS: dict[str, Backend] = {
    "ConfigMap": throttle_configmap.BACKEND,
    "BackendTrafficPolicy": throttle_policy.BACKEND,
}


def key_name(slo_name: str, spec: ThrottleAction) -> str:
    return spec.key or f"patron-{slo_name}.yaml"


def configured(slo_name: str, spec: ThrottleAction) -> Place:
    """Where the spec has entries held now."""
    if spec.config_map is not None:
        return Place("ConfigMap", spec.config_map, key_name(slo_name, spec))
    assert spec.backend_traffic_policy is not None  # the model holds exactly one target
    return Place("BackendTrafficPolicy", spec.backend_traffic_policy.name)


def place_of(record: ActionRecord) -> Place:
    """Where a Throttle record's entry is (from its validated targetRef)."""
    assert record.target_ref is not None
    return Place(record.target_ref.kind, record.target_ref.name, record.key or "")


def limit_for(baseline: float, headroom: float, minimum: int) -> int:
    """max(ceil(baseline x headroom), minimum); the product is rounded to 1e-6 first so that
    30 x 1.2 is 36, not 37."""
    return max(math.ceil(round(baseline * headroom, 6)), minimum, 1)


def other_owner(sit: Situation, observed: Observed, place: Place) -> str | None:
    """Who else owns `place`, by the backend's owner mark. `legacy`: the spec names the place and
    this CustomerSLO holds entries there (a ConfigMap key written by v0.1 carries no mark); so a
    record written into the status by hand never makes Patron take an unmarked key."""
    spec = sit.spec.actions.throttle
    legacy = (
        spec is not None
        and configured(sit.name, spec) == place
        and any(place_of(r) == place for r in sit.of_type("Throttle", "Active", "Reverting"))
    )
    state = observed.get((place.kind, place.name))
    return BACKENDS[place.kind].other_owner(sit.owner, state, place.key, legacy)


def to_read(sit: Situation) -> set[tuple[str, str]]:
    """(kind, name) of every target configured or still holding entries."""
    spec = sit.spec.actions.throttle
    places = {place_of(r) for r in sit.of_type("Throttle", "Active", "Reverting")}
    places |= {configured(sit.name, spec)} if spec else set()
    return {(p.kind, p.name) for p in places}


def _lift_reason(sit: Situation, spec: ThrottleAction | None, record: ActionRecord) -> str | None:
    if sit.releasing:
        return "the CustomerSLO was deleted"
    if spec is None:
        return "actions.throttle was removed from the spec"
    now = configured(sit.name, spec)
    if place_of(record) != now:
        return f"actions.throttle now writes {now.text}"
    expires = at(record.expires)
    if expires is not None and sit.now >= expires:
        return f"ttl {spec.ttl} expired"
    if sit.recovered:
        return f"no impact for {sit.spec.recovery}"
    return None


def _lifted_by_ttl(sit: Situation, record: ActionRecord | None) -> bool:
    """A record lifted by its TTL (reverted at or after `expires`) in the open incident."""
    if record is None or record.state not in ("Reverting", "Reverted") or record.expires is None:
        return False
    opened = sit.incident_open_since
    since = at(record.since)
    expires = at(record.expires)
    return opened is not None and since is not None and expires is not None and since >= max(expires, opened)


def plan(sit: Situation, observed: Observed) -> Plan:
    spec = sit.spec.actions.throttle
    steps: dict[Key, Step] = {}
    for record in sit.of_type("Throttle", "Active", "Skipped", "Reverting"):
        where = place_of(record)
        owner = other_owner(sit, observed, where) if record.state == "Active" else None
        why = f"{where.text} is now owned by {owner}" if owner else None
        why = why or _lift_reason(sit, spec, record)
        if why or record.state == "Reverting":
            message = f"Throttle {record.target} customer {record.customer}: lifted, {why or record.detail}"
            steps[key_of(record)] = revert(sit, record, f"lifted: {why}", message)
    conflicts: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    if spec is not None and sit.assessment is not None and sit.reaches(spec.min_severity):
        place = configured(sit.name, spec)
        backend = BACKENDS[place.kind]
        ref = TargetRef.model_validate({"kind": place.kind, "name": place.name})
        state = observed.get((place.kind, place.name))
        expires = timestamp(sit.now + timedelta(seconds=parse_duration(spec.ttl)))
        owner = other_owner(sit, observed, place)
        decided = sit.of_type("Throttle", "Active", "Reverting", "Skipped")
        room = MAX_THROTTLED - sum(1 for r in decided if key_of(r) not in steps or steps[key_of(r)].record is not None)
        if owner is not None:
            conflicts = (f"{place.text} is owned by {owner}: not throttled",)
        left_out = 0
        for customer in () if owner else sit.assessment.storming:
            key: Key = ("Throttle", place.target, customer.customer)
            before = sit.previous(key)
            if key in steps or (before is not None and (before.held or (sit.dry_run and before.state == "Skipped"))):
                continue  # held, being lifted, or decided under dry run: the limit set first stays
            if _lifted_by_ttl(sit, before) or customer.baseline_rate is None:
                continue
            if room <= 0:
                left_out += 1
                continue
            limit = limit_for(customer.baseline_rate, spec.headroom, spec.min_requests_per_unit)
            detail = f"{limit} req/s (baseline {customer.baseline_rate:.3g} x {spec.headroom:g})"
            record = ActionRecord(
                type="Throttle",
                target=place.target,
                target_ref=ref,
                customer=customer.customer,
                state="Active",
                since=sit.stamp(),
                detail=detail,
                key=place.key or None,
                limit=limit,
                expires=expires,
            )
            room -= 1
            refused = backend.refuses(customer.customer)
            if state is None or refused is not None:
                reason = (
                    refused
                    or f"{place.kind} {place.name} not found in namespace {sit.namespace}; {backend.never_created}"
                )
                steps[key] = skip(sit, record.model_copy(update={"state": "Skipped"}), reason)
            else:
                message = f"Throttle {place.at} customer {customer.customer}: {detail}"
                steps[key] = apply(sit, record, message + (" (shadow mode)" if spec.shadow else ""))
        if left_out:
            notes = (f"{left_out} storming customer(s) not throttled: {MAX_THROTTLED} are held at most",)
    return Plan(tuple(steps.values()), _writes(sit, spec, tuple(steps.values()), observed), conflicts, notes)


def _writes(sit: Situation, spec: ThrottleAction | None, steps: Sequence[Step], observed: Observed) -> tuple[Any, ...]:
    """Writes that make each touched place hold exactly its Active entries. A place is touched when
    it holds Active entries (re-asserted every evaluation) or an entry of it is given back or
    changed now. Under dry run only places with an entry being given back are touched. A place
    owned by another CustomerSLO is never written."""
    after = {key_of(r): r for r in sit.records if r.type == "Throttle"} | {
        s.key: s.record for s in steps if s.record is not None
    }
    groups: dict[Place, list[ActionRecord]] = {}
    touched: set[Place] = set()
    for key, record in after.items():
        if record.state == "Active":
            groups.setdefault(place_of(record), []).append(record)
        before = sit.previous(key)
        if (record.state == "Active" and not sit.dry_run) or record.state == "Reverting":
            touched.add(place_of(record))
        if before is not None and before.held and not (sit.dry_run and before.state == "Active"):
            touched.add(place_of(before))
    writes = []
    for place in sorted(touched):
        state = observed.get((place.kind, place.name))
        if state is None or other_owner(sit, observed, place) is not None:
            continue  # gone: nothing left to lift; owned by another: never written
        held = sorted(groups.get(place, []), key=lambda r: r.customer or "")
        write = BACKENDS[place.kind].write(spec, sit.owner, place.key, held, state)
        if write is not None:
            writes.append(write)
    return tuple(writes)


async def observe(k8s: K8s, sit: Situation) -> dict[tuple[str, str], Any]:
    return {(kind, name): await BACKENDS[kind].observe(k8s, sit.namespace, name) for kind, name in sorted(to_read(sit))}


async def execute(k8s: K8s, namespace: str, effects: Sequence[Any]) -> None:
    for effect in effects:
        await BACKENDS[effect.kind].execute(k8s, namespace, effect)


def simulate(observed: Observed, effects: Sequence[Any]) -> dict[tuple[str, str], Any]:
    """The objects after `effects` (for `patron replay`): each backend applies its own writes."""
    out = dict(observed)
    for effect in effects:
        state = out.get((effect.kind, effect.name))
        if state is not None:
            out[(effect.kind, effect.name)] = BACKENDS[effect.kind].simulate(state, effect)
    return out
