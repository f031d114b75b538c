"""The throttle's Envoy Gateway backend: one global rate-limit rule per throttled customer in an
existing BackendTrafficPolicy (gateway.envoyproxy.io/v1alpha1), next to the user's own rules.

Patron's rule for a customer (the only shape Patron writes):

    clientSelectors: [{headers: [{name: <header>, type: Exact, value: <customer>, invert: false}]}]
    limit: {requests: <limit>, unit: Second}
    shadowMode: true                      # only with actions.throttle.shadow

The v1.9.1 schema gives a rule no name or other field to mark it with, so the mark is on the
policy, as typed data: the annotation `patron.dev/owner: <namespace>/<name>` (one CustomerSLO per
policy; another one gets Conflict) and `patron.dev/throttle-rules`, a JSON list of the rules Patron
holds there ({header, customer, requests, shadow}, validated as such when read). A rule is Patron's
when it has exactly that shape and is listed; every other rule is the user's and is kept as it is,
in its order. Both annotations and the rules change in one merge patch guarded by the policy's
resourceVersion (409: read again, merge again); both annotations go when Patron holds nothing
there, and so does `rateLimit.global` when Patron's rules were its only ones. The policy is never
created. A rule of Patron's that the user edits is no longer Patron's shape: it becomes the user's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from patron.actions.plan import OwnedElsewhere
from patron.api.models import DEFAULT_THROTTLE_HEADER, ThrottleAction
from patron.api.status import ActionRecord
from patron.kube import ApiError, K8s

KIND: Literal["BackendTrafficPolicy"] = "BackendTrafficPolicy"
OWNER_ANNOTATION = "patron.dev/owner"
RULES_ANNOTATION = "patron.dev/throttle-rules"
UNREADABLE = f"someone else (its {RULES_ANNOTATION} annotation is not Patron's list of rules)"
UNOWNED = f"someone else (it has {RULES_ANNOTATION} but no {OWNER_ANNOTATION} annotation)"
MAX_HEADER_VALUE = 1024  # the schema's maxLength of a header match's value
ATTEMPTS = 3  # a write refused with 409 is retried with a fresh read this often in all


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class PatronRule(_Strict):
    """One of Patron's rules, as typed data (also the items of the patron.dev/throttle-rules list)."""

    header: str
    customer: str
    requests: int = Field(ge=1)
    shadow: bool = False

    def rule(self) -> dict[str, Any]:
        """The rule as written into spec.rateLimit.global.rules."""
        match = {"name": self.header, "type": "Exact", "value": self.customer, "invert": False}
        out: dict[str, Any] = {
            "clientSelectors": [{"headers": [match]}],
            "limit": {"requests": self.requests, "unit": "Second"},
        }
        if self.shadow:
            out["shadowMode"] = True
        return out

    @classmethod
    def of(cls, rule: Any) -> PatronRule | None:
        """The rule as Patron's when it has exactly the shape Patron writes (the schema's defaults
        allowed), else None."""
        try:
            shape = _Shape.model_validate(rule)
        except ValidationError:
            return None
        (selector,) = shape.client_selectors
        (match,) = selector.headers
        return cls(header=match.name, customer=match.value, requests=shape.limit.requests, shadow=shape.shadow_mode)


class _Match(_Strict):
    name: str
    type: Literal["Exact"] = "Exact"
    value: str
    invert: Literal[False] = False


class _Selector(_Strict):
    headers: tuple[_Match] = Field()


class _Limit(_Strict):
    requests: int = Field(ge=1)
    unit: Literal["Second"]


class _Shape(_Strict):
    client_selectors: tuple[_Selector] = Field(alias="clientSelectors")
    limit: _Limit
    shadow_mode: bool = Field(default=False, alias="shadowMode")


_CLAIMS = TypeAdapter(tuple[PatronRule, ...])


def parse_claims(text: str | None) -> tuple[PatronRule, ...] | None:
    """The patron.dev/throttle-rules annotation: () when absent, None when it is not that list."""
    if text is None:
        return ()
    try:
        return _CLAIMS.validate_json(text)
    except ValidationError:
        return None


