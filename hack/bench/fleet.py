#!/usr/bin/env python3
"""Fleet benchmark: N CustomerSLOs in one `patron run` on the test bed, every one evaluated on time?

Needs a running test bed (`hack/testbed.sh up`). Starts, in this order:
- an exporter serving `bench_requests_total{service="svc-<i>",customer="c-<j>",code="200|500"}` for
  N services x 50 customers (every customer healthy: 0.1% errors);
- its own Prometheus scraping it every 10 s (the test bed's scrapes at 1 s);
- N CustomerSLOs (`interval: 30s`, alerts only) over 10 namespaces `fleet-0..9`;
- `patron run` with the test bed's admin kubeconfig, cluster-wide.

Measures from the operator's start: `all_ready_s` (every object Ready=True), then for --measure
seconds every 5 s the evaluation lag of every object (now - patron_last_evaluation_timestamp_seconds
- interval, at least 0), objects ever Ready=False (patron_customerslo_evaluation_failures_total) and
their reasons, CPU of the operator and of Prometheus, the operator's peak RSS, status writes per
second (the API server's own request counter), evaluations and Prometheus queries per second; then
deletes the namespaces and counts how often the delete handler ran per object (from the operator's
log). Prints one JSON line.

    .venv/bin/python hack/bench/fleet.py --objects 200 [--measure 600] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import read_exports  # noqa: E402
from tests.support.promserver import PROMETHEUS, free_port, wait_http  # noqa: E402

from patron.config import MAX_CONCURRENT_EVALUATIONS  # noqa: E402

CUSTOMERS = 50
NAMESPACES = 10
INTERVAL = 30.0
SCRAPE = "10s"


class FleetExporter:
    """Counters that grow at a constant rate per customer: 1 req/s, 0.1% of it failing."""

    def __init__(self, services: int) -> None:
        self.started = time.time()
        self.lines = [
            (f'bench_requests_total{{service="svc-{s}",customer="c-{c}",code="{code}"}} ', share)
            for s in range(services)
            for c in range(CUSTOMERS)
            for code, share in (("200", 0.999), ("500", 0.001))
        ]
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                elapsed = time.time() - exporter.started + 3600  # as if an hour old
                body = "".join(f"{label}{share * elapsed:.3f}\n" for label, share in exporter.lines).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def testbed_env() -> dict[str, str]:
    env_file = REPO / ".testbed" / "env"
    if not env_file.exists():
        raise SystemExit("no test bed: run hack/testbed.sh up first")
    return read_exports(env_file)


def kubectl(env: dict[str, str], *args: str, input: str | None = None) -> str:
    cmd = [str(Path(env["PATRON_TOOLS_BIN"]) / "kubectl"), f"--kubeconfig={env['KUBECONFIG']}", *args]
    return subprocess.run(cmd, input=input, capture_output=True, text=True, check=True, timeout=600).stdout


def slo(i: int) -> dict[str, Any]:
    service = f"svc-{i}"
    return {
        "apiVersion": "patron.dev/v1alpha1",
        "kind": "CustomerSLO",
        "metadata": {"name": service, "namespace": f"fleet-{i % NAMESPACES}"},
        "spec": {
            "service": service,
            "objective": 99.0,
            "window": "6h",
            "interval": f"{INTERVAL:g}s",
            # Prometheus starts empty: rate(...[1h]) is 1 req/s x (data span / 1 h), so 0.005 counts
            # every customer as active after 18 s of data instead of the default 0.05's 3 minutes.
            "customers": {"minRequestRate": 0.005},
            "indicator": {
                "ratio": {
                    "errors": f'bench_requests_total{{service="{service}",code=~"5.."}}',
                    "total": f'bench_requests_total{{service="{service}"}}',
                }
            },
            "actions": {"alert": {}},
        },
    }


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            m = SAMPLE.match(line)
            if m:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                out.append((labels, float(m.group(3))))
    return out


def total(text: str, name: str, **match: str) -> float:
    return sum(v for labels, v in samples(text, name) if all(labels.get(k) == x for k, x in match.items()))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: the peak resident set; VmRSS: the current one."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def status_patches(env: dict[str, str]) -> float:
    text = kubectl(env, "get", "--raw", "/metrics")
    return sum(
        v
        for labels, v in samples(text, "apiserver_request_total")
        if labels.get("resource") == "customerslos"
        and labels.get("subresource") == "status"
        and labels.get("verb") == "PATCH"
    )


def ready_states(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    items = [
        i
        for i in json.loads(kubectl(env, "get", "customerslos", "-A", "-o", "json"))["items"]
        if i["metadata"]["namespace"].startswith("fleet-")
    ]
    out = {}
    for item in items:
        ready = next((c for c in (item.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
        out[f"{item['metadata']['namespace']}/{item['metadata']['name']}"] = (
            ready.get("status", ""),
            ready.get("reason", ""),
        )
    return out


def teardown(env: dict[str, str], operator: subprocess.Popen[bytes] | None) -> bool:
    """Delete the namespaces; wait (at most 300 s) until the operator has given every finalizer back."""
    for ns in [f"fleet-{k}" for k in range(NAMESPACES)]:
        subprocess.run(
            [str(Path(env["PATRON_TOOLS_BIN"]) / "kubectl"), f"--kubeconfig={env['KUBECONFIG']}",
             "delete", "namespace", ns, "--wait=false", "--ignore-not-found"],
            capture_output=True, check=False,
        )  # fmt: skip
    deadline = time.monotonic() + 300
    while operator is not None and time.monotonic() < deadline:
        try:
            if not ready_states(env):
                break
        except subprocess.CalledProcessError:
            break
        time.sleep(5)
    return True


def operator_log(work: Path) -> str:
    return (work / "operator.log").read_text(errors="replace")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, required=True)
    parser.add_argument("--measure", type=float, default=600.0, help="seconds of measurement after all are Ready")
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--max-concurrent-evaluations", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="leave the CustomerSLOs and namespaces behind")
    args = parser.parse_args()
    env = testbed_env()
    n = args.objects
    work = Path(tempfile.mkdtemp(prefix="patron-fleet-"))
    exporter = FleetExporter(n)
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE},
                "scrape_configs": [
                    {"job_name": "fleet", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}
                ],
            }
        )
    )
    prom_port = free_port()
    prom_url = f"http://127.0.0.1:{prom_port}"
    procs: list[subprocess.Popen[bytes]] = []
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=(work / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    procs.append(prom)
    operator: subprocess.Popen[bytes] | None = None
    torn_down = False
    try:
        wait_http(f"{prom_url}/-/ready", timeout=120)
        # Two scrapes, so rates exist before the operator starts.
        time.sleep(25)
        namespaces = [f"fleet-{k}" for k in range(NAMESPACES)]
        kubectl(env, "apply", "--server-side", "-f", str(REPO / "crds" / "customerslo.yaml"))
        kubectl(env, "wait", "--for=condition=Established", "crd/customerslos.patron.dev", "--timeout=60s")
        kubectl(env, "apply", "-f", "-", input=yaml.safe_dump_all(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces]))  # fmt: skip
        for start in range(0, n, 200):
            kubectl(
                env,
                "apply",
                "--server-side",
                "-f",
                "-",
                input=yaml.safe_dump_all([slo(i) for i in range(start, min(n, start + 200))]),
            )
        metrics_port = free_port()
        cmd = [sys.executable, "-m", "patron.cli", "run", f"--prometheus-url={prom_url}",
               f"--alertmanager-url={env['ALERTMANAGER_URL']}", f"--metrics-port={metrics_port}",
               *(f"--namespace={ns}" for ns in namespaces)]  # fmt: skip
        if args.max_concurrent_evaluations:
            cmd.append(f"--max-concurrent-evaluations={args.max_concurrent_evaluations}")
        started = time.monotonic()
        operator = subprocess.Popen(
            cmd, stdout=(work / "operator.log").open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]}, cwd=REPO,
        )  # fmt: skip
        procs.append(operator)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        all_ready_s = None
        while time.monotonic() - started < args.ready_timeout:
            time.sleep(5)
            states = ready_states(env)
            if len(states) == n and all(s == "True" for s, _ in states.values()):
                all_ready_s = round(time.monotonic() - started, 1)
                break
        if all_ready_s is None:
            print(f"not all Ready after {args.ready_timeout:.0f} s", file=sys.stderr)
        # Measurement.
        text = scrape(metrics_url)
        failures0 = {
            (labels["namespace"], labels["customerslo"], labels["reason"]): v
            for labels, v in samples(text, "patron_customerslo_evaluation_failures_total")
        }
        queries0 = total(text, "patron_prometheus_queries_total")
        evaluations0 = total(text, "patron_evaluations_total")
        patches0 = status_patches(env)
        op_cpu0, prom_cpu0, t0 = cpu_seconds(operator.pid), cpu_seconds(prom.pid), time.monotonic()
        load0 = os.getloadavg()
        lags: list[float] = []
        ever_false: dict[str, str] = {}
        while time.monotonic() - t0 < args.measure:
            time.sleep(5)
            text = scrape(metrics_url)
            now = time.time()
            for _labels, ts in samples(text, "patron_last_evaluation_timestamp_seconds"):
                lags.append(max(0.0, now - ts - INTERVAL))
            for labels, v in samples(text, "patron_customerslo_evaluation_failures_total"):
                key = (labels["namespace"], labels["customerslo"], labels["reason"])
                if v > failures0.get(key, 0.0):
                    ever_false[f"{key[0]}/{key[1]}"] = key[2]
        elapsed = time.monotonic() - t0
        text = scrape(metrics_url)
        result = {
            "objects": n,
            "customers_per_object": CUSTOMERS,
            "interval_s": INTERVAL,
            "max_concurrent_evaluations": args.max_concurrent_evaluations or MAX_CONCURRENT_EVALUATIONS,
            "measure_s": round(elapsed),
            "all_ready_s": all_ready_s,
            "lag_p50_s": round(percentile(lags, 0.50), 1),
            "lag_p95_s": round(percentile(lags, 0.95), 1),
            "lag_max_s": round(max(lags, default=float("nan")), 1),
            "ready_false_objects": len(ever_false),
            "ready_false_reasons": dict(sorted(Counter(ever_false.values()).items())),
            "operator_cpu_cores": round((cpu_seconds(operator.pid) - op_cpu0) / elapsed, 2),
            "operator_peak_rss_mib": round(rss_mib(operator.pid)),
            "operator_rss_end_mib": round(rss_mib(operator.pid, "VmRSS")),
            "status_writes_per_s": round((status_patches(env) - patches0) / elapsed, 2),
            "evaluations_per_s": round((total(text, "patron_evaluations_total") - evaluations0) / elapsed, 1),
            "prometheus_queries_per_s": round((total(text, "patron_prometheus_queries_total") - queries0) / elapsed, 1),
            "prometheus_cpu_cores": round((cpu_seconds(prom.pid) - prom_cpu0) / elapsed, 2),
            "load_average_1m": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        }
        if not args.keep:
            torn_down = teardown(env, operator)
            runs = operator_log(work).count("Handler 'on_delete' ")  # one line per run: succeeded or failed
            result["delete_handler_runs_per_object"] = round(runs / n, 2)
        print(json.dumps(result))
        return 0
    finally:
        if not args.keep and not torn_down:
            teardown(env, operator)
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        exporter.server.shutdown()
        print(f"logs in {work}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
