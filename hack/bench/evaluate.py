#!/usr/bin/env python3
"""Benchmark one evaluation at 10, 1,000 and 10,000 customers against a real Prometheus.

Backfills 4 h of per-customer counters (5% of customers failing), starts Prometheus on them and
measures: wall time per evaluation (median of --repeat), Prometheus queries per evaluation, and the
peak RSS of `patron evaluate` (the operator's code path) in a fresh process.

    .venv/bin/python hack/bench/evaluate.py [--customers 10 1000 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.catalog import manifest  # noqa: E402
from tests.support.promserver import PrometheusServer  # noqa: E402
from tests.support.scenarios import HOUR, Phase, changed, openmetrics, steady  # noqa: E402

from patron import metrics  # noqa: E402
from patron.impact.assess import assess  # noqa: E402
from patron.impact.evaluate import evaluate_now  # noqa: E402
from patron.impact.prometheus import Prometheus  # noqa: E402
from patron.impact.queries import plan_queries  # noqa: E402
from patron.reconcile import parse_spec  # noqa: E402

MIN = 60


def customers(n: int) -> list:
    failing = max(1, n // 20)
    return [
        changed(f"cust-{i:05d}", 1.0, Phase(40 * MIN, 1.0, errors=0.5)) if i < failing else steady(f"cust-{i:05d}", 1.0)
        for i in range(n)
    ]


def queries_sent() -> float:
    return sum(s.value for m in metrics.QUERIES.collect() for s in m.samples if s.name.endswith("_total"))


def bench(n: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = PrometheusServer(Path(tmp))
        end = float(int(time.time()))
        started = time.monotonic()
        server.load(openmetrics({"bench": customers(n)}, end, duration=4 * HOUR, step=60, histograms=False))
        load_s = time.monotonic() - started
        server.start()
        try:
            body = manifest(
                "bench",
                window="3h",
                impact={
                    "windows": [
                        {"long": "1h", "short": "5m", "burnRate": 14.4},
                        {"long": "2h", "short": "30m", "burnRate": 6},
                    ]
                },
            )
            spec = parse_spec(body["spec"])
            at = datetime.fromtimestamp(end, UTC)
            times, sent = [], []
            for i in range(repeat + 1):
                if i % 2 == 0:
                    prom = Prometheus(server.url, timeout=60)  # a cold budget-window cache
                before = queries_sent()
                t0 = time.perf_counter()
                a = asyncio.run(evaluate_now(spec, prom))  # the operator's path: queries run concurrently
                times.append(time.perf_counter() - t0)
                sent.append(queries_sent() - before)
            # Run 0 only warms Prometheus' own caches; then a cached budget (odd runs) and a fresh
            # client with a cold budget cache (even runs) alternate.
            warm, cold = times[1::2], times[2::2]
            plan = plan_queries(spec)
            results = prom.run(plan)
            t0 = time.perf_counter()
            assess(spec, plan, results)
            assess_s = time.perf_counter() - t0
            assert a.active_count == n and len(a.impacted) == max(1, n // 20), (a.active_count, len(a.impacted))
            path = Path(tmp) / "slo.yaml"
            path.write_text(yaml.safe_dump(body))
            args = ["evaluate", "-f", str(path), "--prometheus", server.url, "--at", at.isoformat(), "-o", "json"]
            # VmHWM is per address space, so unlike ru_maxrss it does not inherit this big process' peak.
            peak = (
                "import sys; from patron.cli import main; main(sys.argv[1:]); "
                "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)"
            )
            done = subprocess.run([sys.executable, "-c", peak, *args], check=True, capture_output=True, text=True)
            rss_mib = int(done.stderr.split()[-2]) / 1024
        finally:
            server.stop()
    return {
        "customers": n,
        "queries": max(sent),
        "queries_warm": min(sent),
        "cold_s": statistics.median(cold),
        "warm_s": statistics.median(warm),
        "assess_s": assess_s,
        "rss_mib": rss_mib,
        "backfill_s": load_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=6, help="evaluations per size, half with a cold budget cache")
    args = parser.parse_args()
    print(
        "| customers | queries/evaluation (budget cached) | wall time, budget refreshed | wall time, budget cached "
        "| of which assess() | peak RSS of `patron evaluate` |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.customers:
        r = bench(n, args.repeat)
        print(
            f"| {n:,} | {r['queries']:.0f} ({r['queries_warm']:.0f}) | {r['cold_s'] * 1000:.0f} ms "
            f"| {r['warm_s'] * 1000:.0f} ms | {r['assess_s'] * 1000:.0f} ms | {r['rss_mib']:.0f} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
