#!/usr/bin/env python3
"""Benchmark one evaluation at 10, 1,000 and 10,000 customers against a real Prometheus.

With `--mode raw [recorded]` it prints one JSON line per size and mode instead (wall_s, queries,
bytes_downloaded, assess_s, patron_peak_rss_mib, rule_group_eval_s, slowest_queries, Prometheus' peak
RSS and series), both modes on one Prometheus holding the raw counters and Patron's recorded series
(synthesized with their exact values; `--promtool-backfill` evaluates the rules over the data
instead, level by level).

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
from typing import TextIO

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.catalog import manifest  # noqa: E402
from tests.support.promserver import PrometheusServer  # noqa: E402
from tests.support.scenarios import HOUR, Phase, changed, openmetrics, steady  # noqa: E402

from patron import metrics  # noqa: E402
from patron.api.durations import parse_duration  # noqa: E402
from patron.api.models import CustomerSLOSpec  # noqa: E402
from patron.impact.assess import Series, assess  # noqa: E402
from patron.impact.evaluate import evaluate_now  # noqa: E402
from patron.impact.prometheus import Prometheus  # noqa: E402
from patron.impact.queries import plan_queries  # noqa: E402
from patron.impact.rules import MARKER, candidates_query, coverage_query, covered_reads, rule_file, with_recorded  # noqa: E402
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


def patron_peak_rss_mib(body: dict[str, object], url: str, at: datetime) -> float:
    """VmHWM of a fresh process running `patron evaluate`'s code path (`evaluate`) on `body` at `at`,
    with a 20-minute query timeout (the CLI's 10 s fail under load at 100,000 customers, and a failed
    evaluation parses nothing): per address space, so unlike ru_maxrss it does not inherit this big
    process' peak. The evaluation must succeed."""
    probe = (
        "import json, sys; from datetime import datetime; from patron.impact.evaluate import evaluate; "
        "from patron.impact.prometheus import Prometheus; from patron.reconcile import parse_spec; "
        "a = evaluate(parse_spec(json.loads(sys.argv[1])['spec']), Prometheus(sys.argv[2], timeout=1200), "
        "datetime.fromisoformat(sys.argv[3]), 'default/bench'); assert a.active_count, a; "
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    )
    args = [json.dumps(body), url, at.isoformat()]
    done = subprocess.run([sys.executable, "-c", probe, *args], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-2]) / 1024


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
            rss_mib = patron_peak_rss_mib(body, server.url, at)
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


def _timed(timed: dict[str, float], name: str, prom: Prometheus, promql: str, at: datetime) -> Series:
    t0 = time.perf_counter()
    result = prom.query(promql, at)
    timed[name] = time.perf_counter() - t0
    return result


def _write_data(path: Path, n: int, end: float, spec: CustomerSLOSpec, recorded: bool) -> Path:
    """The bench's 4 h of counters as OpenMetrics, written 1,000 customers at a time (100,000
    customers make about 3 GB of text); with `recorded`, Patron's recorded series too (`_recorded`)."""
    with path.open("w") as out:
        everyone = customers(n)
        for i in range(0, n, 1000):
            text = openmetrics({"bench": everyone[i : i + 1000]}, end, duration=4 * HOUR, step=60, histograms=False)
            body = text.removesuffix("# EOF\n")
            out.write(body if i == 0 else body.split("\n", 1)[1])
        if recorded:
            _recorded(out, n, end, spec)
        out.write("# EOF\n")
    return path


def _recorded(out: TextIO, n: int, end: float, spec: CustomerSLOSpec) -> None:
    """Every series `patron rules` records for the bench's spec, synthesized with its exact value (the
    rate over the window of the bench's piecewise-constant traffic: what the rules compute, up to
    rate()'s extrapolation) every 5 minutes over the 4 h: the engine and the rules read them at the
    end and at 5m multiples before it. Backfilling them with promtool (`--promtool-backfill`) takes
    14 minutes at 10,000 customers and hours at 100,000."""
    failing = max(1, n // 20)
    start = 40 * MIN  # the failing customers' 50% errors, seconds before the end
    times = [end - k * 300 for k in range(48, -1, -1)]
    markers: list[str] = []
    for group in rule_file(spec, "default", "bench")["groups"]:
        for rule in group["rules"]:
            name = rule["record"]
            if name == MARKER:  # one family for every group's marker, written last
                markers.append(",".join(f'{k}="{v}"' for k, v in sorted(rule["labels"].items())))
                continue
            window = parse_duration(name.rsplit("rate", 1)[1])
            errors = ":errors:" in name
            out.write(f"# TYPE {name} gauge\n")
            for i in range(n):
                labels = f'{{customer="cust-{i:05d}",customerslo="default/bench"}}'
                for t in times:
                    overlap = max(0.0, min(t, end) - max(t - window, end - start)) if i < failing else 0.0
                    value = 0.5 * overlap / window if errors else 1.0
                    out.write(f"{name}{labels} {value!r} {t:.0f}\n")
    out.write(f"# TYPE {MARKER} gauge\n")
    out.writelines(f"{MARKER}{{{labels}}} 1 {t:.0f}\n" for labels in markers for t in times)


def _rss_mib(pid: int, field: str) -> float:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith(field)) / 1024


