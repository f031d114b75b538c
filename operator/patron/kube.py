"""The Kubernetes adapter: every API call Patron makes, as raw JSON (dicts), in its own bounded
thread pool (patron.pools) off the event loop.

Paths are built only by `object_path` from a resource kind Patron knows, a namespace and a name that
are checked against Kubernetes' name rules first: no string from a status or spec is ever pasted into
a URL, so there is no way to name another namespace or another resource than asked for.
Every write names the field manager `patron.dev`.

Errors are `ApiError` (status, reason, the server's message and the object's `Kind/name`). A 429 is
retried after its Retry-After, at most RETRIES_429 times and MAX_RETRY_AFTER seconds each.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, cast

import kubernetes

from patron.api.models import API_GROUP, API_VERSION, OBJECT_NAME_PATTERN, PLURAL
from patron.pools import Pool
from patron.status import merge_patch

FIELD_MANAGER = "patron.dev"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30
# 429 Too Many Requests: retried this many times, waiting Retry-After (at most MAX_RETRY_AFTER s).
RETRIES_429 = 3
MAX_RETRY_AFTER = 10.0
DEFAULT_RETRY_AFTER = 1.0
# Threads for API calls (the client's connection pool holds 10 connections).
THREADS = 8

ResourceKind = Literal[
    "ConfigMap",
    "BackendTrafficPolicy",
    "Deployment",
    "HorizontalPodAutoscaler",
    "ReplicaSet",
    "CustomerSLO",
    "PrometheusRule",
]
Subresource = Literal["status"]
# kind -> (API prefix, plural): the only resources Patron reads or writes.
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "BackendTrafficPolicy": ("/apis/gateway.envoyproxy.io/v1alpha1", "backendtrafficpolicies"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "CustomerSLO": (f"/apis/{API_GROUP}/{API_VERSION}", PLURAL),
    "PrometheusRule": ("/apis/monitoring.coreos.com/v1", "prometheusrules"),
}
# How long an answer of discovery (is a kind served?) is kept before it is asked again.
DISCOVERY_TTL = 60.0
_NAME = re.compile(OBJECT_NAME_PATTERN)
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class InvalidName(ValueError):
    """A namespace or object name that Kubernetes could not have: no request is made."""


def check_name(name: str, what: str = "name") -> str:
    """`name` when it is a DNS-1123 subdomain (at most 253 characters), else InvalidName."""
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise InvalidName(f"{what} {name!r} is not a valid Kubernetes object name")
    return name


def object_path(kind: ResourceKind, namespace: str, name: str | None = None, sub: Subresource | None = None) -> str:
    """/api(s)/.../namespaces/<namespace>/<plural>[/<name>[/<sub>]], every part checked first."""
    if kind not in RESOURCES:
        raise InvalidName(f"unknown resource kind {kind!r}")
    if len(namespace) > 63 or not _NAMESPACE.fullmatch(namespace):
        raise InvalidName(f"namespace {namespace!r} is not a valid Kubernetes namespace name")
    prefix, plural = RESOURCES[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    if name is not None:
        path += "/" + check_name(name)
        if sub is not None:
            path += f"/{sub}"
    return path


class ApiError(Exception):
    """A refused request: the HTTP status, its reason, the server's message and the object."""

    def __init__(self, status: int, reason: str, message: str, target: str) -> None:
        super().__init__(f"{target}: HTTP {status} {reason}" + (f": {message}" if message else ""))
        self.status = status
        self.reason = reason
        self.message = message
        self.target = target

    @property
    def kind(self) -> str:
        """A stable name of the failure (status code and object): one Event per kind, not per try."""
        return f"{self.target}: HTTP {self.status} {self.reason}"


Response = tuple[int, str, Mapping[str, str], str]  # status, reason, headers, body


