#!/usr/bin/env python3
"""Benchmark one evaluation at 10, 1,000 and 10,000 customers against a real Prometheus.

With `--mode raw|recorded` it prints one JSON line per size instead (wall_s, queries,
bytes_downloaded, assess_s, patron_peak_rss_mib, rule_group_eval_s, Prometheus' peak RSS and series):
recorded backfills Patron's recording rules over the data first (promtool, level by level).

Backfills 4 h of per-customer counters (5% of customers failing), starts Prometheus on them and
measures: wall time per evaluation (median of --repeat), Prometheus queries per evaluation, and the
peak RSS of `patron evaluate` (the operator's code path) in a fresh process.

    .venv/bin/python hack/bench/evaluate.py [--customers 10 1000 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from patron.api.models import CustomerSLOSpec  # noqa: E402
from patron.impact.assess import assess  # noqa: E402
from patron.impact.evaluate import evaluate_now  # noqa: E402
from patron.impact.prometheus import Prometheus  # noqa: E402
from patron.impact.queries import plan_queries  # noqa: E402
from patron.impact.rules import coverage_query, covered_reads, rule_file, with_recorded  # noqa: E402
from patron.reconcile import parse_spec  # noqa: E402

MIN = 60
BENCH_IMPACT = {
    "windows": [{"long": "1h", "short": "5m", "burnRate": 14.4}, {"long": "2h", "short": "30m", "burnRate": 6}]
}


def customers(n: int) -> list:
    failing = max(1, n // 20)
    return [
        changed(f"cust-{i:05d}", 1.0, Phase(40 * MIN, 1.0, errors=0.5)) if i < failing else steady(f"cust-{i:05d}", 1.0)
        for i in range(n)
    ]


def queries_sent() -> float:
    return sum(s.value for m in metrics.QUERIES.collect() for s in m.samples if s.name.endswith("_total"))


def patron_peak_rss_mib(tmp: Path, body: dict[str, object], url: str, at: datetime) -> float:
    """VmHWM of a fresh `patron evaluate` of `body` at `at`: per address space, so unlike ru_maxrss
    it does not inherit this big process' peak."""
    path = tmp / "slo.yaml"
    path.write_text(yaml.safe_dump(body))
    args = ["evaluate", "-f", str(path), "--prometheus", url, "--at", at.isoformat(), "-o", "json"]
    peak = (
        "import sys; from patron.cli import main; main(sys.argv[1:]); "
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", peak, *args], check=True, capture_output=True, text=True)
    return int(done.stderr.split()[-2]) / 1024


def bench(n: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = PrometheusServer(Path(tmp))
        end = float(int(time.time()))
        started = time.monotonic()
        server.load(openmetrics({"bench": customers(n)}, end, duration=4 * HOUR, step=60, histograms=False))
        load_s = time.monotonic() - started
        server.start()
        try:
            body = manifest("bench", window="3h", impact=BENCH_IMPACT)
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
            rss_mib = patron_peak_rss_mib(Path(tmp), body, server.url, at)
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


def _levels(spec: CustomerSLOSpec, workdir: Path) -> list[Path]:
    """The rule file split into levels for `promtool tsdb create-blocks-from rules` (each reads the one before)."""
    fast, *budget = rule_file(spec, "default", "bench")["groups"]
    paths = []
    for level, rules in enumerate([fast["rules"][i : i + 2] for i in range(0, len(fast["rules"]), 2)] + [[]]):
        groups = [{**fast, "name": f"{fast['name']}:{level}", "rules": rules}] if rules else budget
        if groups:
            path = workdir / f"level{level}.yaml"
            path.write_text(yaml.safe_dump({"groups": groups}))
            paths.append(path)
    return paths


def _rss_mib(pid: int, field: str) -> float:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith(field)) / 1024


def run_mode(n: int, mode: str, repeat: int) -> dict[str, object]:
    """One JSON line: `--mode raw|recorded` at `n` customers (DESIGN: docs/benchmarks.md)."""
    with tempfile.TemporaryDirectory() as tmp:
        # Backfilling the rules runs them as range queries over the whole 4 h: allow them time.
        server = PrometheusServer(Path(tmp), extra_args=("--query.timeout=30m",))
        end = float(int(time.time()))
        server.load(openmetrics({"bench": customers(n)}, end, duration=4 * HOUR, step=60, histograms=False))
        server.start()
        try:
            body = manifest("bench", window="3h", impact=BENCH_IMPACT)
            body["spec"]["recordingRules"] = {"enabled": mode == "recorded", "interval": "1m"}
            spec = parse_spec(body["spec"])
            at = datetime.fromtimestamp(end, UTC)
            rule_eval: dict[str, float] = {}
            backfill_s = 0.0
            if mode == "recorded":
                t0 = time.monotonic()
                server.backfill_rules(_levels(spec, Path(tmp)), end - 4 * HOUR, end)
                backfill_s = time.monotonic() - t0
                # Each group's evaluation: its rules run one after another as instant queries at the end.
                probe = Prometheus(server.url, timeout=120)
                for group in rule_file(spec, "default", "bench")["groups"]:
                    t0 = time.perf_counter()
                    for rule in group["rules"]:
                        probe.query(rule["expr"], at)
                    rule_eval[group["name"]] = time.perf_counter() - t0
            prom = Prometheus(server.url, timeout=120)
            downloaded = [0]
            request = prom._client._session.request

            def counting(*args: object, **kwargs: object) -> object:
                response = request(*args, **kwargs)  # type: ignore[arg-type]
                downloaded[0] += len(response.content)
                return response

            prom._client._session.request = counting  # type: ignore[method-assign]
            walls, sent, sizes = [], [], []
            for _ in range(repeat + 1):
                prom._budget_cache.clear()  # every run sends every query: the worst case
                before, bytes_before = queries_sent(), downloaded[0]
                t0 = time.perf_counter()
                a = asyncio.run(evaluate_now(spec, prom, "default/bench", at))
                walls.append(time.perf_counter() - t0)
                sent.append(queries_sent() - before)
                sizes.append(downloaded[0] - bytes_before)
            assert a.active_count == n and len(a.impacted) == max(1, n // 20), (a.active_count, len(a.impacted))
            assert not any(note.startswith("read raw") for note in a.notes) or mode == "raw", a.notes
            plan = plan_queries(spec)
            if mode == "recorded":
                coverage = prom.query(coverage_query(spec, "default/bench", plan), at)
                plan = with_recorded(spec, "default/bench", plan, covered_reads(coverage))
            results = prom.run(plan, at)
            t0 = time.perf_counter()
            assess(spec, plan, results)
            assess_s = time.perf_counter() - t0
            series = prom.query('count({__name__!=""})', at)[0][1]
            rss_mib = patron_peak_rss_mib(Path(tmp), body, server.url, at)
            assert server.process is not None
            prometheus_rss = _rss_mib(server.process.pid, "VmHWM")
        finally:
            server.stop()
    return {
        "customers": n,
        "mode": mode,
        "wall_s": round(statistics.median(walls[1:]), 3),
        "queries": max(sent),
        "bytes_downloaded": max(sizes),
        "assess_s": round(assess_s, 3),
        "patron_peak_rss_mib": round(rss_mib, 1),
        "rule_group_eval_s": {k: round(v, 3) for k, v in rule_eval.items()},
        "prometheus_peak_rss_mib": round(prometheus_rss, 1),
        "series": int(series),
        "rules_backfill_s": round(backfill_s, 1),
        "load_avg_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=6, help="evaluations per size, half with a cold budget cache")
    parser.add_argument(
        "--mode",
        choices=("raw", "recorded"),
        help="print one JSON line per size: raw queries, or Patron's recording rules backfilled and read",
    )
    args = parser.parse_args()
    if args.mode:
        for n in args.customers:
            print(json.dumps(run_mode(n, args.mode, args.repeat)), flush=True)
        return
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