def run_modes(n: int, modes: list[str], repeat: int, promtool: bool) -> list[dict[str, object]]:
    """One JSON line per mode at `n` customers, both on one Prometheus (DESIGN: docs/benchmarks.md)."""
    with tempfile.TemporaryDirectory() as tmp:
        # Backfilling the rules runs them as range queries over the whole 4 h: allow them time.
        server = PrometheusServer(Path(tmp), extra_args=("--query.timeout=30m",))
        end = float(int(time.time()) // 300 * 300)  # the synthesized 5m steps end at `end`
        body = manifest("bench", window="3h", impact=BENCH_IMPACT)
        body["spec"]["recordingRules"] = {"enabled": True, "interval": "1m"}
        spec = parse_spec(body["spec"])
        load_avg = [os.getloadavg()[0]]
        t0 = time.monotonic()
        server.load_file(_write_data(Path(tmp) / "data.om", n, end, spec, recorded=not promtool))
        data_s = time.monotonic() - t0
        server.start()
        try:
            at = datetime.fromtimestamp(end, UTC)
            backfill_s = 0.0
            if promtool:
                t0 = time.monotonic()
                server.backfill_patron_rules([rule_file(spec, "default", "bench")], end - 4 * HOUR, end)
                backfill_s = time.monotonic() - t0
            # Each group's evaluation: its rules run one after another as instant queries at the
            # end, each inside count() so that the time is Prometheus computing, not JSON.
            probe = Prometheus(server.url, timeout=600)
            rule_eval: dict[str, float] = {}
            rule_share: dict[str, float] = {}
            for group in rule_file(spec, "default", "bench")["groups"]:
                t0 = time.perf_counter()
                for rule in group["rules"]:
                    probe.query(f"count({rule['expr']})", at)
                rule_eval[group["name"]] = time.perf_counter() - t0
                rule_share[group["name"]] = rule_eval[group["name"]] / parse_duration(group["interval"])
            series = {
                "raw": int(probe.query('count({__name__=~"http_.*"})', at)[0][1]),
                "recorded": int(probe.query('count({__name__=~"patron:.*"})', at)[0][1]),
            }
            out = []
            for mode in modes:
                body["spec"]["recordingRules"]["enabled"] = mode == "recorded"
                line = _measure(parse_spec(body["spec"]), n, repeat, server.url, at)
                line["patron_peak_rss_mib"] = round(patron_peak_rss_mib(body, server.url, at), 1)
                if mode == "recorded":
                    line["rule_group_eval_s"] = {k: round(v, 3) for k, v in rule_eval.items()}
                    line["rule_group_share_of_interval"] = {k: round(v, 4) for k, v in rule_share.items()}
                out.append({"customers": n, "mode": mode, **line})
            assert server.process is not None
            prometheus_rss = _rss_mib(server.process.pid, "VmHWM")
        finally:
            server.stop()
    for line in out:
        line.update(
            prometheus_peak_rss_mib=round(prometheus_rss, 1),
            series=series,
            data_load_s=round(data_s, 1),
            rules_backfill_s=round(backfill_s, 1),
            load_avg_1m=[*load_avg, os.getloadavg()[0]],  # at the start and at the end
        )
    return out


def _measure(spec: CustomerSLOSpec, n: int, repeat: int, url: str, at: datetime) -> dict[str, object]:
    """The operator's evaluation `repeat` times (plus one to warm up), then each query alone."""
    prom = Prometheus(url, timeout=600)
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
    assert not any(note.startswith("read raw") for note in a.notes) or not spec.recording_rules.enabled, a.notes
    load = os.getloadavg()[0]
    plan = plan_queries(spec)
    timed: dict[str, float] = {}
    if spec.recording_rules.enabled:
        coverage = _timed(timed, "coverage", prom, coverage_query(spec, "default/bench", plan), at)
        candidates = _timed(timed, "candidates", prom, candidates_query(spec, "default/bench"), at)
        plan = with_recorded(spec, "default/bench", covered_reads(coverage), candidates)
    results = {name: _timed(timed, name, prom, q, at) for name, q in plan.queries.items()}
    t0 = time.perf_counter()
    assess(spec, plan, results)
    assess_s = time.perf_counter() - t0
    return {
        "wall_s": round(statistics.median(walls[1:]), 3),
        "wall_s_all": [round(w, 3) for w in walls[1:]],
        "queries": max(sent),
        "bytes_downloaded": max(sizes),
        "assess_s": round(assess_s, 3),
        # Each query of one evaluation alone, one after another (no concurrency): where the time goes.
        "queries_one_by_one_s": round(sum(timed.values()), 3),
        "slowest_queries": [[k, round(v, 3)] for k, v in sorted(timed.items(), key=lambda kv: -kv[1])[:5]],
        "load_avg_1m_after_evaluations": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=6, help="evaluations per size, half with a cold budget cache")
    parser.add_argument(
        "--mode",
        choices=("raw", "recorded"),
        nargs="+",
        help="print one JSON line per size and mode: raw queries, or Patron's recorded series read",
    )
    parser.add_argument(
        "--promtool-backfill",
        action="store_true",
        help="recorded series backfilled by evaluating the rules (promtool), not synthesized",
    )
    args = parser.parse_args()
    if args.mode:
        for n in args.customers:
            for line in run_modes(n, args.mode, args.repeat, args.promtool_backfill):
                print(json.dumps(line), flush=True)
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
