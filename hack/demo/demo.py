"""`make demo`: the whole story on the local test bed, live in the terminal (docs/demo.md).

    hack/demo.sh [--keep] [--incident storm|rollout|both] [--seed N]   run the demo
    hack/demo.sh down                                                  stop a demo kept with --keep
    hack/demo.sh status                                                what a kept demo runs

The test bed lives in $PATRON_TESTBED_DIR (default <repo>/.testbed-demo); the demo's own files
(kubeconfig of Patron's ServiceAccount, logs, PIDs) in its demo/ subdirectory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import incidents

ROOT = Path(__file__).resolve().parents[2]
TESTBED_SH = ROOT / "hack" / "testbed.sh"
MANIFESTS = ROOT / "hack" / "demo" / "manifests" / "shop.yaml"
SHOP_PY = ROOT / "hack" / "demo" / "shop.py"
SLO_FILE = ROOT / "examples" / "demo-customerslo.yaml"
NAMESPACE = "shop"
SLO_NAME = "checkout"
RELEASE = "patron"
RELEASE_NAMESPACE = "patron-system"
SERVICE_ACCOUNT = "patron"  # the chart's ServiceAccount for release "patron"
THROTTLE_KEY = f"patron-{SLO_NAME}.yaml"
SHOP_CAPACITY_PER_REPLICA = 15.0  # shop.py's default --capacity-per-replica
STORY_END_TIMEOUT = 240.0


# ---------------------------------------------------------------- shared with tests/e2e/test_demo.py


def customer_slo(namespace: str = NAMESPACE, **spec: Any) -> dict[str, Any]:
    """examples/demo-customerslo.yaml for `namespace` (selectors included), with `spec` overrides."""
    doc: dict[str, Any] = yaml.safe_load(SLO_FILE.read_text())
    doc["metadata"]["namespace"] = namespace
    ratio = doc["spec"]["indicator"]["ratio"]
    for key in ("errors", "total"):
        ratio[key] = ratio[key].replace(f'namespace="{NAMESPACE}"', f'namespace="{namespace}"')
    doc["spec"].update(spec)
    return doc


def warmup_seconds(slo: dict[str, Any], storm: bool = True) -> float:
    """Traffic the shop must have served before an incident: a full first long window, plus for a
    storm `baseline` more (storms are measured against the long window `baseline` ago), plus a few
    scrapes."""
    impact = slo["spec"].get("impact", {})
    long_ = incidents.seconds(impact["windows"][0]["long"])
    baseline = incidents.seconds(impact.get("retryStorm", {}).get("baseline", "1h")) if storm else 0
    return long_ + baseline + 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.2)


def start_shop(
    namespace: str, testbed_dir: Path, workdir: Path, seed: int = 1, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """hack/demo/shop.py as a process of its own session (logs in workdir/shop.log); (process, URL).
    The test bed's ratelimit service is pointed at the namespace's ratelimit ConfigMap first (its
    mirror plays the kubelet), and the shop asks that service for every request."""
    subprocess.run(
        [str(TESTBED_SH), "ratelimit-config", f"{namespace}/ratelimit-config"],
        env={**os.environ, "PATRON_TESTBED_DIR": str(testbed_dir)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = Env.read(testbed_dir)
    ready = workdir / "shop.url"
    ready.unlink(missing_ok=True)
    cmd = [
        sys.executable, str(SHOP_PY),
        "--namespace", namespace,
        "--kubeconfig", env["KUBECONFIG"],
        "--targets-dir", env["PROMETHEUS_TARGETS_DIR"],
        "--ratelimit-url", env["RATELIMIT_URL"],
        "--ratelimit-debug-url", env["RATELIMIT_DEBUG_URL"],
        "--ready-file", str(ready),
        "--seed", str(seed),
        *extra,
    ]  # fmt: skip
    with (workdir / "shop.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"the shop did not start; see {workdir / 'shop.log'}")
        time.sleep(0.1)
    return proc, ready.read_text().strip()


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def alerts_since(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The alerts of the webhook payloads appended to the receiver's log after byte `offset`."""
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].decode().splitlines():
        with contextlib.suppress(ValueError):
            out.extend(json.loads(line).get("alerts") or [])
    return out, offset + end


# ---------------------------------------------------------------- the terminal


