"""Throttle: per-customer limits for storming customers, in envoyproxy/ratelimit's config format,
written into one key of an existing ConfigMap (a JSON patch restricted to /data/<key>, guarded by
the ConfigMap's resourceVersion; no other key is ever touched, and the ConfigMap is never created).

- limit = max(ceil(baseline x headroom), minRequestsPerUnit), unit second; baseline is the
  customer's rate over L measured `retryStorm.baseline` earlier. The limit is fixed when the entry
  is made (a storm that outlasts its baseline offset would otherwise raise its own limit).
- An entry is lifted after `ttl` (and not set again for that customer in the same incident), after
  `recovery` without impact, or when actions.throttle is removed or moved to another key.
- The key's content is a function of the Active records alone, so every evaluation re-asserts it.
  Its first line is the owner mark `# patron.dev/owner: <namespace>/<name>`: a key another
  CustomerSLO owns is never written (ActionsActive reason Conflict, an Event naming the owner).
- At most MAX_THROTTLED customers have a throttle decision at once (Active, Reverting and Skipped
  records: held, being lifted, or decided but not done), loudest first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import yaml

from patron.actions.plan import Key, Plan, Situation, Step, apply, at, key_of, revert, skip
from patron.api.durations import parse_duration
from patron.api.models import ThrottleAction
from patron.api.status import ActionRecord, TargetRef
from patron.kube import ApiError, K8s
from patron.status import timestamp

# At most this many customers are held throttled at once by one CustomerSLO (the loudest first).
MAX_THROTTLED = 50
OWNER_MARK = "# patron.dev/owner: "
# The owner named when a key holds content without Patron's owner mark.
UNMARKED = "someone else (the key has no patron.dev/owner mark)"


class OwnedElsewhere(Exception):
    """The key was taken by another owner between Patron's read and its write."""


def pointer(*parts: str) -> str:
    """An RFC 6901 JSON pointer: `~` -> `~0`, `/` -> `~1` in each part."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def owner_of(content: str | None) -> str | None:
    """The owner mark on the first line of a key's content (None: no content, or no mark)."""
    first = (content or "").split("\n", 1)[0]
    return first[len(OWNER_MARK) :].strip() if first.startswith(OWNER_MARK) else None


@dataclass(frozen=True)
class ConfigMapState:
    name: str
    resource_version: str
    data: Mapping[str, str] | None  # None: the ConfigMap has no `data` at all


@dataclass(frozen=True)
class WriteKey:
    """Set (or with content None, remove) one key, only if the ConfigMap is still at resource_version."""

    config_map: str
    key: str
    content: str | None
    resource_version: str
    has_data: bool
    owner: str = ""  # the owner mark the content carries

    def ops(self) -> list[dict[str, Any]]:
        """The JSON patch: a test of resourceVersion, then one operation on /data/<key>."""
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": self.resource_version}
        ]
        if self.content is None:
            ops.append({"op": "remove", "path": pointer("data", self.key)})
        elif not self.has_data:
            ops.append({"op": "add", "path": "/data", "value": {self.key: self.content}})
        else:
            ops.append({"op": "add", "path": pointer("data", self.key), "value": self.content})
        return ops


def key_name(slo_name: str, spec: ThrottleAction) -> str:
    return spec.key or f"patron-{slo_name}.yaml"


def limit_for(baseline: float, headroom: float, minimum: int) -> int:
    """max(ceil(baseline x headroom), minimum); the product is rounded to 1e-6 first so that
    30 x 1.2 is 36, not 37."""
    return max(math.ceil(round(baseline * headroom, 6)), minimum, 1)


