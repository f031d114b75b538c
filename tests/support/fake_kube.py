"""An in-memory stand-in for the API server behind `patron.kube.K8s` (unit tests only; e2e tests
use the test bed's real kube-apiserver). It serves GET, list, POST, DELETE (with preconditions) and
PATCH (JSON patch, merge patch, the status subresource) on the paths the adapter builds, and the
discovery of the kinds in `discoverable`; bumps resourceVersion on every write, answers 409 to a merge
patch naming a stale resourceVersion, and fails requests on demand."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import jsonpatch  # type: ignore[import-untyped]

from patron.kube import RESOURCES, K8s, Response

Fault = Callable[[str, str], Response | None]  # (method, path) -> a refusal, or None to serve


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def refusal(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return status, reason, headers or {}, json.dumps({"message": f"{reason} (fake)"})


class FakeKube(K8s):
    """`objects` maps a path (as `patron.kube.object_path` builds it) to the object."""

    def __init__(self) -> None:
        self.slept: list[float] = []

        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)

        super().__init__(None, sleep)
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.version = 100
        self.discoverable = set(RESOURCES) - {"PrometheusRule"}  # kinds whose group version discovery lists

    def add(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        prefix, plural = RESOURCES[kind]
        obj = copy.deepcopy(body)
        obj.setdefault("metadata", {}).update({"namespace": namespace, "resourceVersion": self._bump()})
        self.objects[f"{prefix}/namespaces/{namespace}/{plural}/{obj['metadata']['name']}"] = obj
        return obj

    def obj(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        prefix, plural = RESOURCES[kind]
        return self.objects[f"{prefix}/namespaces/{namespace}/{plural}/{name}"]

    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    def send(
        self, method: str, path: str, headers: dict[str, str], params: list[tuple[str, str]], body: Any
    ) -> Response:
        self.requests.append((method, path))
        for fault in self.faults:
            refused = fault(method, path)
            if refused is not None:
                return refused
        discovered = [
            plural for kind, (prefix, plural) in RESOURCES.items() if prefix == path and kind in self.discoverable
        ]
        if method == "GET" and discovered:
            return 200, "OK", {}, json.dumps({"resources": [{"name": plural} for plural in discovered]})
        if method == "POST":
            return self._create(path, body)
        sub = None
        if path.endswith("/status"):
            path, sub = path[: -len("/status")], "status"
        if method == "GET" and path not in self.objects:
            items = [o for p, o in sorted(self.objects.items()) if p.rsplit("/", 1)[0] == path]
            if items or any(path.endswith("/" + plural) for _, plural in RESOURCES.values()):
                return 200, "OK", {}, json.dumps({"items": items})
        obj = self.objects.get(path)
        if obj is None:
            return refusal(404, "Not Found")
        if method == "GET":
            return 200, "OK", {}, json.dumps(obj)
        if method == "DELETE":
            wanted = (body or {}).get("preconditions") or {}
            if any(obj["metadata"].get(field) != value for field, value in wanted.items()):
                return refusal(409, "Conflict")
            del self.objects[path]
            return 200, "OK", {}, json.dumps({"kind": "Status", "status": "Success"})
        assert method == "PATCH", method
        if headers.get("Content-Type") == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(obj, body)
            except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict):
                return refusal(422, "Unprocessable Entity")
        else:
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
                return refusal(409, "Conflict")
            if sub == "status":
                body = {"status": body.get("status")}
            new = merge(obj, body)
        new["metadata"]["resourceVersion"] = self._bump()
        self.objects[path] = new
        return 200, "OK", {}, json.dumps(new)

    def _create(self, collection: str, body: dict[str, Any]) -> Response:
        if not any(
            collection.endswith("/" + plural) for kind, (_, plural) in RESOURCES.items() if kind in self.discoverable
        ):
            return refusal(404, "Not Found")
        path = f"{collection}/{body['metadata']['name']}"
        if path in self.objects:
            return refusal(409, "Conflict")
        obj = copy.deepcopy(body)
        obj["metadata"].update({"resourceVersion": self._bump(), "uid": f"uid-{self.version}"})
        self.objects[path] = obj
        return 201, "Created", {}, json.dumps(obj)
