"""The container image, built and run (issue 12): hack/image.sh builds the Dockerfile with buildah,
and `patron run` from that image, as user 10001, serves a CustomerSLO on the test bed with the
token of the chart's ServiceAccount (the RBAC the chart installs, nothing more).

`podman run` cannot start containers on this kind of machine (crun: setrlimit RLIMIT_NPROC not
permitted), so the image runs with `buildah run --isolation chroot --network host`. Marked `image`:
the build takes minutes and needs buildah, so `make test` leaves it out and `make test-image` runs it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.e2e.conftest import REPO, run
from tests.e2e.test_helm import CHART, Namespaces, checkout_slo, condition, get_json, helm, service_account_kubeconfig
from tests.support.promserver import PrometheusServer, free_port, wait_http

if TYPE_CHECKING:
    from tests.e2e.conftest import Testbed

pytestmark = [pytest.mark.image, pytest.mark.slow]

IMAGE_SH = REPO / "hack" / "image.sh"
USER = "10001:10001"  # the Dockerfile's USER


@pytest.fixture(scope="module")
def image() -> str:
    started = time.monotonic()
    name = run([str(IMAGE_SH), "build"], timeout=1800).stdout.strip()
    print(f"hack/image.sh build: {time.monotonic() - started:.0f} s, image {name}")
    return name


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["buildah", *args], check=check, timeout=300)


@pytest.fixture
def container(image: str) -> Iterator[str]:
    name = f"patron-e2e-{secrets.token_hex(3)}"
    buildah("from", "--quiet", "--name", name, image)
    try:
        yield name
    finally:
        buildah("rm", name, check=False)


def uids_of(marker: str) -> set[int]:
    """Real user ids of the processes whose command line contains `marker`."""
    uids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                line = next(x for x in (proc / "status").read_text().splitlines() if x.startswith("Uid:"))
                uids.add(int(line.split()[1]))
        except OSError:
            continue
    return uids - {0}  # buildah itself (root) carries the command line too


def test_image_is_lean_and_runs_as_its_user(image: str, container: str) -> None:
    size = json.loads(buildah("inspect", "--type", "image", image).stdout)
    config = size["OCIv1"]["config"]
    assert config["User"] == USER
    assert config["Entrypoint"] == ["patron"]
    out = buildah("run", "--isolation", "chroot", "--user", USER, container, "--", "id", "-u").stdout
    assert out.strip() == "10001"
    # No build tools and no sources in the final image: only the virtual environment.
    probe = "import shutil, os; print(shutil.which('gcc'), os.path.exists('/src'), shutil.which('patron'))"
    out = buildah("run", "--isolation", "chroot", "--user", USER, container, "--", "python3", "-c", probe).stdout
    assert out.split() == ["None", "False", "/opt/patron/bin/patron"]


def test_patron_run_from_the_image_serves_with_the_charts_token(
    testbed: Testbed,
    scenario_prometheus: PrometheusServer,
    patron_crd: str,
    container: str,
    tmp_path: Path,
) -> None:
    spaces = Namespaces(testbed, "t-image")
    release = f"patron-img-{secrets.token_hex(3)}"
    proc: subprocess.Popen[bytes] | None = None
    log = tmp_path / "operator.log"
    try:
        ns, watched = spaces.make("system"), spaces.make("shop")
        values = {"prometheusUrl": scenario_prometheus.url, "watchNamespaces": [watched]}
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        helm(testbed, "install", release, str(CHART), "--namespace", ns, "--values", str(values_file))
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        kubeconfig = service_account_kubeconfig(testbed, ns, release, config_dir / "kubeconfig")
        # Readable by the container's user, as a mounted Secret would be.
        config_dir.chmod(0o755)
        kubeconfig.chmod(0o644)
        health, metrics = free_port(), free_port()
        cmd = [
            "buildah", "run", "--isolation", "chroot", "--network", "host", "--user", USER,
            "--volume", f"{config_dir}:/config:ro", "--env", "KUBECONFIG=/config/kubeconfig",
            container, "--",
            "patron", "run",
            "--prometheus-url", scenario_prometheus.url,
            "--namespace", watched,
            "--metrics-port", str(metrics),
            "--liveness", f"http://127.0.0.1:{health}/healthz",
        ]  # fmt: skip
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"http://127.0.0.1:{health}/healthz", timeout=120)
        testbed.kubectl("apply", "-n", watched, "-f", "-", input=yaml.safe_dump(checkout_slo("checkout")))
        # Kopf first tries to list namespaces, which the chart does not grant, and falls back to the
        # listed ones after its retries (about a minute); see docs/install.md.
        testbed.kubectl("wait", "-n", watched, "--for=condition=Ready", "cslo/checkout", "--timeout=180s")
        obj = get_json(testbed, "cslo", "checkout", "-n", watched)
        assert condition(obj, "Ready")["status"] == "True"
        assert obj["status"]["severity"] == "critical"
        assert proc.poll() is None
        assert uids_of(f"127.0.0.1:{health}/healthz") == {10001}
        testbed.kubectl("delete", "cslo", "checkout", "-n", watched, "--timeout=60s")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print(log.read_text()[-4000:] if log.exists() else "")
        if spaces.made:
            helm(testbed, "uninstall", release, "--namespace", spaces.made[0], "--wait", check=False)
        spaces.cleanup()
