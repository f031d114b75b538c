"""Fixtures for end-to-end tests on the local test bed (hack/testbed.sh, docs/testbed.md).

Every test under tests/e2e is marked `e2e`. The session fixture `testbed` brings the test bed up,
or reuses one that is already running; a test bed this session started is torn down at the end
unless PATRON_KEEP_TESTBED=1.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

REPO = Path(__file__).resolve().parents[2]
TESTBED_SH = REPO / "hack" / "testbed.sh"
E2E_DIR = Path(__file__).resolve().parent
CHART = REPO / "charts" / "patron"
INSTANCE = "app.kubernetes.io/instance"  # the label naming a Helm release


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


class CommandError(subprocess.CalledProcessError):
    """A failed command whose message includes what it printed."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def run(
    cmd: list[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
    return result


def testbed_sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(TESTBED_SH), *args], check=check, timeout=1800)


def read_exports(env_file: Path) -> dict[str, str]:
    """Parse the `export NAME=value` lines that hack/testbed.sh writes to STATE/env."""
    exports = {}
    for line in env_file.read_text().splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            name, _, value = words[1].partition("=")
            exports[name] = value
    return exports


@dataclass(frozen=True)
class Testbed:
    state_dir: Path
    kubeconfig: Path
    prometheus_url: str
    alertmanager_url: str
    alert_receiver_url: str
    alert_log: Path
    targets_dir: Path
    rules_dir: Path
    bin_dir: Path

    @classmethod
    def from_env_file(cls, env_file: Path) -> Testbed:
        e = read_exports(env_file)
        return cls(
            state_dir=Path(e["PATRON_TESTBED_DIR"]),
            kubeconfig=Path(e["KUBECONFIG"]),
            prometheus_url=e["PROMETHEUS_URL"],
            alertmanager_url=e["ALERTMANAGER_URL"],
            alert_receiver_url=e["ALERT_RECEIVER_URL"],
            alert_log=Path(e["ALERT_LOG"]),
            targets_dir=Path(e["PROMETHEUS_TARGETS_DIR"]),
            rules_dir=Path(e["PROMETHEUS_RULES_DIR"]),
            bin_dir=Path(e["PATRON_TOOLS_BIN"]),
        )

    def environ(self) -> dict[str, str]:
        """os.environ plus the test bed's exports (KUBECONFIG, PROMETHEUS_URL, ...), for subprocesses."""
        return {**os.environ, **read_exports(self.state_dir / "env")}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against the test bed; text output in .stdout/.stderr."""
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        return run(cmd, input=input, check=check, timeout=timeout)

    def stop(self, component: str) -> None:
        """Stop one component (e.g. "alertmanager", "prometheus"); its port and data are kept."""
        self._testbed_sh("stop", component)

    def start(self, component: str) -> None:
        """Start a stopped component again on the same port and wait until it is ready."""
        self._testbed_sh("start", component)

    def _testbed_sh(self, *args: str) -> None:
        run([str(TESTBED_SH), *args], env={**os.environ, "PATRON_TESTBED_DIR": str(self.state_dir)})


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    reused = testbed_sh("status", check=False).returncode == 0
    keep = os.environ.get("PATRON_KEEP_TESTBED") == "1"
    # pytest-xdist workers bring their test beds up one at a time: each picks free ports, and two
    # bring-ups at once could pick the same one.
    with (REPO / ".testbed-up.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        up = testbed_sh("up", check=False)
    if up.returncode != 0:
        if not reused and not keep:
            testbed_sh("down", check=False)
        pytest.fail(f"hack/testbed.sh up failed:\n{up.stderr}", pytrace=False)
    env_file = Path(os.environ.get("PATRON_TESTBED_DIR", REPO / ".testbed")).resolve() / "env"
    yield Testbed.from_env_file(env_file)
    if not reused and not keep:
        testbed_sh("down")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@pytest.fixture
def namespace(testbed: Testbed, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace `t-<test name>-<random>` (<= 63 chars), deleted (without waiting) after the test."""
    suffix = secrets.token_hex(3)
    name = f"t-{_slug(request.node.name)[: 63 - len('t--') - len(suffix)].rstrip('-')}-{suffix}"
    testbed.kubectl("create", "namespace", name)
    testbed.kubectl("label", "namespace", name, "patron.dev/e2e=true")
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


POLICY_CRD = "backendtrafficpolicies.gateway.envoyproxy.io"


@pytest.fixture(scope="session")
def envoy_gateway_crds(testbed: Testbed) -> str:
    """Envoy Gateway's BackendTrafficPolicy CRD and the Gateway API CRDs, applied and Established."""
    path = testbed.bin_dir.parent / "envoy-gateway-crds.yaml"
    if not path.exists():
        pytest.fail(f"{path} is missing: run hack/tools.sh build envoy-gateway-crds", pytrace=False)
    testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), timeout=300)
    testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{POLICY_CRD}")
    return POLICY_CRD


@pytest.fixture(scope="session")
def k8s_api(testbed: Testbed) -> Iterator[ApiClient]:
    """A kubernetes.client.ApiClient for the test bed (admin, full TLS verification)."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(testbed.kubeconfig))
    yield api
    api.close()


# ---------------------------------------------------------------- Helm releases and the chart's ServiceAccount


def helm(testbed: Testbed, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run(
        [str(testbed.bin_dir / "helm"), f"--kubeconfig={testbed.kubeconfig}", *args], check=check, timeout=timeout
    )


def unique(prefix: str) -> str:
    """Release names are unique per run: the ClusterRole is named after the release."""
    return f"{prefix}-{secrets.token_hex(3)}"


def service_account_kubeconfig(testbed: Testbed, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for the test bed's API server that authenticates as the ServiceAccount, nothing else."""
    token = testbed.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(testbed.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "testbed", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class Namespaces:
    """Namespaces made for one test or module, deleted (without waiting) at the end."""

    def __init__(self, testbed: Testbed, prefix: str) -> None:
        self.testbed, self.prefix, self.made = testbed, prefix, []

    def make(self, role: str) -> str:
        name = f"{self.prefix}-{role}-{secrets.token_hex(3)}"
        self.testbed.kubectl("create", "namespace", name)
        self.testbed.kubectl("label", "namespace", name, "patron.dev/e2e=true")
        self.made.append(name)
        return name

    def cleanup(self) -> None:
        for name in self.made:
            self.testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def kubectl_as(testbed: Testbed, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(testbed.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args], check=False, timeout=60)


def forbidden_lines(log: str) -> list[str]:
    """Requests the API server refused the operator (none: serving listed namespaces, Kopf does not
    even try to list namespaces)."""
    return [
        line for line in log.splitlines() if re.search(r"Forbidden|(?<![,.:\d])\b403\b", line)
    ]  # `403` not as the milliseconds of a timestamp


def get_json(testbed: Testbed, *args: str) -> Any:
    return json.loads(testbed.kubectl("get", *args, "-o", "json").stdout)