def dump_claims(claims: Sequence[PatronRule]) -> str:
    return json.dumps([c.model_dump() for c in claims], separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class PolicyState:
    name: str
    resource_version: str
    rate_limit: Mapping[str, Any] | None  # spec.rateLimit as read
    owner: str | None = None  # the patron.dev/owner annotation
    claims: tuple[PatronRule, ...] | None = ()  # patron.dev/throttle-rules; None: unreadable

    @property
    def rules(self) -> list[Any]:
        return list(((self.rate_limit or {}).get("global") or {}).get("rules") or [])

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> PolicyState:
        meta = obj["metadata"]
        notes = meta.get("annotations") or {}
        return cls(
            meta["name"],
            meta["resourceVersion"],
            (obj.get("spec") or {}).get("rateLimit"),
            notes.get(OWNER_ANNOTATION),
            parse_claims(notes.get(RULES_ANNOTATION)),
        )


def merge_rules(rules: Sequence[Any], claims: Sequence[PatronRule], wanted: Sequence[PatronRule]) -> list[Any]:
    """The policy's rules with Patron's exactly `wanted`: every rule that is not a claimed rule of
    Patron's shape is kept as it is, in its order; Patron's rules still wanted stay where they are,
    the others go, and wanted rules not there yet are appended."""
    pending = Counter(claims)
    keep = Counter(wanted)
    out: list[Any] = []
    for rule in rules:
        mine = PatronRule.of(rule)
        if mine is not None and pending[mine] > 0:
            pending[mine] -= 1
            if keep[mine] > 0:
                keep[mine] -= 1
                out.append(rule)
            continue
        out.append(rule)
    for rule in wanted:
        if keep[rule] > 0:
            keep[rule] -= 1
            out.append(rule.rule())
    return out


def settle(state: PolicyState, wanted: Sequence[PatronRule], owner: str) -> PolicyState:
    """The policy after Patron's write: its rules merged, the claim and owner mark set (or gone)."""
    rules = merge_rules(state.rules, state.claims or (), wanted)
    rate_limit = dict(state.rate_limit or {})
    if rules:
        rate_limit["global"] = {**(rate_limit.get("global") or {}), "rules": rules}
    else:
        rate_limit.pop("global", None)  # Patron's rules were its only ones (or there were none)
    return PolicyState(state.name, state.resource_version, rate_limit or None, owner if wanted else None, tuple(wanted))


def patch_for(state: PolicyState, wanted: Sequence[PatronRule], owner: str) -> dict[str, Any] | None:
    """The merge patch (guarded by resourceVersion) from `state` to `settle(...)`; None when equal."""
    after = settle(state, wanted, owner)
    spec: dict[str, Any] = {}
    if after.rules != state.rules:
        if after.rules:
            spec = {"rateLimit": {"global": {"rules": after.rules}}}
        else:
            spec = {"rateLimit": {"global": None} if after.rate_limit else None}
    if not spec and (after.owner, after.claims) == (state.owner, state.claims):
        return None
    notes = {OWNER_ANNOTATION: after.owner, RULES_ANNOTATION: dump_claims(after.claims or ()) if wanted else None}
    patch: dict[str, Any] = {"metadata": {"resourceVersion": state.resource_version, "annotations": notes}}
    return patch | ({"spec": spec} if spec else {})


@dataclass(frozen=True)
class WritePolicy:
    """Make Patron's rules in policy `name` exactly `wanted`, for `owner`, from `patch` (computed
    against the policy as read; recomputed from a fresh read on a conflict)."""

    name: str
    owner: str
    wanted: tuple[PatronRule, ...]
    patch: dict[str, Any]
    kind: Literal["BackendTrafficPolicy"] = KIND


def header_value_problem(customer: str) -> str | None:
    """Why `customer` cannot be matched as an exact HTTP header value, or None."""
    if not customer or len(customer) > MAX_HEADER_VALUE:
        return f"it must be 1 to {MAX_HEADER_VALUE} characters"
    if customer != customer.strip(" \t"):
        return "leading or trailing whitespace is stripped from header values"
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in customer):
        return "control characters cannot be in a header value"
    return None


class PolicyBackend:
    kind = "BackendTrafficPolicy"
    never_created = "Patron adds its rules to an existing BackendTrafficPolicy but never creates it"

    async def observe(self, k8s: K8s, namespace: str, name: str) -> PolicyState | None:
        obj = await k8s.get(KIND, namespace, name)
        return None if obj is None else PolicyState.of(obj)

    def other_owner(self, owner: str, state: PolicyState | None, key: str, legacy: bool) -> str | None:
        """The policy's owner mark when it is not `owner`; a claim Patron cannot read, or one without
        an owner, makes it someone else's (Patron could not tell its rules from the user's)."""
        if state is None:
            return None
        if state.claims is None:
            return UNREADABLE
        if state.owner is None:
            return UNOWNED if state.claims else None
        return None if state.owner == owner else state.owner

    def refuses(self, customer: str) -> str | None:
        problem = header_value_problem(customer)
        return None if problem is None else f"the customer name cannot be an exact header value: {problem}"

    def write(
        self, spec: ThrottleAction | None, owner: str, key: str, held: Sequence[ActionRecord], state: PolicyState
    ) -> WritePolicy | None:
        header = spec.header_name if spec is not None else DEFAULT_THROTTLE_HEADER
        shadow = spec.shadow if spec is not None else False
        wanted = tuple(
            PatronRule(header=header, customer=r.customer or "", requests=r.limit or 1, shadow=shadow) for r in held
        )
        patch = patch_for(state, wanted, owner)
        return None if patch is None else WritePolicy(state.name, owner, wanted, patch)

    async def execute(self, k8s: K8s, namespace: str, write: WritePolicy) -> None:
        patch: dict[str, Any] | None = write.patch
        for attempt in range(ATTEMPTS):
            try:
                await k8s.merge_patch(KIND, namespace, write.name, patch or {})
                return
            except ApiError as err:
                if err.status != 409 or attempt == ATTEMPTS - 1:
                    raise
            state = await self.observe(k8s, namespace, write.name)
            if state is None:
                return
            other = self.other_owner(write.owner, state, "", False)
            if other is not None:
                raise OwnedElsewhere(f"BackendTrafficPolicy {write.name} was taken by {other}")
            patch = patch_for(state, write.wanted, write.owner)
            if patch is None:
                return

    def simulate(self, state: PolicyState, write: WritePolicy) -> PolicyState:
        after = settle(state, write.wanted, write.owner)
        return PolicyState(
            after.name, str(int(state.resource_version) + 1), after.rate_limit, after.owner, after.claims
        )


BACKEND = PolicyBackend()