def retry_after(headers: Mapping[str, str]) -> float:
    """Retry-After in seconds (bounded by MAX_RETRY_AFTER); DEFAULT_RETRY_AFTER when absent."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), "")
    try:
        seconds = float(value)
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class K8s:
    """The adapter. `send` does one HTTP request (replaced by a fake in unit tests)."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient | None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.sleep = sleep
        self.pool = Pool("kube", THREADS)

    async def _call(
        self,
        method: str,
        kind: ResourceKind,
        namespace: str,
        name: str | None = None,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
        sub: Subresource | None = None,
    ) -> dict[str, Any]:
        """A request on an object or on the objects of a kind in `namespace`."""
        path = object_path(kind, namespace, name, sub)
        target = f"{kind}/{name}" if name else f"{kind} list"
        return await self._request(method, path, target, body, content_type, query)

    async def _request(
        self,
        method: str,
        path: str,
        target: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """One request (retried on 429); the answer's JSON, or ApiError naming `target`."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = list(query or [])
        if method in ("POST", "PATCH"):
            params.append(("fieldManager", FIELD_MANAGER))
        for attempt in range(RETRIES_429 + 1):
            status, reason, got, text = await self.pool.run(self.send, method, path, headers, params, body)
            if 200 <= status <= 299:
                return cast(dict[str, Any], json.loads(text) if text else {})
            if status != 429 or attempt == RETRIES_429:
                break
            await self.sleep(retry_after(got))
        try:
            message = str(json.loads(text or "{}").get("message", ""))
        except (ValueError, AttributeError):
            message = ""
        raise ApiError(status, reason, message, target)

    def send(
        self, method: str, path: str, headers: dict[str, str], params: list[tuple[str, str]], body: Any
    ) -> Response:
        assert self.client is not None
        method, url, headers, body, post = self.client.param_serialize(
            method, path, query_params=params, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.client.call_api(method, url, headers, body, post, _request_timeout=REQUEST_TIMEOUT)
        data: bytes = response.read()  # type: ignore[no-untyped-call]
        return response.status, str(response.reason or ""), dict(response.headers or {}), data.decode() if data else ""

    async def get(self, kind: ResourceKind, namespace: str, name: str) -> dict[str, Any] | None:
        """The object; None when it does not exist."""
        try:
            return await self._call("GET", kind, namespace, name)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def items(
        self, kind: ResourceKind, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else None
        listed = await self._call("GET", kind, namespace, query=query)
        return list(listed.get("items") or [])

    async def create(self, kind: ResourceKind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` (its metadata.name checked like any name) into `namespace`."""
        name = check_name(str(body["metadata"]["name"]))
        return await self._request("POST", object_path(kind, namespace), f"{kind}/{name}", body)

    async def delete(self, kind: ResourceKind, namespace: str, name: str, preconditions: dict[str, str]) -> None:
        """DELETE, only while the object still has the `preconditions` (uid, resourceVersion): else 409.
        Gone already is done."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions}
        try:
            await self._call("DELETE", kind, namespace, name, body)
        except ApiError as err:
            if err.status != 404:
                raise

    async def served(self, kind: ResourceKind) -> bool:
        """Whether the API server serves `kind` (discovery of its group version: every authenticated
        user may read it, so this needs no RBAC)."""
        prefix, plural = RESOURCES[kind]
        try:
            found = await self._request("GET", prefix, f"discovery {prefix}")
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources") or [])

    async def json_patch(
        self, kind: ResourceKind, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return await self._call("PATCH", kind, namespace, name, ops, JSON_PATCH)

    async def merge_patch(
        self, kind: ResourceKind, namespace: str, name: str, patch: dict[str, Any], sub: Subresource | None = None
    ) -> dict[str, Any]:
        return await self._call("PATCH", kind, namespace, name, patch, MERGE_PATCH, sub=sub)


class Served:
    """Whether a kind is served, from discovery asked at most every `ttl` seconds (a CRD installed or
    removed later is noticed within that); `forget` asks again next time. A failed question is not
    kept: it raises, and is asked again."""

    def __init__(
        self, k8s: K8s, kind: ResourceKind, ttl: float = DISCOVERY_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.k8s, self.kind, self.ttl, self.clock = k8s, kind, ttl, clock
        self.answer: tuple[float, bool] | None = None  # (when asked, served)

    async def __call__(self) -> bool:
        now = self.clock()
        if self.answer is None or now - self.answer[0] >= self.ttl:
            self.answer = (now, await self.k8s.served(self.kind))
        return self.answer[1]

    def forget(self) -> None:
        self.answer = None


def api_client(kubeconfig: str | None = None, context: str | None = None) -> kubernetes.client.ApiClient:
    """From `kubeconfig` (else KUBECONFIG / ~/.kube/config) and `context`, else the in-cluster
    ServiceAccount (as kubectl does). A kubeconfig or context named explicitly must work."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except kubernetes.config.ConfigException:
        if kubeconfig or context:
            raise
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient(configuration)


class StatusWriter:
    """The one way a CustomerSLO's status is written: a JSON merge patch from what the server holds
    (`current`: as read, then as each write returned it) to the new status. A write-ahead and the
    final write of one evaluation therefore never diff against a status the server no longer has.
    `written`: the whole object as the last write returned it (None before any write)."""

    def __init__(self, k8s: K8s, namespace: str, name: str, current: Mapping[str, Any]) -> None:
        self.k8s = k8s
        self.namespace = namespace
        self.name = name
        self.current: dict[str, Any] = dict(current)
        self.written: dict[str, Any] | None = None

    async def write(self, status: Mapping[str, Any]) -> None:
        patch = merge_patch(self.current, status)
        if not patch:
            return
        obj = await self.k8s.merge_patch("CustomerSLO", self.namespace, self.name, {"status": patch}, sub="status")
        self.current = dict(obj.get("status") or {})
        self.written = obj
