#!/usr/bin/env python3
"""Benchmark one evaluation at 10, 1,000 and 10,000 customers against a real Prometheus.

Backfills 3 h of per-customer counters (5% of customers failing), starts Prometheus on them and
measures: wall time per evaluation (median of --repeat), Prometheus queries per evaluation, and the
peak RSS of `patron evaluate` (the operator's code path) in a fresh process.

    .venv/bin/python hack/bench/evaluate.py [--customers 10 1000 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from patron.impact.evaluate import evaluate_async  # noqa: E402
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
        server.load(openmetrics({"bench": customers(n)}, end, duration=3 * HOUR, step=60))
        load_s = time.monotonic() - started
        server.start()
        try:
            body = manifest(
                "bench",
                window="2h",
                impact={
                    "windows": [
                        {"long": "1h", "short": "5m", "burnRate": 14.4},
                        {"long": "2h", "short": "30m", "burnRate": 6},
                    ]
                },
            )
            spec = parse_spec(body["spec"])
            prom = Prometheus(server.url, timeout=60)
            at = datetime.fromtimestamp(end, UTC)
            asyncio.run(evaluate_async(spec, prom, at))  # warm Prometheus' caches once
            times, sent = [], []
            for _ in range(repeat):
                before = queries_sent()
                t0 = time.perf_counter()
                a = asyncio.run(evaluate_async(spec, prom, at))  # the operator's path: queries run concurrently
                times.append(time.perf_counter() - t0)
                sent.append(queries_sent() - before)
            assert a.active_count == n and len(a.impacted) == max(1, n // 20), (a.active_count, len(a.impacted))
            path = Path(tmp) / "slo.yaml"
            path.write_text(yaml.safe_dump(body))
            cmd = [sys.executable, "-m", "patron.cli", "evaluate", "-f", str(path), "--prometheus", server.url,
                   "--at", at.isoformat(), "-o", "json"]  # fmt: skip
            child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            _, code, usage = os.wait4(child.pid, 0)
            assert code == 0, f"patron evaluate exited {code}"
            rss_mib = usage.ru_maxrss / 1024
        finally:
            server.stop()
    return {
        "customers": n,
        "queries": statistics.median(sent),
        "planned": len(plan_queries(spec).queries),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "rss_mib": rss_mib,
        "backfill_s": load_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| customers | queries/evaluation | wall time median (max) | peak RSS of `patron evaluate` |")
    print("|---:|---:|---:|---:|")
    for n in args.customers:
        r = bench(n, args.repeat)
        print(
            f"| {n:,} | {r['queries']:.0f} (planned {r['planned']}) | {r['median_s'] * 1000:.0f} ms "
            f"({r['max_s'] * 1000:.0f} ms) | {r['rss_mib']:.0f} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
