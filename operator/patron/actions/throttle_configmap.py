"""The throttle's ConfigMap backend: envoyproxy/ratelimit's config format, written into one key of an
existing ConfigMap (a JSON patch restricted to /data/<key>, guarded by the ConfigMap's
resourceVersion; no other key is ever touched, and the ConfigMap is never created).

The key's content is a function of the Active records alone (patron.actions.throttle decides them).
Its first line is the owner mark `# patron.dev/owner: <namespace>/<name>`: a key another
CustomerSLO owns is never written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import yaml

from patron.actions.plan import OwnedElsewhere
from patron.api.models import ThrottleAction
from patron.api.status import ActionRecord
from patron.kube import ApiError, K8s

OWNER_MARK = "# patron.dev/owner: "
# The owner named when a key holds content without Patron's owner mark.
UNMARKED = "someone else (the key has no patron.dev/owner mark)"


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
    kind: Literal["ConfigMap"] = "ConfigMap"

    @property
    def name(self) -> str:
        return self.config_map

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


class ConfigMapBackend:
    kind = "ConfigMap"
    never_created = "Patron writes into the ratelimit ConfigMap but never creates it"

    async def observe(self, k8s: K8s, namespace: str, name: str) -> ConfigMapState | None:
        obj = await k8s.get("ConfigMap", namespace, name)
        return None if obj is None else ConfigMapState(name, obj["metadata"]["resourceVersion"], obj.get("data"))

    def other_owner(self, owner: str, state: ConfigMapState | None, key: str, legacy: bool) -> str | None:
        """The key's owner mark when it is not `owner`; UNMARKED for content without a mark, unless
        `legacy` (the spec names the key and this CustomerSLO holds entries there: v0.1 wrote no mark)."""
        content = (state.data or {}).get(key) if state is not None else None
        if content is None:
            return None
        mark = owner_of(content)
        if mark == owner:
            return None
        if mark is None:
            return None if legacy else UNMARKED
        return mark

    def refuses(self, customer: str) -> str | None:
        return None  # any name is YAML data

    def write(
        self, spec: ThrottleAction | None, owner: str, key: str, held: Sequence[ActionRecord], state: ConfigMapState
    ) -> WriteKey | None:
        """The key holding exactly `held` (removed when nothing is held); None when it already does."""
        content = render(spec, held, owner) if held and spec is not None and spec.domain is not None else None
        if content == (state.data or {}).get(key):
            return None
        return WriteKey(state.name, key, content, state.resource_version, state.data is not None, owner)

    async def execute(self, k8s: K8s, namespace: str, write: WriteKey, attempts: int = 3) -> None:
        """Guarded by resourceVersion; on a conflict (someone wrote another key) the ConfigMap is
        read again and the same content written (content depends on records only), unless the key
        now carries another owner's mark."""
        for attempt in range(attempts):
            try:
                await k8s.json_patch("ConfigMap", namespace, write.config_map, write.ops())
                return
            except ApiError as err:
                if err.status not in (409, 422) or attempt == attempts - 1:
                    raise
            obj = await k8s.get("ConfigMap", namespace, write.config_map)
            current = (obj.get("data") or {}).get(write.key) if obj is not None else None
            if obj is None or current == write.content:
                return
            if current is not None and owner_of(current) not in (write.owner, None):
                raise OwnedElsewhere(f"ConfigMap {write.config_map} key {write.key} was taken by {owner_of(current)}")
            rv, data = obj["metadata"]["resourceVersion"], obj.get("data")
            write = replace(write, resource_version=rv, has_data=data is not None)

    def simulate(self, state: ConfigMapState, write: WriteKey) -> ConfigMapState:
        data = dict(state.data or {})
        if write.content is None:
            data.pop(write.key, None)
        else:
            data[write.key] = write.content
        return ConfigMapState(state.name, str(int(state.resource_version) + 1), data)


BACKEND = ConfigMapBackend()