class Console:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        tty = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
        self.bold = "\033[1m" if tty else ""
        self.dim = "\033[2m" if tty else ""
        self.reset = "\033[0m" if tty else ""
        self.colors = {
            "patron": "\033[36m",
            "alerts": "\033[35m",
            "shop": "\033[32m",
            "incident": "\033[33m",
            "k8s": "\033[34m",
            "error": "\033[31m",
        }
        if not tty:
            self.colors = {}

    def stamp(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:2d}:{s % 60:02d}"

    def line(self, source: str, text: str) -> None:
        color = self.colors.get(source, "")
        print(f"{self.dim}[{self.stamp()}]{self.reset} {color}{source:<8}{self.reset} {text}", flush=True)

    def block(self, text: str, indent: int = 17) -> None:
        for row in text.rstrip().splitlines():
            print(" " * indent + row, flush=True)

    def title(self, text: str) -> None:
        print(f"\n{self.bold}== {text}{self.reset}", flush=True)

    def command(self, text: str) -> None:
        print(f"{' ' * 17}{self.dim}$ {text}{self.reset}", flush=True)


# ---------------------------------------------------------------- the demo


@dataclass
class Env:
    """The test bed's exports (hack/testbed.sh env)."""

    values: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    @classmethod
    def read(cls, state: Path) -> Env:
        values = {}
        for line in (state / "env").read_text().splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export":
                name, _, value = words[1].partition("=")
                values[name] = value
        return cls(values)