def render(spec: ThrottleAction, records: Sequence[ActionRecord], owner: str) -> str:
    """The owner mark, then the ratelimit config for `records` (sorted by customer; customer names
    are YAML data)."""
    descriptors = []
    for r in sorted(records, key=lambda r: r.customer or ""):
        entry: dict[str, Any] = {
            "key": spec.descriptor_key,
            "value": r.customer,
            "rate_limit": {"unit": "second", "requests_per_unit": r.limit},
        }
        if spec.shadow:
            entry["shadow_mode"] = True
        descriptors.append(entry)
    config = yaml.safe_dump({"domain": spec.domain, "descriptors": descriptors}, sort_keys=False, width=1000)
    return f"{OWNER_MARK}{owner}\n{config}"


def _where(record: ActionRecord) -> tuple[str, str]:
    """(ConfigMap name, key) of a Throttle record (from its validated targetRef)."""
    assert record.target_ref is not None
    return record.target_ref.name, record.key or ""


def other_owner(sit: Situation, state: ConfigMapState | None, key: str) -> str | None:
    """Who else owns `key` of the ConfigMap: its owner mark when it is not ours; UNMARKED for
    content without a mark, unless it is the key the spec configures and this CustomerSLO holds
    entries there (written by v0.1). So a record written into the status by hand never makes
    Patron write a key that is neither marked as its own nor named by the spec."""
    content = (state.data or {}).get(key) if state is not None else None
    if state is None or content is None:
        return None
    owner = owner_of(content)
    if owner == sit.owner:
        return None
    if owner is None:
        spec = sit.spec.actions.throttle
        configured = spec is not None and (spec.config_map, key_name(sit.name, spec)) == (state.name, key)
        held = any(_where(r) == (state.name, key) for r in sit.of_type("Throttle", "Active", "Reverting"))
        return None if configured and held else UNMARKED
    return owner


def config_maps_to_read(sit: Situation) -> set[str]:
    spec = sit.spec.actions.throttle
    names = {_where(r)[0] for r in sit.of_type("Throttle", "Active", "Reverting")}
    return names | ({spec.config_map} if spec else set())


def _lift_reason(sit: Situation, spec: ThrottleAction | None, record: ActionRecord) -> str | None:
    if sit.releasing:
        return "the CustomerSLO was deleted"
    if spec is None:
        return "actions.throttle was removed from the spec"
    if _where(record) != (spec.config_map, key_name(sit.name, spec)):
        return f"actions.throttle now writes ConfigMap {spec.config_map} key {key_name(sit.name, spec)}"
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


def plan(sit: Situation, config_maps: Mapping[str, ConfigMapState | None]) -> Plan:
    spec = sit.spec.actions.throttle
    steps: dict[Key, Step] = {}
    for record in sit.of_type("Throttle", "Active", "Skipped", "Reverting"):
        cm, data_key = _where(record)
        owner = other_owner(sit, config_maps.get(cm), data_key) if record.state == "Active" else None
        why = f"ConfigMap {cm} key {data_key} is now owned by {owner}" if owner else None
        why = why or _lift_reason(sit, spec, record)
        if why or record.state == "Reverting":
            message = f"Throttle {record.target} customer {record.customer}: lifted, {why or record.detail}"
            steps[key_of(record)] = revert(sit, record, f"lifted: {why}", message)
    conflicts: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    if spec is not None and sit.assessment is not None and sit.reaches(spec.min_severity):
        ref = TargetRef(kind="ConfigMap", name=spec.config_map)
        target = f"ConfigMap/{spec.config_map}"
        where = key_name(sit.name, spec)
        config_map = config_maps.get(spec.config_map)
        expires = timestamp(sit.now + timedelta(seconds=parse_duration(spec.ttl)))
        owner = other_owner(sit, config_map, where)
        decided = sit.of_type("Throttle", "Active", "Reverting", "Skipped")
        room = MAX_THROTTLED - sum(1 for r in decided if key_of(r) not in steps or steps[key_of(r)].record is not None)
        if owner is not None:
            conflicts = (f"ConfigMap {spec.config_map} key {where} is owned by {owner}: not throttled",)
        left_out = 0
        for customer in () if owner else sit.assessment.storming:
            key: Key = ("Throttle", target, customer.customer)
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
                target=target,
                target_ref=ref,
                customer=customer.customer,
                state="Active",
                since=sit.stamp(),
                detail=detail,
                key=where,
                limit=limit,
                expires=expires,
            )
            room -= 1
            if config_map is None:
                reason = (
                    f"ConfigMap {spec.config_map} not found in namespace {sit.namespace}; "
                    "Patron writes into the ratelimit ConfigMap but never creates it"
                )
                steps[key] = skip(sit, record.model_copy(update={"state": "Skipped"}), reason)
            else:
                message = f"Throttle {target} key {where} customer {customer.customer}: {detail}"
                steps[key] = apply(sit, record, message + (" (shadow mode)" if spec.shadow else ""))
        if left_out:
            notes = (f"{left_out} storming customer(s) not throttled: {MAX_THROTTLED} are held at most",)
    return Plan(tuple(steps.values()), _writes(sit, spec, tuple(steps.values()), config_maps), conflicts, notes)


