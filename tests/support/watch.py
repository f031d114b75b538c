"""Every version of one Kubernetes object, as the API server sends it on a watch, for e2e tests.

Polling can miss a state that lasts a few milliseconds (a record written ahead of a change and
overwritten right after it); a watch sees every write. A background thread keeps the versions in
order, with the monotonic time each arrived; `next()` waits for a version that satisfies a test.

    with ObjectWatch(api, "configmaps", namespace, "ratelimit-config") as cm:
        ...
        cm.next(lambda obj: obj is not None and "patron-x.yaml" in obj["data"], timeout=30)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kubernetes import client, watch
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

GROUP, VERSION, PLURAL = "patron.dev", "v1alpha1", "customerslos"


@dataclass(frozen=True)
class Version:
    at: float  # time.monotonic() when the watch delivered it
    obj: dict[str, Any] | None  # None: deleted (or not there)


class ObjectWatch:
    """Watches `kind` ("customerslos", "configmaps" or "deployments") `name` in `namespace`."""

    def __init__(self, api: ApiClient, kind: str, namespace: str, name: str) -> None:
        lists: dict[str, Callable[..., Any]] = {
            "customerslos": lambda **kw: client.CustomObjectsApi(api).list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, **kw
            ),
            "configmaps": lambda **kw: client.CoreV1Api(api).list_namespaced_config_map(namespace, **kw),
            "deployments": lambda **kw: client.AppsV1Api(api).list_namespaced_deployment(namespace, **kw),
        }
        self.list = lists[kind]
        self.name = name
        self.versions: list[Version] = []
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{kind}-{name}")
        self._seen: set[str] = set()

    def start(self) -> ObjectWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)

    def __enter__(self) -> ObjectWatch:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.list,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=version,
                    timeout_seconds=5,
                ):
                    raw = event["raw_object"]
                    if event["type"] == "ERROR":  # e.g. 410 Gone: start again from a fresh list
                        version = None
                        break
                    version = raw["metadata"]["resourceVersion"]
                    self._add(None if event["type"] == "DELETED" else raw)
                    if self.stopping.is_set():
                        break
            except (ApiException, HTTPError, OSError) as err:
                # Resumed from the last version seen (a re-list would skip the versions between), unless
                # that version is gone.
                if isinstance(err, ApiException) and err.status == 410:
                    version = None
                time.sleep(0.2)

    def _add(self, obj: dict[str, Any] | None) -> None:
        key = obj["metadata"]["resourceVersion"] if obj else f"deleted-{len(self.versions)}"
        if key in self._seen:  # a re-list after a reconnect sends the current version again
            return
        self._seen.add(key)
        with self.changed:
            self.versions.append(Version(time.monotonic(), obj))
            self.changed.notify_all()

    def latest(self) -> dict[str, Any] | None:
        with self.changed:
            return self.versions[-1].obj if self.versions else None

    def mark(self) -> int:
        """The number of versions seen so far: pass it to `next(after=...)` to wait for newer ones."""
        with self.changed:
            return len(self.versions)

    def next(
        self, test: Callable[[dict[str, Any] | None], bool], timeout: float, after: int = 0
    ) -> tuple[int, Version] | None:
        """The first version from index `after` on that passes `test` (waiting up to `timeout` s), with its index."""
        deadline = time.monotonic() + timeout
        index = after
        with self.changed:
            while True:
                while index < len(self.versions):
                    if test(self.versions[index].obj):
                        return index, self.versions[index]
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def objects(self) -> list[dict[str, Any] | None]:
        with self.changed:
            return [v.obj for v in self.versions]
