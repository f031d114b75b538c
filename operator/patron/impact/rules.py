"""Patron's own recording rules for one CustomerSLO: pure, no I/O.

A chain of per-customer rates, each level read by the next, so no rule reads a raw range longer
than S, the shortest window:

- level 0 (every `recordingRules.interval`): patron:<kind>:rate<S> = sum by (customer) (rate(raw[S]));
- level 1 (same group, each rule right after the one it reads): every other impact window W from
  the longest recorded window V that divides it, as W/V back-to-back blocks:
  patron:<kind>:rate<W> = avg of patron:<kind>:rate<V> offset 0, V, 2V, ... (W - V); the blocks
  line up because the group evaluates every interval and V is a multiple of it. A window that no
  shorter one divides is the mean of level 0 over the last W - S (edges of S weigh less);
- level 2 (a coarser group): the budget window B from M, the coarsest impact window that divides
  it (S when none does), one point every M:
  patron:<kind>:rate<B> = sum_over_time(patron:<kind>:rate<M>[B-1s:M]) * M / B (absent points
  count as zero, as raw rate() counts a customer's missing past as no requests).

Every recorded series keeps the customer label and carries customerslo="<ns>/<name>".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from patron.api.durations import format_duration, parse_duration
from patron.api.models import CustomerSLOSpec
from patron.api.selectors import Matcher, Selector
from patron.impact.assess import Series, by_label
from patron.impact.queries import (
    BASELINE_COVERAGE,
    FRESHNESS,
    QueryPlan,
    Read,
    nonzero,
    plan_queries,
    series_selectors,
    unfiltered,
)

SLO_LABEL = "customerslo"
# Candidates named in the filtered queries at most; with more, each filtered query recomputes them
# in PromQL instead (slower for Prometheus, the same answer). 10,000 names make a ~150 kB query.
LISTED_CANDIDATES = 10_000
REGEX_META = frozenset("\\.+*?()|[]{}^$")
BLOCK_LABEL = "patron_block"
# One series per rule group, 1 wherever the group was evaluated, labelled with a digest of the group.
MARKER = "patron:rules:evaluated"
DIGEST_LABEL = "patron_rules"
BUDGET_GROUP_MAX_INTERVAL = 300  # seconds: Prometheus' default lookback; a sparser series would vanish


@dataclass(frozen=True)
class RecordedLayout:
    """Which windows Patron records for a spec, and at which level (seconds)."""

    shortest: int  # S: the only raw range
    impact: tuple[int, ...]  # every impact window, S first
    budget: int | None  # B when it is not an impact window, else None
    coarsest: int  # M: the longest impact window dividing B (else S), the budget level's input

    def depth(self, window: int, offset: int = 0) -> int:
        """How far back level 0 must reach for `window` read at `offset` to be complete.

        Level 1 at t averages level 0 over [t - (W - S), t]; the budget level's first point is
        M after t - B, where level M reaches back M - S: B - S in both cases.
        """
        return offset + window - self.shortest


def layout(spec: CustomerSLOSpec) -> RecordedLayout:
    rows = spec.impact.windows
    impact = sorted({parse_duration(w.short) for w in rows} | {parse_duration(w.long) for w in rows})
    budget = parse_duration(spec.window)
    return RecordedLayout(
        shortest=impact[0],
        impact=tuple(impact),
        budget=None if budget in impact else budget,
        coarsest=max((w for w in impact if budget % w == 0), default=impact[0]),
    )


def span(seconds: int) -> str:
    """A duration in its largest whole unit (30d, 355m, 45s): one spelling per window in series names."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def series_name(kind: str, window: int) -> str:
    return f"patron:{kind}:rate{span(window)}"


def kinds(spec: CustomerSLOSpec) -> tuple[str, str]:
    """(total kind, bad kind): requests and errors, or requests and good_requests (latency)."""
    _, _, bad_is_good = series_selectors(spec)
    return "requests", "good_requests" if bad_is_good else "errors"


