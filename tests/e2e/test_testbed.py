"""Smoke tests of the local test bed itself: they need nothing from the operator."""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client import ApiClient

if TYPE_CHECKING:
    from conftest import Testbed

from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read()
    return json.loads(text) if text else None


def prom_query(testbed: Testbed, query: str) -> list[dict[str, Any]]:
    url = f"{testbed.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    result: list[dict[str, Any]] = http_json(url)["data"]["result"]
    return result


def pinned_kubernetes_version() -> str:
    go_mod = (REPO / "hack" / "tools" / "kubernetes" / "go.mod").read_text()
    match = re.search(r"^require k8s\.io/kubernetes (v\S+)", go_mod, re.MULTILINE)
    assert match, "hack/tools/kubernetes/go.mod pins no k8s.io/kubernetes version"
    return match.group(1)


def test_apiserver_reports_pinned_version(testbed: Testbed) -> None:
    versions = json.loads(testbed.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == pinned_kubernetes_version() == "v1.36.3"
    assert versions["clientVersion"]["gitVersion"] == "v1.36.3"


def test_three_fake_nodes_are_ready(testbed: Testbed) -> None:
    nodes = json.loads(testbed.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    ready = [
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    ]
    assert len(ready) == 3, f"Ready kwok nodes: {ready}"


def test_python_client_verifies_tls(k8s_api: ApiClient) -> None:
    assert k8s_api.configuration.verify_ssl
    nodes = client.CoreV1Api(k8s_api).list_node(label_selector="type=kwok").items
    assert len(nodes) == 3


def test_deployment_becomes_ready(testbed: Testbed, namespace: str) -> None:
    testbed.kubectl("create", "deployment", "web", "-n", namespace, "--replicas=3", "--image=registry.invalid/web:1")
    testbed.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s")
    status = json.loads(testbed.kubectl("get", "deployment/web", "-n", namespace, "-o", "json").stdout)
    assert status["status"]["readyReplicas"] == 3
    pods = json.loads(testbed.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert {p["status"]["phase"] for p in pods} == {"Running"}
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)


def test_service_account_token_is_authenticated_and_rbac_denies_secrets(testbed: Testbed, namespace: str) -> None:
    testbed.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    token = testbed.kubectl("create", "token", "robot", "-n", namespace).stdout.strip()
    who = json.loads(testbed.kubectl("auth", "whoami", "-o", "json", f"--token={token}").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:robot"
    denied = testbed.kubectl("get", "secrets", "-n", namespace, f"--token={token}", check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()


def test_prometheus_scrapes_itself(testbed: Testbed) -> None:
    up = wait_for(
        lambda: prom_query(testbed, 'up{job="prometheus"}'), timeout=30, what="up{job='prometheus'}", interval=0.25
    )
    assert up[0]["value"][1] == "1"


class _Exporter(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[tuple[str, str]]:
    """A tiny exporter on a free loopback port; yields (address, token of its one series)."""
    token = secrets.token_hex(4)
    handler = type("Exporter", (_Exporter,), {"body": f'patron_testbed_probe{{token="{token}"}} 1\n'.encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", token
    server.shutdown()
    server.server_close()


def register_target(targets_dir: Path, name: str, address: str, labels: dict[str, str]) -> Path:
    """Write a file_sd JSON file atomically (the *.json glob never sees a partial file)."""
    path = targets_dir / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [address], "labels": labels}]))
    tmp.rename(path)
    return path


def test_registered_exporter_is_scraped(testbed: Testbed, exporter: tuple[str, str]) -> None:
    address, token = exporter
    target = register_target(testbed.targets_dir, f"smoke-{token}", address, {"job": "smoke"})
    try:
        series = wait_for(
            lambda: prom_query(testbed, f'patron_testbed_probe{{token="{token}"}}'),
            timeout=30,
            what="the test exporter's series in Prometheus",
            interval=0.25,
        )
        assert series[0]["metric"]["job"] == "smoke"
        assert series[0]["metric"]["instance"] == address
    finally:
        target.unlink()


def _alerts_with_token(testbed: Testbed, token: str) -> list[dict[str, Any]]:
    if not testbed.alert_log.exists():
        return []
    payloads = [json.loads(line) for line in testbed.alert_log.read_text().splitlines() if line]
    return [a for p in payloads for a in p["alerts"] if a["labels"].get("token") == token]


def test_alert_posted_to_alertmanager_reaches_receiver(testbed: Testbed) -> None:
    token = secrets.token_hex(4)
    alert = {
        "labels": {"alertname": "TestbedSmoke", "severity": "none", "token": token},
        "annotations": {"summary": "test bed smoke test"},
        "startsAt": datetime.now(UTC).isoformat(),
    }
    http_json(f"{testbed.alertmanager_url}/api/v2/alerts", [alert])
    received = wait_for(
        lambda: _alerts_with_token(testbed, token), timeout=30, what="the alert in the receiver log", interval=0.25
    )
    assert received[0]["status"] == "firing"
    assert received[0]["annotations"]["summary"] == "test bed smoke test"
    served = http_json(testbed.alert_receiver_url + "/")
    assert any(a["labels"].get("token") == token for p in served for a in p["alerts"])


def test_prometheus_rule_alert_reaches_receiver(testbed: Testbed) -> None:
    token = secrets.token_hex(4)
    rule_file = testbed.rules_dir / f"smoke-{token}.yml"
    rule = {"alert": "TestbedRuleSmoke", "expr": "vector(1)", "labels": {"token": token}}
    rule_file.write_text(json.dumps({"groups": [{"name": f"smoke-{token}", "rules": [rule]}]}))
    try:
        http_json(f"{testbed.prometheus_url}/-/reload", body={})
        # Prometheus discovers its Alertmanager up to 5 s after a reload; the rule resends every 1 s.
        wait_for(
            lambda: _alerts_with_token(testbed, token),
            timeout=30,
            what="the rule's alert in the receiver log",
            interval=0.25,
        )
    finally:
        rule_file.unlink()
        http_json(f"{testbed.prometheus_url}/-/reload", body={})


def _port_open(url: str) -> bool:
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def test_alertmanager_stops_and_starts_on_the_same_url(testbed: Testbed) -> None:
    testbed.stop("alertmanager")
    try:
        assert not _port_open(testbed.alertmanager_url)
    finally:
        testbed.start("alertmanager")
    assert http_json(f"{testbed.alertmanager_url}/api/v2/status")["cluster"]["status"] == "disabled"
