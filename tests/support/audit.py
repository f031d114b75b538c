"""What a ServiceAccount did, read from the test bed's kube-apiserver audit log, against what its
roles grant: least privilege measured, not asserted.

hack/testbed.sh logs every request a ServiceAccount makes at Metadata level (STATE/audit.log).
A request is (verb, apiGroup, resource[/subresource]); discovery (`/api`, `/apis`, `/version`) is
not a resource request and is granted to every user by Kubernetes' own `system:discovery` role.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple


class Verb(NamedTuple):
    verb: str
    group: str  # "" for the core group
    resource: str  # plural, with "/subresource" when there is one

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f".{self.group}" if self.group else "")


@dataclass(frozen=True)
class Audit:
    used: frozenset[Verb]  # every resource request the API server authorized
    refused: frozenset[Verb]  # answered 403
    requests: int


def read_audit(
    log: Path, username: str, skip_user_agents: tuple[str, ...] = ("kubectl/",), namespaces: Set[str] | None = None
) -> Audit:
    """The requests `username` made, from `log` and its rotated files (one event per auditID).

    `skip_user_agents`: requests a test made with the same token (e.g. `kubectl auth can-i`).
    `namespaces`: only requests in these ("" for cluster scope and all namespaces at once)."""
    used: set[Verb] = set()
    refused: set[Verb] = set()
    seen: set[str] = set()
    for path in sorted(log.parent.glob(log.stem + "*" + log.suffix)):
        for line in path.read_text().splitlines():
            event = json.loads(line) if line.strip() else {}
            if event.get("user", {}).get("username") != username or event["auditID"] in seen:
                continue
            if str(event.get("userAgent", "")).startswith(skip_user_agents):
                continue
            seen.add(event["auditID"])
            ref = event.get("objectRef")
            if ref is None:
                continue  # discovery: a non-resource URL
            if namespaces is not None and ref.get("namespace", "") not in namespaces:
                continue
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            verb = Verb(event["verb"], ref.get("apiGroup", ""), resource)
            code = int(event.get("responseStatus", {}).get("code", 0))
            (refused if code == 403 else used).add(verb)
    return Audit(frozenset(used), frozenset(refused), len(seen))


def granted(roles: Iterable[Mapping[str, Any]]) -> frozenset[Verb]:
    """Every (verb, group, resource) the rules of these Roles/ClusterRoles allow (no wildcards in the chart)."""
    return frozenset(
        Verb(verb, group, resource)
        for role in roles
        for rule in role.get("rules") or []
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


def differences(audit: Audit, grants: frozenset[Verb], unexercised: Mapping[Verb, str]) -> dict[str, list[str]]:
    """Empty when the code used exactly what is granted, except the documented `unexercised` verbs
    (granted for a path the test cannot take; an entry the code did use is stale and reported)."""
    out = {
        "refused (403)": audit.refused,
        "used but not granted": audit.used - grants,
        "granted but not used": grants - audit.used - set(unexercised),
        "listed as unexercised but used (drop it from the list)": audit.used & set(unexercised),
        "listed as unexercised but not granted": set(unexercised) - grants,
    }
    return {what: sorted(map(str, verbs)) for what, verbs in out.items() if verbs}


def kopf_dev_peering(resource: str) -> dict[Verb, str]:
    """The chart grants peering in both Kopf groups; the test bed serves only the zalando.org CRDs
    the chart ships (Kopf uses kopf.dev's too where another Kopf operator installed them)."""
    return {
        Verb(v, "kopf.dev", resource): "the test bed has no kopf.dev peering CRDs" for v in ("list", "watch", "patch")
    }


def service_account(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"
