"""The Kubernetes calls the actions make, off the event loop, as raw JSON (dicts).

Every write names the field manager `patron.dev`. Objects are always in the CustomerSLO's own
namespace: there is no way to name another one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

from patron.api.models import API_GROUP, API_VERSION, PLURAL
from patron.kube import FIELD_MANAGER

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30


def pointer(*parts: str) -> str:
    """An RFC 6901 JSON pointer: `~` -> `~0`, `/` -> `~1` in each part."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class K8s:
    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """One request; the answer's JSON, or ApiException (404: NotFoundException, ...)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = list(query or [])
        if method != "GET":
            params.append(("fieldManager", FIELD_MANAGER))
        return await asyncio.to_thread(self._request, method, path, headers, params, body)

    def _request(
        self, method: str, path: str, headers: dict[str, str], params: list[tuple[str, str]], body: Any
    ) -> dict[str, Any]:
        method, url, headers, body, post = self.client.param_serialize(
            method, path, query_params=params, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.client.call_api(method, url, headers, body, post, _request_timeout=REQUEST_TIMEOUT)
        data: bytes = response.read()  # type: ignore[no-untyped-call]
        text = data.decode("utf-8") if data else ""
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        return cast(dict[str, Any], json.loads(text) if text else {})

    async def get(self, path: str, query: list[tuple[str, str]] | None = None) -> dict[str, Any] | None:
        """GET `path`; None when it does not exist."""
        try:
            return await self._call("GET", path, query=query)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._call("PATCH", path, ops, JSON_PATCH)

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", path, patch, MERGE_PATCH)

    async def patch_status(self, path: str, status: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of a status subresource."""
        return await self._call("PATCH", path + "/status", {"status": status}, MERGE_PATCH)

    async def items(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else None
        listed = await self.get(path, query)
        return list((listed or {}).get("items") or [])


def slo_path(namespace: str, name: str) -> str:
    return f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def config_map_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps/{name}"


def deployment_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


def hpa_path(namespace: str, name: str = "") -> str:
    return f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers" + (f"/{name}" if name else "")


def replica_sets_path(namespace: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/replicasets"