@dataclass
class Milestones:
    """When each step of the story was first seen, in seconds since the incident began."""

    at: dict[str, float] = field(default_factory=dict)
    start: float = 0.0

    def reset(self) -> None:
        self.start = time.monotonic()
        self.at.clear()

    def see(self, name: str) -> bool:
        if name in self.at:
            return False
        self.at[name] = round(time.monotonic() - self.start, 1)
        return True


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state = Path(os.environ.get("PATRON_TESTBED_DIR") or ROOT / ".testbed-demo").resolve()
        self.work = self.state / "demo"
        self.out = Console()
        self.env: Env | None = None
        self.kubectl_bin = ""
        self.shop: subprocess.Popen[bytes] | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.shop_url = ""
        self.alert_offset = 0
        self.problems: list[str] = []
        self.api: Any = None
        self.seen_events: set[tuple[str, int]] = set()
        self.evaluated = False
        self.firing: set[tuple[str, str, str]] = set()  # (alertname, severity, customer) delivered firing
        self.stories: list[tuple[str, Milestones, list[incidents.Mark]]] = []

    # ------------------------------------------------------------ helpers

    def sh(self, *cmd: str, check: bool = True, input: str | None = None, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({result.returncode}):\n{result.stderr.strip()}")
        return result.stdout

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        assert self.env is not None
        return self.sh(self.kubectl_bin, f"--kubeconfig={self.env['KUBECONFIG']}", *args, check=check, input=input)

    def testbed(self, *args: str, check: bool = True, show: bool = False) -> subprocess.CompletedProcess[str]:
        """hack/testbed.sh; with `show`, its progress (stderr: tool builds, components ready) goes to the terminal."""
        return subprocess.run(
            [str(TESTBED_SH), *args],
            stdout=subprocess.PIPE,
            stderr=None if show else subprocess.PIPE,
            text=True,
            check=check,
            env={**os.environ, "PATRON_TESTBED_DIR": str(self.state)},
            timeout=1800,
        )

    def pid_file(self, name: str) -> Path:
        return self.work / "pids" / f"{name}.pid"

    def save_pid(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        self.pid_file(name).write_text(f"{proc.pid}\n")

    def ours(self, pid: int) -> bool:
        """A PID is the demo's when its command line or environment names the demo's directory."""
        marker = str(self.work).encode()
        for part in ("cmdline", "environ"):
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{pid}/{part}").read_bytes():
                    return True
        return False

    def stop_recorded(self) -> list[str]:
        """Stop the processes a kept demo left (by their PID files), the operator first."""
        stopped = []
        for name in ("operator", "shop"):
            path = self.pid_file(name)
            if not path.exists():
                continue
            pid = int(path.read_text().strip() or 0)
            if pid and self.ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    deadline = time.monotonic() + 15
                    while _alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.1)
                    if _alive(pid) and self.ours(pid):
                        os.kill(pid, signal.SIGKILL)
                stopped.append(f"{name} (pid {pid})")
            path.unlink()
        return stopped

    # ------------------------------------------------------------ setup

    def bring_up_testbed(self) -> None:
        out = self.out
        out.title("1. The test bed: a real control plane, kwok nodes, Prometheus, Alertmanager")
        was_up = self.testbed("status", check=False).returncode == 0
        owned = self.work / "owned-testbed"
        if was_up:
            left = self.stop_recorded()
            if left:
                out.line("k8s", f"stopped the previous demo's {', '.join(left)}")
        started = time.monotonic()
        if self.testbed("up", check=False, show=True).returncode != 0:
            raise RuntimeError("hack/testbed.sh up failed (its messages are above)")
        self.env = Env.read(self.state)
        self.kubectl_bin = str(Path(self.env["PATRON_TOOLS_BIN"]) / "kubectl")
        self.work.mkdir(parents=True, exist_ok=True)
        if not was_up:
            owned.touch()
        verb = "reused" if was_up else f"up in {time.monotonic() - started:.1f} s"
        out.line("k8s", f"test bed {verb}: {self.state}")
        from kubernetes import config

        self.api = config.new_client_from_config(config_file=self.env["KUBECONFIG"])
        if was_up:
            self.reset_previous_run()
        self.alert_offset = Path(self.env["ALERT_LOG"]).stat().st_size if Path(self.env["ALERT_LOG"]).exists() else 0

    def reset_previous_run(self) -> None:
        """A reused test bed: remove what an earlier demo left (release, namespace, shop metrics)."""
        assert self.env is not None
        helm = str(Path(self.env["PATRON_TOOLS_BIN"]) / "helm")
        kube = {"KUBECONFIG": self.env["KUBECONFIG"]}
        if RELEASE in self.sh(helm, "list", "-q", "-n", RELEASE_NAMESPACE, check=False, env=kube).split():
            self.sh(helm, "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", env=kube)
        if self.kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name").strip():
            self.out.line("k8s", f"deleting namespace {NAMESPACE} of an earlier run")
            self.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s")
        match = urllib.parse.quote(f'{{job="shop",namespace="{NAMESPACE}"}}')
        for path in (f"/api/v1/admin/tsdb/delete_series?match[]={match}", "/api/v1/admin/tsdb/clean_tombstones"):
            request = urllib.request.Request(self.env["PROMETHEUS_URL"] + path, method="POST")
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=30) as response:
                response.read()

    def start_the_shop(self) -> None:
        out, env = self.out, self.env
        assert env is not None
        out.title("2. The shop: checkout (3 replicas on kwok nodes), a ratelimit ConfigMap, 50 customers")
        self.kubectl("create", "namespace", NAMESPACE)
        self.kubectl("apply", "-n", NAMESPACE, "-f", str(MANIFESTS))
        out.command(f"kubectl apply -n {NAMESPACE} -f hack/demo/manifests/shop.yaml")
        self.kubectl("rollout", "status", "-n", NAMESPACE, "deployment/checkout", "--timeout=120s")
        self.shop, self.shop_url = start_shop(NAMESPACE, self.state, self.work, self.args.seed)
        self.save_pid("shop", self.shop)
        state = self.shop_state()
        tiers: dict[str, int] = {}
        for c in state["customers"].values():
            tiers[c["tier"]] = tiers.get(c["tier"], 0) + 1
        out.line(
            "shop",
            f"serving on {self.shop_url} (pid {self.shop.pid}); customers: "
            + ", ".join(f"{n} {t}" for t, n in sorted(tiers.items())),
        )
        out.line(
            "shop",
            f"capacity {state['capacity']:.0f} req/s = {state['replicas']} replicas x {SHOP_CAPACITY_PER_REPLICA:g} "
            "req/s. Prometheus scrapes it every second",
        )

    def install_patron(self) -> None:
        out, env = self.out, self.env
        assert env is not None
        out.title("3. Patron: installed with its Helm chart; the operator runs here with the chart's ServiceAccount")
        helm = str(Path(env["PATRON_TOOLS_BIN"]) / "helm")
        args = [
            "upgrade", "--install", RELEASE, str(ROOT / "charts" / "patron"),
            "--namespace", RELEASE_NAMESPACE, "--create-namespace",
            "--set-json", f'watchNamespaces=["{NAMESPACE}"]',
            "--set", f"prometheusUrl={env['PROMETHEUS_URL']}",
            "--set-json", f'alertmanagerUrls=["{env["ALERTMANAGER_URL"]}"]',
            # The demo's CustomerSLO rolls back a bad rollout: the chart grants rollback only when asked.
            "--set", "actions.rollback.enabled=true",
            # kwok pods run nothing: the chart's Deployment is scaled to 0 and the operator runs locally.
            "--set", "replicas=0",
            "--wait", "--timeout", "2m",
        ]  # fmt: skip
        self.sh(helm, *args, env={"KUBECONFIG": env["KUBECONFIG"]})
        out.command(
            f"helm install {RELEASE} charts/patron -n {RELEASE_NAMESPACE} --set watchNamespaces={{{NAMESPACE}}} "
            "--set actions.rollback.enabled=true ..."
        )
        token = self.kubectl("create", "token", SERVICE_ACCOUNT, "-n", RELEASE_NAMESPACE, "--duration=24h").strip()
        admin = yaml.safe_load(Path(env["KUBECONFIG"]).read_text())
        cluster = admin["clusters"][0]["cluster"]
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": cluster}],
            "users": [{"name": f"{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "patron",
                    "context": {"cluster": "testbed", "user": f"{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}"},
                }
            ],
            "current-context": "patron",
        }
        path = self.work / "patron.kubeconfig"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(kubeconfig))
        may = self.kubectl(
            "auth", "can-i", "patch", "configmaps", "-n", NAMESPACE,
            f"--as=system:serviceaccount:{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}", check=False,
        ).strip()  # fmt: skip
        elsewhere = self.kubectl(
            "auth", "can-i", "patch", "configmaps", "-n", "default",
            f"--as=system:serviceaccount:{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}", check=False,
        ).strip()  # fmt: skip
        out.line(
            "k8s",
            f"ServiceAccount {RELEASE_NAMESPACE}/{SERVICE_ACCOUNT}: may patch ConfigMaps in {NAMESPACE}: {may}; "
            f"in default: {elsewhere}",
        )
        self.kubectl("apply", "-f", str(SLO_FILE))
        out.command("kubectl apply -f examples/demo-customerslo.yaml")
        health, metrics = free_port(), free_port()
        cmd = [
            str(Path(sys.executable).parent / "patron"), "run",
            "--prometheus-url", env["PROMETHEUS_URL"],
            "--alertmanager-url", env["ALERTMANAGER_URL"],
            "--namespace", NAMESPACE,
            "--metrics-port", str(metrics),
            "--liveness", f"http://127.0.0.1:{health}/healthz",
        ]  # fmt: skip
        with (self.work / "operator.log").open("ab") as log:
            self.operator = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(path)},
                start_new_session=True,
            )
        self.save_pid("operator", self.operator)
        (self.work / "operator.url").write_text(f"http://127.0.0.1:{metrics}/metrics\n")
        try:
            wait_http(f"http://127.0.0.1:{health}/healthz", 60)
        except TimeoutError:
            raise RuntimeError(f"patron run did not become healthy; see {self.work / 'operator.log'}") from None
        out.line(
            "patron",
            f"patron run (pid {self.operator.pid}) as {RELEASE_NAMESPACE}/{SERVICE_ACCOUNT}, watching {NAMESPACE}",
        )

    # ------------------------------------------------------------ reading the world

    def shop_state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.shop_url + "/admin/state", timeout=10) as response:
            state: dict[str, Any] = json.load(response)
        return state

    def read(self) -> dict[str, Any]:
        """One look at everything the story is about (blocking; run in a thread)."""
        from kubernetes import client

        custom = client.CustomObjectsApi(self.api)
        core = client.CoreV1Api(self.api)
        apps = client.AppsV1Api(self.api)
        slo = custom.get_namespaced_custom_object("patron.dev", "v1alpha1", NAMESPACE, "customerslos", SLO_NAME)
        events = core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.kind=CustomerSLO,involvedObject.name={SLO_NAME}"
        ).items
        cm = core.read_namespaced_config_map("ratelimit-config", NAMESPACE)
        dep = apps.read_namespaced_deployment("checkout", NAMESPACE)
        return {
            "status": slo.get("status") or {},
            "events": sorted(events, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp),
            "throttle": (cm.data or {}).get(THROTTLE_KEY),
            "replicas": (dep.spec.replicas, dep.status.ready_replicas or 0),
            "image": dep.spec.template.spec.containers[0].image,
            "shop": self.shop_state(),
        }

    # ------------------------------------------------------------ the story

    async def monitor(
        self, ms: Milestones, kind: str, storm_customer: str | None, done: asyncio.Event, original_image: str
    ) -> None:
        """Print what changes, once a second, until `done`."""
        out = self.out
        last: dict[str, Any] = {"throttle": None, "replicas": None, "image": None, "severity": None}
        last_traffic = 0.0
        assert self.env is not None
        alert_log = Path(self.env["ALERT_LOG"])
        while not done.is_set():
            try:
                now = await asyncio.to_thread(self.read)
            except Exception as err:  # keep going: one failed look is not the end of the demo
                out.line("error", f"reading the cluster failed: {err}")
                await asyncio.sleep(2)
                continue
            status, shop = now["status"], now["shop"]
            severity = status.get("severity")
            ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
            if ready.get("status") == "True" and not self.evaluated:
                self.evaluated = True
                out.line("patron", f"first evaluation: {ready.get('message', '')}")
                out.command(f"kubectl get cslo -n {NAMESPACE}")
                out.block(self.kubectl("get", "cslo", "-n", NAMESPACE))
            if severity != last["severity"] and last["severity"] is not None:
                out.line(
                    "patron",
                    f"severity {last['severity']} -> {severity}: {status.get('impactedCustomers')} of "
                    f"{status.get('activeCustomers')} active customers impacted, weighted "
                    f"{status.get('weightedImpact', 0):.0%}, lost {status.get('lostCustomers')}, "
                    f"storming {status.get('stormingCustomers')}",
                )
                if severity != "none" and ms.see("impact detected"):
                    out.command(f"kubectl get cslo -n {NAMESPACE}")
                    out.block(self.kubectl("get", "cslo", "-n", NAMESPACE))
                    worst = ", ".join(
                        f"{i['customer']} ({i['tier']}, {i['errorRatio']:.0%} failing)"
                        for i in (status.get("impacted") or [])[:5]
                    )
                    out.line("patron", f"worst hit: {worst}")
            last["severity"] = severity
            self.show_events(now["events"], ms)
            alerts, self.alert_offset = alerts_since(alert_log, self.alert_offset)
            self.show_alerts(alerts, ms)
            if now["throttle"] != last["throttle"]:
                if now["throttle"]:
                    out.line("patron", f"throttle written: ConfigMap ratelimit-config key {THROTTLE_KEY}:")
                    entries = (yaml.safe_load(now["throttle"]) or {}).get("descriptors") or []
                    if len(entries) <= 3:
                        out.block(now["throttle"])
                    else:
                        out.block(
                            f"{len(entries)} customers limited: {', '.join(e.get('value', '*') for e in entries)}"
                        )
                    if storm_customer and storm_customer in now["throttle"]:
                        ms.see("throttle written")
                elif last["throttle"]:
                    out.line("patron", f"throttle lifted: key {THROTTLE_KEY} removed from ConfigMap ratelimit-config")
                    ms.see("throttle lifted")
                last["throttle"] = now["throttle"]
            if last["replicas"] is None or now["replicas"][0] != last["replicas"][0]:
                want = now["replicas"][0]
                if last["replicas"] is not None:
                    before = last["replicas"][0]
                    out.line(
                        "k8s",
                        f"deployment/checkout: replicas {before} -> {want}; the shop's capacity follows: "
                        f"{want * SHOP_CAPACITY_PER_REPLICA:.0f} req/s",
                    )
                    if want > before:
                        ms.see("scaled up")
                    elif want < before:
                        ms.see("scale restored")
                last["replicas"] = now["replicas"]
            if now["image"] != last["image"]:
                before = last["image"] or original_image
                if now["image"] != before:
                    out.line("k8s", f"deployment/checkout pod template image: {before} -> {now['image']}")
                    if now["image"] == original_image and "rollout started" in ms.at:
                        ms.see("rolled back")
                last["image"] = now["image"]
            others = shop["others"]
            healed = any(
                k in ms.at for k in (("rolled back",) if kind == "rollout" else ("throttle written", "scaled up"))
            )
            if healed and others["errorRatio"] < 0.01 and ms.see("errors under the objective"):
                who = f"everyone but {storm_customer}" if storm_customer else "every tier"
                out.line(
                    "shop",
                    f"{who} is served again: {others['errorRatio']:.1%} of their requests fail (last 10 s)",
                )
            if time.monotonic() - last_traffic >= 10:
                last_traffic = time.monotonic()
                self.show_traffic(shop, storm_customer)
            await asyncio.sleep(1)

    def show_events(self, events: list[Any], ms: Milestones) -> None:
        """Patron's Events on the CustomerSLO that are new, a group of more than 3 alike in one line.
        Alert Events are left out (the alerts are shown as Alertmanager delivered them)."""
        groups: dict[tuple[str, str], list[str]] = {}
        for event in events:
            key = (event.metadata.uid, event.count or 1)
            if key in self.seen_events:
                continue
            self.seen_events.add(key)
            message: str = event.message or ""
            if event.reason == "ImpactResolved":
                ms.see("impact resolved")
            if event.reason == "ActionFailed":
                self.problems.append(f"ActionFailed: {message}")
            if message.startswith("Alert ") or "no further step" in message:
                continue
            if event.reason in ("ImpactStarted", "ImpactResolved", "ActionApplied", "ActionReverted", "ActionFailed",
                                "ActionSkipped"):  # fmt: skip
                groups.setdefault((event.reason, message.split(" ", 1)[0]), []).append(message)
        for (reason, kind), messages in groups.items():
            if len(messages) <= 3:
                for message in messages:
                    self.out.line("patron", f"{reason}: {message}")
            else:
                self.out.line("patron", f"{reason}: {len(messages)} x {kind}, e.g. {messages[0]}")

    def show_traffic(self, shop: dict[str, Any], storm_customer: str | None) -> None:
        all_, others = shop["all"], shop["others"]
        gone = [n for n, c in shop["customers"].items() if c["gone"]]
        text = (
            f"{shop['load']:.0f} req/s for capacity {shop['capacity']:.0f}; failing: "
            f"{all_['errorRatio']:.1%} of all requests"
        )
        if storm_customer and shop["customers"].get(storm_customer, {}).get("mode") == "storm":
            text += f", {others['errorRatio']:.1%} of everyone else's"
        if all_["throttled"]:
            text += f"; {all_['throttled']:.0f} req/s refused by the ratelimit (429)"
        if gone:
            text += f"; gave up for now: {', '.join(sorted(gone)[:6])}" + (
                f" +{len(gone) - 6}" if len(gone) > 6 else ""
            )
        self.out.line("shop", text)

    def show_alerts(self, alerts: list[dict[str, Any]], ms: Milestones) -> None:
        """What Alertmanager delivered to the receiver: changes only (it re-notifies rarely, but may)."""
        new_slo, gone_slo, new_customers, gone_customers = [], [], [], []
        for a in alerts:
            labels = a.get("labels", {})
            name = labels.get("alertname", "")
            if name not in ("CustomerImpact", "CustomerImpacted"):
                continue
            key = (name, labels.get("severity", ""), labels.get("customer", ""))
            slo = name == "CustomerImpact"
            if a.get("status") == "firing" and key not in self.firing:
                self.firing.add(key)
                (new_slo if slo else new_customers).append(a)
            elif a.get("status") == "resolved" and key in self.firing:
                self.firing.discard(key)
                (gone_slo if slo else gone_customers).append(a)
        for a in new_slo:
            notes = a.get("annotations", {})
            self.out.line(
                "alerts",
                f"Alertmanager -> receiver: CustomerImpact {a['labels'].get('severity')} firing: "
                + notes.get("summary", ""),
            )
            self.out.block(f"impacted_customers: {notes.get('impacted_customers', '')[:200]}")
            ms.see("alert received")
        for a in gone_slo:
            still = sorted(k[1] for k in self.firing if k[0] == "CustomerImpact")
            then = f" (superseded: {', '.join(still)} firing)" if still else ""
            self.out.line(
                "alerts", f"Alertmanager -> receiver: CustomerImpact {a['labels'].get('severity')} resolved{then}"
            )
            if not still:
                ms.see("alert resolved")
        firing = sum(1 for k in self.firing if k[0] == "CustomerImpacted")
        if new_customers:
            names = sorted({a["labels"].get("customer", "") for a in new_customers})
            self.out.line(
                "alerts",
                f"{len(names)} CustomerImpacted alerts firing, one per customer (for outreach): "
                + ", ".join(names[:8])
                + (" ..." if len(names) > 8 else ""),
            )
            ms.see("per-customer alerts")
        if gone_customers:
            self.out.line(
                "alerts",
                f"{len(gone_customers)} CustomerImpacted alerts resolved"
                + (f", {firing} still firing" if firing else ""),
            )
            if not firing:
                ms.see("per-customer alerts resolved")

    async def wait_story_end(self, ms: Milestones, kind: str, began: float) -> None:
        """After the script: until this story's incident is over and Patron holds no action any more."""
        deadline = time.monotonic() + STORY_END_TIMEOUT
        while time.monotonic() < deadline:
            status = (await asyncio.to_thread(self.read))["status"]
            held = [a for a in status.get("actions") or [] if a.get("state") == "Active"]
            incident = status.get("incident") or {}
            started = incident.get("started")
            ours = started and datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() >= began
            if ours and incident.get("ended") and not held and status.get("severity") == "none":
                return
            await asyncio.sleep(1)
        self.problems.append(f"{kind}: the story did not end within {STORY_END_TIMEOUT:.0f} s of the script")

    async def play(self, name: str) -> None:
        out = self.out
        script = incidents.load(name)
        storm_customer = next((s.storm["customer"] for s in script.steps if s.storm), None)
        ms = Milestones(start=time.monotonic())
        slo = customer_slo()
        runner = incidents.Runner(
            shop_url=self.shop_url,
            namespace=NAMESPACE,
            warmup=warmup_seconds(slo, storm=storm_customer is not None),
            kube=self.api,
            say=lambda text: out.line("incident", text),
        )
        out.title(f"Incident: {script.title}")
        state = self.shop_state()
        if state["uptime"] < runner.warmup:
            out.line(
                "shop",
                f"warming up: {runner.warmup - state['uptime']:.0f} s more of normal traffic "
                + (
                    "(Patron measures a storm against each customer's rate a retryStorm.baseline earlier)"
                    if storm_customer
                    else "(a full long window, so every customer counts as active)"
                ),
            )
        began = time.time()
        done = asyncio.Event()

        def on_mark(mark: incidents.Mark) -> None:
            if mark.kind == "action" and mark.what.startswith(("storm", "rollout")):
                ms.reset()
                ms.see("storm started" if mark.what.startswith("storm") else "rollout started")
            elif mark.kind == "action" and mark.what.startswith("calm"):
                ms.see("storm ended")
            if not mark.ok:
                self.problems.append(f"{name}: {mark.what}")

        runner.on_mark = on_mark
        original_image = (await asyncio.to_thread(self.read))["image"]
        monitor = asyncio.ensure_future(self.monitor(ms, name, storm_customer, done, original_image))
        try:
            await runner.run(script)
            await self.wait_story_end(ms, name, began)
            # The last evaluation resolved the alerts: show Alertmanager delivering them.
            deadline = time.monotonic() + 10
            while "alert resolved" not in ms.at and "alert received" in ms.at and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        finally:
            done.set()
            await monitor
        out.line("patron", "the incident is over and every action is reverted")
        out.command(f"kubectl get cslo -n {NAMESPACE}")
        out.block(self.kubectl("get", "cslo", "-n", NAMESPACE))
        self.stories.append((name, ms, runner.marks))

    # ------------------------------------------------------------ the end

    def report(self) -> None:
        assert self.env is not None
        out = self.out
        out.title(f"Post-mortem: patron report {NAMESPACE}/{SLO_NAME}")
        patron = str(Path(sys.executable).parent / "patron")
        result = subprocess.run(
            [patron, "report", f"{NAMESPACE}/{SLO_NAME}", "--prometheus", self.env["PROMETHEUS_URL"]],
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": self.env["KUBECONFIG"]},
            timeout=120,
        )
        if result.returncode == 0:
            print(result.stdout.rstrip(), flush=True)
        else:
            out.line("error", f"patron report failed ({result.returncode}): {result.stderr.strip()[-500:]}")
            out.command(f"kubectl get cslo -n {NAMESPACE} {SLO_NAME} -o yaml")
            print(yaml.safe_dump({"status": self.read()["status"]}, sort_keys=False), flush=True)

    def summary(self) -> None:
        out = self.out
        out.title("Timeline (seconds after the incident began)")
        for name, ms, _ in self.stories:
            print(f"  {name}:")
            for what, at in sorted(ms.at.items(), key=lambda kv: kv[1]):
                print(f"    {at:6.1f}  {what}")
        print(f"  demo wall time: {time.monotonic() - self.out.t0:.0f} s", flush=True)

    def keep_message(self) -> None:
        assert self.env is not None
        env = self.env
        url_file = self.work / "operator.url"
        metrics = url_file.read_text().strip() if url_file.exists() else "(the operator did not start)"
        print(
            f"""
Everything keeps running. Explore (docs/demo.md):
  eval "$(PATRON_TESTBED_DIR={self.state} hack/testbed.sh env)"; export PATH=$PATRON_TOOLS_BIN:$PATH
  kubectl get cslo -n {NAMESPACE}; kubectl describe cslo -n {NAMESPACE} {SLO_NAME}
  kubectl get events -n {NAMESPACE} --field-selector involvedObject.kind=CustomerSLO
  kubectl get configmap ratelimit-config -n {NAMESPACE} -o yaml
  .venv/bin/patron report {NAMESPACE}/{SLO_NAME} --prometheus {env["PROMETHEUS_URL"]}
  Prometheus    {env["PROMETHEUS_URL"]}   (e.g. sum by (customer) (rate(http_requests_total{{code=~"5.."}}[1m])))
  Alertmanager  {env["ALERTMANAGER_URL"]}   alerts received: {env["ALERT_LOG"]}
  the shop      {self.shop_url}/admin/state
                start a storm: curl -XPOST {self.shop_url}/admin/customers/bigbot -d '{{"mode":"storm","factor":10}}'
                end it:        curl -XPOST {self.shop_url}/admin/customers/bigbot -d '{{"mode":"normal"}}'
  Patron        its own metrics: {metrics}
  logs          {self.work}/operator.log, {self.work}/shop.log
Stop everything:  make demo DEMO_ARGS=down   (or hack/demo.sh down)""",
            flush=True,
        )

    def cleanup(self) -> None:
        stop(self.operator)
        stop(self.shop)
        for name in ("operator", "shop"):
            self.pid_file(name).unlink(missing_ok=True)
        if (self.work / "owned-testbed").exists():
            self.testbed("down", check=False)
            self.out.line("k8s", f"stopped the operator, the shop and the test bed ({self.state})")
        elif self.env is not None:
            self.remove_objects()
            self.out.line("k8s", "stopped the operator and the shop; removed the demo's release and namespace")

    def remove_objects(self) -> None:
        assert self.env is not None
        helm = str(Path(self.env["PATRON_TOOLS_BIN"]) / "helm")
        self.sh(
            helm, "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, check=False, env={"KUBECONFIG": self.env["KUBECONFIG"]}
        )
        self.kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found", check=False)

    # ------------------------------------------------------------ entry points

    def run(self) -> int:
        incidents_to_play = ["storm", "rollout"] if self.args.incident == "both" else [self.args.incident]
        ok = False
        try:
            self.bring_up_testbed()
            self.start_the_shop()
            self.install_patron()
            for name in incidents_to_play:
                asyncio.run(self.play(name))
                self.report()
            self.summary()
            ok = not self.problems
        except KeyboardInterrupt:
            self.out.line("error", "interrupted")
        except Exception as err:
            self.out.line("error", str(err))
            self.problems.append(str(err))
        finally:
            if self.args.keep and self.env is not None:
                self.keep_message()
            else:
                self.cleanup()
        for problem in self.problems:
            self.out.line("error", problem)
        return 0 if ok else 1

    def down(self) -> int:
        stopped = self.stop_recorded()
        if stopped:
            print(f"stopped {', '.join(stopped)}")
        if (self.work / "owned-testbed").exists() or not (self.state / "env").exists():
            result = self.testbed("down", check=False)
            sys.stderr.write(result.stderr)
            return result.returncode
        self.env = Env.read(self.state)
        self.kubectl_bin = str(Path(self.env["PATRON_TOOLS_BIN"]) / "kubectl")
        self.remove_objects()
        print(f"removed the demo's release and namespace; the test bed in {self.state} was not the demo's: left up")
        return 0

    def status(self) -> int:
        alive = 0
        for name in ("operator", "shop"):
            path = self.pid_file(name)
            pid = int(path.read_text().strip()) if path.exists() else 0
            running = bool(pid) and self.ours(pid)
            alive += running
            print(f"{name:<9} {'pid ' + str(pid) if running else 'not running'}")
        print(self.testbed("status", check=False).stdout, end="")
        return 0 if alive == 2 else 1


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/demo.sh", description="Patron's demo on the local test bed.")
    parser.add_argument("command", nargs="?", choices=("run", "down", "status"), default="run")
    parser.add_argument("--keep", action="store_true", help="leave everything running to explore")
    parser.add_argument("--incident", choices=("storm", "rollout", "both"), default="storm")
    parser.add_argument("--seed", type=int, default=1, help="the shop's random seed")
    args = parser.parse_args(argv)
    demo = Demo(args)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.command == "down":
        return demo.down()
    if args.command == "status":
        return demo.status()
    return demo.run()


if __name__ == "__main__":
    raise SystemExit(main())
