"""The Kubernetes adapter: the few API calls Patron makes, off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

from patron.api.models import API_GROUP, API_VERSION, PLURAL

FIELD_MANAGER = "patron.dev"


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


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.custom = kubernetes.client.CustomObjectsApi(client)

    async def get_slo(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await asyncio.to_thread(
                self.custom.get_namespaced_custom_object, API_GROUP, API_VERSION, namespace, PLURAL, name
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return cast(dict[str, Any], obj)

    async def patch_slo_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """JSON merge patch of the status subresource (the client sends a dict body as merge-patch)."""
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            name,
            {"status": patch},
            field_manager=FIELD_MANAGER,
        )