def recorded(kind: str, window: int, slo: str, only: Matcher | None = None) -> str:
    """The selector of one recorded series of CustomerSLO `slo` ("<ns>/<name>"), of the customers
    `only` matches when given."""
    return Selector(series_name(kind, window), (Matcher(SLO_LABEL, "=", slo), *([only] if only else []))).render()


def _rule(kind: str, window: int, expr: str, slo: str) -> dict[str, Any]:
    return {"record": series_name(kind, window), "expr": expr, "labels": {SLO_LABEL: slo}}


def _blocks(base: str, size: int, window: int) -> str:
    """The mean of `base` (a rate over `size`) at offsets 0, size, 2 size, ... < window: the rate over
    `window` as window/size back-to-back blocks. A block without a sample is left out of the mean."""
    terms = [f'label_replace({base}{_offset(k * size)}, "{BLOCK_LABEL}", "{k}", "", "")' for k in range(window // size)]
    return f"avg without ({BLOCK_LABEL}) ({' or '.join(terms)})"


def rule_groups(spec: CustomerSLOSpec, slo: str) -> list[dict[str, Any]]:
    """The rule groups (Prometheus rule-file `groups:` entries) for CustomerSLO `slo` ("<ns>/<name>")."""
    lay = layout(spec)
    total, bad, _ = series_selectors(spec)
    interval = parse_duration(spec.recording_rules.interval)
    s, m = lay.shortest, lay.coarsest
    fast = [
        _rule(kind, s, f"sum by ({spec.customer_label}) (rate({sel.render()}[{span(s)}]))", slo)
        for kind, sel in zip(kinds(spec), (total, bad), strict=True)
    ]
    for i, w in enumerate(lay.impact[1:], start=1):
        base = max(v for v in lay.impact[:i] if w % v == 0) if w % s == 0 else None
        for kind in kinds(spec):
            fast.append(
                _rule(
                    kind,
                    w,
                    _blocks(recorded(kind, base, slo), base, w)
                    if base
                    else f"avg_over_time({recorded(kind, s, slo)}[{span(w - s)}])",
                    slo,
                )
            )
    groups: list[dict[str, Any]] = [{"name": f"patron:{slo}", "interval": span(interval), "rules": fast}]
    if lay.budget is not None:
        b = lay.budget
        # B/M points, whatever the phase: a closed range of B would hold one more when t is a multiple of M.
        budget_range = format_duration(b - 1)
        budget = [
            _rule(kind, b, f"sum_over_time({recorded(kind, m, slo)}[{budget_range}:{span(m)}]) * {m} / {b}", slo)
            for kind in kinds(spec)
        ]
        every = span(max(interval, min(s, BUDGET_GROUP_MAX_INTERVAL)))
        groups.append({"name": f"patron:{slo}:budget", "interval": every, "rules": budget})
    return [_marked(g, slo) for g in groups]


def _marked(group: dict[str, Any], slo: str) -> dict[str, Any]:
    """`group` with a last rule recording one series, 1, labelled with a digest of the group (its
    rules and interval): where that series exists, these very rules were evaluated, so the coverage
    query checks one series instead of every customer's."""
    digest = hashlib.sha256(json.dumps([group["interval"], group["rules"]], sort_keys=True).encode()).hexdigest()
    marker = {"record": MARKER, "expr": "vector(1)", "labels": {SLO_LABEL: slo, DIGEST_LABEL: digest[:16]}}
    return {**group, "rules": [*group["rules"], marker]}


def rule_file(spec: CustomerSLOSpec, namespace: str, name: str) -> dict[str, Any]:
    """A Prometheus rule file (`promtool check rules`)."""
    return {"groups": rule_groups(spec, f"{namespace}/{name}")}


def rule_name(name: str) -> str:
    """The name of CustomerSLO `name`'s PrometheusRule."""
    return f"patron-{name}"


def prometheus_rule(
    spec: CustomerSLOSpec, namespace: str, name: str, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The same groups as a Prometheus Operator PrometheusRule `patron-<name>`, labelled with
    `labels` (the operator's --prometheus-rule-label) and spec.recordingRules.labels, which win."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": rule_name(name),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "patron", **(labels or {}), **spec.recording_rules.labels},
        },
        "spec": rule_file(spec, namespace, name),
    }


def _kind(spec: CustomerSLOSpec, read: Read) -> str:
    total, bad = kinds(spec)
    return total if read.kind == "total" else bad


def _offset(seconds: int) -> str:
    return f" offset {span(seconds)}" if seconds else ""


def _recordable(lay: RecordedLayout, plan: QueryPlan) -> list[Read]:
    """The reads taken from recorded series when covered: all but S itself, which is always read
    raw (the freshest signal, and the cheapest raw range; a recorded one lags up to an interval)."""
    return [r for r in plan.reads.values() if (r.window, r.offset) != (lay.shortest, 0)]


def coverage_query(spec: CustomerSLOSpec, slo: str, plan: QueryPlan) -> str:
    """One query: a series {window, offset} for each total read the recorded series cover now.

    Covered: the group recording the window (these rules: the marker's digest) was evaluated at the
    read's offset, and level 0's group `layout.depth` ago, so the level built from it was complete
    (not warming up). Each check reads one marker series, whatever the number of customers.
    """
    lay = layout(spec)
    groups = rule_groups(spec, slo)
    fast, budget = (_marker(g, slo) for g in (groups[0], groups[-1]))
    parts = [
        f"label_replace(label_replace(count({budget if r.window == lay.budget else fast}{_offset(r.offset)})"
        f" and count({fast}{_offset(lay.depth(r.window, r.offset))}),"
        f' "window", "{r.window}", "", ""), "offset", "{r.offset}", "", "")'
        for r in sorted({r for r in _recordable(lay, plan) if r.kind == "total"}, key=lambda r: (r.window, r.offset))
    ]
    return " or ".join(parts)


def _marker(group: dict[str, Any], slo: str) -> str:
    digest = group["rules"][-1]["labels"][DIGEST_LABEL]
    return Selector(MARKER, (Matcher(SLO_LABEL, "=", slo), Matcher(DIGEST_LABEL, "=", digest))).render()


def with_recorded(
    spec: CustomerSLOSpec, slo: str, covered: set[tuple[int, int]], candidates: Series | None = None
) -> QueryPlan:
    """The plan reading the recorded series for every (window, offset) in `covered`, raw otherwise.

    The bad series of a window are read the same way as its total, so a ratio never mixes the two.
    Once the candidate filter's own reads are covered the plan is bounded (`_bounded`): with
    `candidates` (the result of `candidates_query`, at most LISTED_CANDIDATES customers) every
    filtered query names them in its selectors, so Prometheus reads only their series; without
    (or with more), each filtered query recomputes the candidates in PromQL.
    """
    _, _, bad_is_good = series_selectors(spec)
    label = spec.customer_label
    bounded = _candidate_reads(spec) <= covered
    names = sorted(by_label(candidates, label)) if candidates is not None else None
    listed = bounded and names is not None and len(names) <= LISTED_CANDIDATES
    only = Matcher(label, "=~", "|".join(_literal(n) for n in names)) if listed and names else None
    plan = plan_queries(spec, only)
    keep = unfiltered(spec)
    queries = dict(plan.queries)
    recordable = {(r.window, r.offset) for r in _recordable(layout(spec), plan)}
    taken = {name for name, r in plan.reads.items() if (r.window, r.offset) in covered & recordable}
    for name in taken:
        r = plan.reads[name]
        narrow = None if name in keep else only
        queries[name] = f"{recorded(_kind(spec, r), r.window, slo, narrow)}{_offset(r.offset)}{nonzero(r, bad_is_good)}"
    raw = sorted(recordable - covered)
    plan = replace(plan, recorded=frozenset(taken))
    if not bounded:
        return replace(plan, queries=queries, raw=tuple(span(w) + _offset(o) for w, o in raw))
    filtered = (plan.reads.keys() - keep) | {BASELINE_COVERAGE}
    if not listed:
        cand = _candidates(spec, slo)
        queries = {n: f"({q}) and on ({label}) ({cand})" if n in filtered else q for n, q in queries.items()}
    elif not names:  # no candidate: nothing to ask
        queries = {n: q for n, q in queries.items() if n not in filtered}
    return _bounded(spec, slo, replace(plan, queries=queries, raw=tuple(span(w) + _offset(o) for w, o in raw)))


def candidates_query(spec: CustomerSLOSpec, slo: str) -> str:
    """The customers over some row's burn threshold in its long window, or storming: one series each."""
    return _candidates(spec, slo)


def _literal(name: str) -> str:
    """`name` as an RE2 literal: only the metacharacters escaped, so Prometheus still reads an
    alternation of such literals as a set of values (an index lookup per name, no scan)."""
    return "".join("\\" + ch if ch in REGEX_META else ch for ch in name)


def _candidate_reads(spec: CustomerSLOSpec) -> set[tuple[int, int]]:
    """The reads the candidate filter takes from recorded series: each row's long window, L offset baseline."""
    long_ = parse_duration(spec.first_window.long)
    return {(parse_duration(r.long), 0) for r in spec.impact.windows} | {
        (long_, parse_duration(spec.impact.retry_storm.baseline))
    }


def _candidates(spec: CustomerSLOSpec, slo: str) -> str:
    """Customers over some row's burn threshold in its long window, or storming (PromQL, `group by`).

    Thresholds are lowered by 0.1% so that floating-point rounding never drops a customer the
    exact check in `assess` would count; `assess` decides, the filter only bounds the response.
    """
    label = spec.customer_label
    total_kind, bad_kind = kinds(spec)
    _, _, bad_is_good = series_selectors(spec)
    parts = []
    for row in spec.impact.windows:
        w = parse_duration(row.long)
        ratio = f"{recorded(bad_kind, w, slo)} / on ({label}) {recorded(total_kind, w, slo)}"
        errors = f"(1 - {ratio})" if bad_is_good else f"({ratio})"
        parts.append(f"group by ({label}) ({errors} >= {0.999 * row.burn_rate * spec.error_budget!r})")
    total, _, _ = series_selectors(spec)
    s, long_ = layout(spec).shortest, parse_duration(spec.first_window.long)
    baseline = parse_duration(spec.impact.retry_storm.baseline)
    storm = (
        f"sum by ({label}) (rate({total.render()}[{span(s)}])) >= on ({label}) "
        f"{0.999 * spec.impact.retry_storm.amplification!r} * {recorded(total_kind, long_, slo)}{_offset(baseline)}"
    )
    parts.append(f"group by ({label}) ({storm})")
    return " or ".join(parts)


def _bounded(spec: CustomerSLOSpec, slo: str, plan: QueryPlan) -> QueryPlan:
    """`plan`, its filtered queries narrowed to the candidates, with the bounded FRESHNESS query: the
    customers without a fresh sample (an age, or time() when they have none within the lookback)
    and, unlabelled, the newest age.

    A candidate keeps its presence in each window (absent is unknown, present with 0 is known);
    a customer that is not a candidate is neither impacted, lost nor storming whatever its other
    windows hold.
    """
    label = spec.customer_label
    long_ = parse_duration(spec.first_window.long)
    total, _, _ = series_selectors(spec)
    age = f"(time() - max by ({label}) (timestamp({total.render()})))"
    active = f"group by ({label}) ({recorded(kinds(spec)[0], long_, slo)})"
    freshness = (
        f"{age} > {parse_duration(spec.impact.stale_after)} or on ({label}) "
        f"(({active} unless on ({label}) {age}) * 0 + time()) or min({age})"
    )
    return replace(plan, queries={**plan.queries, FRESHNESS: freshness}, bounded=True)


def covered_reads(series: Series) -> set[tuple[int, int]]:
    """The (window, offset) pairs of a coverage_query result."""
    return {(int(labels["window"]), int(labels["offset"])) for labels, _ in series}