def _writes(
    sit: Situation, spec: ThrottleAction | None, steps: Sequence[Step], config_maps: Mapping[str, ConfigMapState | None]
) -> tuple[WriteKey, ...]:
    """Key writes that make each touched key hold exactly its Active entries. A key is touched when
    it holds Active entries (re-asserted every evaluation) or an entry of it is given back or
    changed now. Under dry run only keys with an entry being given back are touched. A key owned
    by another CustomerSLO is never written."""
    after = {key_of(r): r for r in sit.records if r.type == "Throttle"} | {
        s.key: s.record for s in steps if s.record is not None
    }
    groups: dict[tuple[str, str], list[ActionRecord]] = {}
    touched: set[tuple[str, str]] = set()
    for key, record in after.items():
        if record.state == "Active":
            groups.setdefault(_where(record), []).append(record)
        before = sit.previous(key)
        if (record.state == "Active" and not sit.dry_run) or record.state == "Reverting":
            touched.add(_where(record))
        if before is not None and before.held and not (sit.dry_run and before.state == "Active"):
            touched.add(_where(before))
    writes = []
    for cm, data_key in sorted(touched):
        state = config_maps.get(cm)
        if state is None or other_owner(sit, state, data_key) is not None:
            continue  # gone: nothing left to lift; owned by another: never written
        held = groups.get((cm, data_key), [])
        content = render(spec, held, sit.owner) if held and spec is not None else None
        if content != (state.data or {}).get(data_key):
            writes.append(WriteKey(cm, data_key, content, state.resource_version, state.data is not None, sit.owner))
    return tuple(writes)


async def observe(k8s: K8s, sit: Situation) -> dict[str, ConfigMapState | None]:
    out: dict[str, ConfigMapState | None] = {}
    for name in sorted(config_maps_to_read(sit)):
        obj = await k8s.get("ConfigMap", sit.namespace, name)
        out[name] = None if obj is None else ConfigMapState(name, obj["metadata"]["resourceVersion"], obj.get("data"))
    return out


async def execute(k8s: K8s, namespace: str, effects: Sequence[Any], attempts: int = 3) -> None:
    """Each write is guarded by resourceVersion; on a conflict (someone wrote another key) the
    ConfigMap is read again and the same content written (content depends on records only),
    unless the key now carries another owner's mark."""
    for write in effects:
        for attempt in range(attempts):
            try:
                await k8s.json_patch("ConfigMap", namespace, write.config_map, write.ops())
                break
            except ApiError as err:
                if err.status not in (409, 422) or attempt == attempts - 1:
                    raise
            obj = await k8s.get("ConfigMap", namespace, write.config_map)
            current = (obj.get("data") or {}).get(write.key) if obj is not None else None
            if obj is None or current == write.content:
                break
            if current is not None and owner_of(current) not in (write.owner, None):
                raise OwnedElsewhere(f"ConfigMap {write.config_map} key {write.key} was taken by {owner_of(current)}")
            rv, data = obj["metadata"]["resourceVersion"], obj.get("data")
            write = replace(write, resource_version=rv, has_data=data is not None)
