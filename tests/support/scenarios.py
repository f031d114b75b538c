"""Deterministic per-customer traffic, rendered as OpenMetrics for `promtool tsdb create-blocks-from`.

A customer's traffic is piecewise constant: `Phase(since, rps, errors, slow)` holds from `since`
seconds before the scenario's end until the next phase. Counters are the exact integral of that,
so every rate Prometheus computes over the data is known in advance. A phase with `scraped=False`
writes no samples (a scrape gap) while the counters go on counting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

HOUR = 3600
BUCKETS = (0.1, 0.3, 1.0)  # histogram bounds; "+Inf" is added


@dataclass(frozen=True)
class Phase:
    since: float  # seconds before the end at which this phase begins
    rps: float
    errors: float = 0.0  # fraction of requests answered 5xx
    slow: float = 0.0  # fraction of requests slower than 0.3 s (latency scenarios)
    scraped: bool = True  # False: no samples during this phase (target down, Prometheus restarting)


@dataclass(frozen=True)
class Customer:
    name: str
    phases: tuple[Phase, ...]

    def at(self, before_end: float) -> Phase:
        """The phase in force `before_end` seconds before the end (phases sorted earliest first)."""
        current = Phase(float("inf"), 0.0)
        for phase in sorted(self.phases, key=lambda p: -p.since):
            if phase.since >= before_end:
                current = phase
        return current


def steady(name: str, rps: float, errors: float = 0.0, slow: float = 0.0) -> Customer:
    return Customer(name, (Phase(10 * 24 * HOUR, rps, errors, slow),))


def changed(name: str, rps: float, *changes: Phase) -> Customer:
    """Healthy at `rps` from the start, then each change from its `since` on."""
    return Customer(name, (Phase(10 * 24 * HOUR, rps), *changes))


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def openmetrics(
    services: Mapping[str, Sequence[Customer]],
    end: float,
    duration: float = 7 * HOUR,
    step: float = 30.0,
    label: str = "customer",
    histograms: bool = True,
    ahead: float = 0.0,
) -> str:
    """Counters http_requests_total{code=200|500} and (unless `histograms` is off) the histogram
    http_request_duration_seconds, one set of series per (service, customer).

    `ahead` seconds of samples past `end` continue each customer's last phase: a Prometheus that
    scrapes nothing serves them as they fall due, so a live evaluation at any time in [end, end +
    ahead] sees current data with the end's phases, while queries at `end` see exactly the scenario."""
    times = [end - duration + i * step for i in range(int((duration + ahead) // step) + 1)]
    lines = ["# TYPE http_requests counter"]
    hist: list[str] = ["# TYPE http_request_duration_seconds histogram"]
    for service, c in ((s, c) for s, cs in services.items() for c in cs):
        base = f'{label}="{escape_label(c.name)}",service="{service}"'
        ok = err = slow = 0.0
        ok_rows, err_rows, count_rows, fast_rows = [], [], [], []
        for t in times:
            phase = c.at(end - t)
            ok += phase.rps * (1 - phase.errors) * step
            err += phase.rps * phase.errors * step
            slow += phase.rps * phase.slow * step
            if not phase.scraped:
                continue
            ok_rows.append(f"{ok:.6f} {t:.3f}")
            err_rows.append(f"{err:.6f} {t:.3f}")
            count_rows.append(f"{ok + err:.6f} {t:.3f}")
            fast_rows.append(f"{ok + err - slow:.6f} {t:.3f}")
        lines += [f'http_requests_total{{{base},code="200"}} {r}' for r in ok_rows]
        lines += [f'http_requests_total{{{base},code="500"}} {r}' for r in err_rows]
        # Buckets <= 0.3 hold the fast requests; 1 and +Inf hold all of them.
        for le in BUCKETS:
            rows = fast_rows if le <= 0.3 else count_rows
            hist += [f'http_request_duration_seconds_bucket{{{base},le="{le:g}"}} {r}' for r in rows]
        hist += [f'http_request_duration_seconds_bucket{{{base},le="+Inf"}} {r}' for r in count_rows]
        hist += [f"http_request_duration_seconds_count{{{base}}} {r}" for r in count_rows]
    return "\n".join([*lines, *(hist if histograms else []), "# EOF", ""])


def many(prefix: str, count: int, rps: float) -> Iterable[Customer]:
    return (steady(f"{prefix}{i:03d}", rps) for i in range(count))
