"""`kubectl patron`: the CLI installed as kubectl-patron, found and run by the test bed's kubectl."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.e2e.conftest import run
from tests.e2e.test_actions_helpers import slo

if TYPE_CHECKING:
    from tests.e2e.conftest import Testbed

STATUS = {
    "severity": "warning",
    "activeCustomers": 3,
    "impactedCustomers": 1,
    "incident": {
        "started": "2026-11-26T10:00:00Z",
        "ended": "2026-11-26T10:12:00Z",
        "peakSeverity": "warning",
        "peakImpactedCustomers": 1,
        "customersAffected": 2,
        "affected": ["acme", "=cmd|' /C calc'!A0"],
        "lost": ["acme"],
    },
}


@pytest.fixture(scope="module")
def plugin_env() -> dict[str, str]:
    """PATH with the venv's bin (kubectl-patron) first; KUBECONFIG pointing nowhere, so only flags count."""
    env = {k: v for k, v in os.environ.items() if k != "PATRON_PROMETHEUS_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["KUBECONFIG"] = "/nonexistent/kubeconfig"
    return env


def kubectl(testbed: Testbed, env: dict[str, str], *args: str, check: bool = True) -> Any:
    return run([str(testbed.bin_dir / "kubectl"), *args], env=env, check=check, timeout=120)


def test_kubectl_patron_report(
    testbed: Testbed, patron_crd: str, namespace: str, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    testbed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(slo(namespace)))
    testbed.kubectl(
        "patch", "customerslo", "checkout", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": STATUS}),
    )  # fmt: skip
    kc = f"--kubeconfig={testbed.kubeconfig}"
    plugins = kubectl(testbed, plugin_env, "plugin", "list", check=False)
    assert "kubectl-patron" in plugins.stdout, plugins.stderr

    # NAMESPACE/NAME, and NAME with -n, as kubectl users write them.
    for target in ([f"{namespace}/checkout"], ["checkout", "-n", namespace], ["checkout", f"--namespace={namespace}"]):
        out = kubectl(testbed, plugin_env, "patron", "report", *target, "-o", "json", kc)
        report = json.loads(out.stdout)
        assert report["customerSLO"] == f"{namespace}/checkout"
        assert report["incident"]["customersAffected"] == 2 and report["incident"]["durationSeconds"] == 720

    # --context picks the context, and with it the context's namespace.
    config = tmp_path / "kubeconfig"
    config.write_text(testbed.kubeconfig.read_text())
    kubectl(
        testbed, plugin_env, f"--kubeconfig={config}", "config", "set-context", "plugin-test",
        "--cluster=patron-testbed", "--user=admin", f"--namespace={namespace}",
    )  # fmt: skip
    args = ("checkout", f"--kubeconfig={config}", "--context=plugin-test", "-o", "csv")
    out = kubectl(testbed, plugin_env, "patron", "report", *args)
    rows = list(csv.DictReader(io.StringIO(out.stdout, newline="")))
    assert {r["customer"]: r["lost"] for r in rows} == {"acme": "true", "'=cmd|' /C calc'!A0": "false"}

    # A context that does not exist, or a namespace without the CustomerSLO: a clear error, no traceback.
    bad = kubectl(testbed, plugin_env, "patron", "report", "checkout", kc, "--context=nope", check=False)
    assert bad.returncode != 0 and "error: cannot load the Kubernetes configuration" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = kubectl(testbed, plugin_env, "patron", "report", "checkout", kc, check=False)  # namespace default
    assert missing.returncode != 0 and "cannot read customerslo default/checkout" in missing.stderr
