"""Customer impact from query results: pure functions, no I/O.

Notation (DESIGN.md): S and L are the short and long window of the first impact.windows row;
rate(c, w) and errorRatio(c, w) come from the grouped queries of `patron.impact.queries`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from patron.api.durations import parse_duration
from patron.api.models import SEVERITY_ORDER, CustomerSLOSpec, Tier
from patron.api.regex import compile_re2
from patron.impact.queries import (
    BASELINE_COVERAGE,
    FAMILIES,
    FRESHNESS,
    QueryPlan,
    bad_key,
    series_selectors,
    total_key,
)

NO_TIER = "none"

# One query's result: (labels, value) per series.
Series = Sequence[tuple[Mapping[str, str], float]]


class DataProblem(Exception):
    """The data cannot be trusted; nothing may be concluded or acted on. `reason` is CamelCase."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CustomerImpact:
    customer: str
    tier: str
    weight: float
    request_rate: float  # rate(c, L)
    error_ratio: float  # errorRatio(c, S)
    burn_rate: float  # burnRate(c, S)
    budget_remaining: float  # 1 - errorRatio(c, window) / (1 - objective/100)
    impacted: bool
    lost: bool
    storming: bool
    short_rate: float  # rate(c, S)
    baseline_rate: float | None  # rate(c, L) `retryStorm.baseline` earlier; None: no baseline data


@dataclass(frozen=True)
class Assessment:
    """The impact of one evaluation. `customers` holds the active customers only."""

    severity: str
    customers: tuple[CustomerImpact, ...]
    impacted_fraction: float
    weighted_impact: float
    data_age: float
    notes: tuple[str, ...] = field(default=())

    @cached_property
    def impacted(self) -> tuple[CustomerImpact, ...]:
        """Impacted customers, worst first: highest burn rate, then heaviest tier, then name."""
        hit = [c for c in self.customers if c.impacted]
        return tuple(sorted(hit, key=lambda c: (-c.burn_rate, -c.weight, c.customer)))

    @property
    def active_count(self) -> int:
        return len(self.customers)

    @property
    def lost(self) -> tuple[CustomerImpact, ...]:
        return tuple(c for c in self.impacted if c.lost)

    @property
    def storming(self) -> tuple[CustomerImpact, ...]:
        return tuple(sorted((c for c in self.customers if c.storming), key=lambda c: -c.short_rate))


def by_label(series: Series, label: str) -> dict[str, float]:
    """Index a grouped result by `label`; series without the label name no customer and are dropped."""
    return {labels[label]: value for labels, value in series if labels.get(label)}


def error_ratio(bad: float, total: float, bad_is_good: bool) -> float:
    """errors / total; for a latency SLO `bad` counts good requests: (total - good) / total.

    No requests means no errors: 0.
    """
    if total <= 0:
        return 0.0
    errors = total - bad if bad_is_good else bad
    return min(max(errors / total, 0.0), 1.0)


class TierIndex:
    """Tier lookup: the first tier that lists a customer or whose pattern matches it (RE2 search)."""

    def __init__(self, tiers: Sequence[Tier]) -> None:
        self._tiers = [(t, set(t.customers), compile_re2(t.pattern) if t.pattern else None) for t in tiers]

    def __call__(self, customer: str) -> Tier | None:
        for tier, names, pattern in self._tiers:
            if customer in names or (pattern is not None and pattern.search(customer)):
                return tier
        return None


def severity_of(spec: CustomerSLOSpec, impacted: int, fraction: float, weighted: float) -> str:
    """The highest level any of whose criteria holds (each a >=); `none` when none holds."""
    best = "none"
    for level in spec.impact.levels:
        holds = (
            (level.impacted_customers is not None and impacted >= level.impacted_customers)
            or (level.impacted_fraction is not None and fraction >= level.impacted_fraction)
            or (level.weighted_impact is not None and weighted >= level.weighted_impact)
        )
        if holds and SEVERITY_ORDER[level.severity] > SEVERITY_ORDER[best]:
            best = level.severity
    return best


def _check_complete(spec: CustomerSLOSpec, plan: QueryPlan, results: Mapping[str, Series]) -> tuple[float, list[str]]:
    """Raise DataProblem unless the data is present, finite and fresh; return (age, notes)."""
    families = {labels.get("__name__", "") for labels, _ in results.get(FAMILIES, ())}
    missing = [f for f in plan.required_families if f not in families]
    if missing:
        raise DataProblem("NoData", f"Prometheus has no series named {', '.join(missing)}; check the selectors")
    notes = [f"no series named {f} yet: counted as zero errors" for f in plan.optional_families if f not in families]
    freshness = results.get(FRESHNESS, ())
    if not freshness:
        total, _, _ = series_selectors(spec)
        raise DataProblem("NoData", f"no current samples match {total.render()}")
    age = freshness[0][1]
    if not math.isfinite(age):
        raise DataProblem("NoData", "the age of the newest sample is not a number")
    stale_after = parse_duration(spec.impact.stale_after)
    if age > stale_after:
        raise DataProblem("StaleData", f"the newest sample is {age:.0f}s old (impact.staleAfter is {stale_after}s)")
    for name, series in results.items():
        bad = sum(1 for _, v in series if not math.isfinite(v))
        if bad:
            raise DataProblem("NoData", f"{bad} NaN or infinite values in {name}; nothing is concluded from them")
    return age, notes


def _check_buckets(spec: CustomerSLOSpec, totals: Mapping[str, float], good: Mapping[str, float]) -> None:
    """Latency: every customer with a _count must have the threshold's bucket, or nothing is known."""
    missing = [c for c in totals if c not in good]
    if missing:
        assert spec.indicator.latency is not None
        raise DataProblem(
            "NoData",
            f"{len(missing)} customers have no bucket le={spec.indicator.latency.threshold:g} in "
            f"{spec.indicator.latency.histogram}: indicator.latency.threshold must be one of its bucket bounds",
        )


def assess(spec: CustomerSLOSpec, plan: QueryPlan, results: Mapping[str, Series]) -> Assessment:
    """Impact per customer and in total (formulas in DESIGN.md "Definitions").

    - Active: rate(c, L) >= minRequestRate and c matches no `ignore` regex.
    - Impacted: for some row, burnRate(c, long) >= burnRate and burnRate(c, short) >= burnRate.
      A customer with no requests in a short window shows no recovery there: that short window's
      burn rate is taken to be its long one (this is how a customer who gave up stays impacted).
    - Lost: impacted and rate(c, S) < trafficDrop x rate(c, L offset L).
    - Storming: rate(c, S) >= amplification x rate(c, L offset baseline), baseline > 0, and c's
      series covers the whole baseline window (else rate() underestimates it: no baseline).
    """
    age, notes = _check_complete(spec, plan, results)
    label = spec.customer_label
    _, _, bad_is_good = series_selectors(spec)
    totals = {key: by_label(results.get(key, ()), label) for key in results if key.startswith("total[")}
    by_window = {w: totals.get(total_key(w), {}) for w in plan.windows}
    bads = {w: by_label(results.get(bad_key(w), ()), label) for w in plan.windows}
    rows = [(parse_duration(r.long), parse_duration(r.short), r.burn_rate) for r in spec.impact.windows]
    tier_of = TierIndex(spec.customers.tiers)
    first = spec.first_window
    s_win, l_win = parse_duration(first.short), parse_duration(first.long)
    budget_win = parse_duration(spec.window)
    baseline = parse_duration(spec.impact.retry_storm.baseline)
    long_rates = totals.get(total_key(l_win), {})
    earlier_rates = totals.get(total_key(l_win, l_win), {})
    covered = by_label(results.get(BASELINE_COVERAGE, ()), label)
    baseline_rates = {c: r for c, r in totals.get(total_key(l_win, baseline), {}).items() if c in covered}
    if bad_is_good:
        _check_buckets(spec, long_rates, bads[l_win])
    ignore = [compile_re2(p) for p in spec.customers.ignore]
    allowed = spec.error_budget

    def ratio(c: str, w: int) -> float:
        return error_ratio(bads[w].get(c, 0.0), by_window[w].get(c, 0.0), bad_is_good)

    def has_traffic(c: str, w: int) -> bool:
        return by_window[w].get(c, 0.0) > 0

    customers = []
    for c, rate_l in long_rates.items():
        if rate_l < spec.customers.min_request_rate or any(p.search(c) for p in ignore):
            continue
        impacted = False
        for lw, sw, threshold in rows:
            burn_long = ratio(c, lw) / allowed
            burn_short = ratio(c, sw) / allowed if has_traffic(c, sw) else burn_long
            impacted = impacted or (burn_long >= threshold and burn_short >= threshold)
        short_rate = by_window[s_win].get(c, 0.0)
        earlier = earlier_rates.get(c)
        base = baseline_rates.get(c)
        tier = tier_of(c)
        err_s = ratio(c, s_win) if has_traffic(c, s_win) else ratio(c, l_win)
        customers.append(
            CustomerImpact(
                customer=c,
                tier=tier.name if tier else NO_TIER,
                weight=tier.weight if tier else 1.0,
                request_rate=rate_l,
                error_ratio=err_s,
                burn_rate=err_s / allowed,
                budget_remaining=1 - ratio(c, budget_win) / allowed,
                impacted=impacted,
                lost=impacted
                and earlier is not None
                and short_rate < spec.impact.lost_customers.traffic_drop * earlier,
                storming=base is not None and base > 0 and short_rate >= spec.impact.retry_storm.amplification * base,
                short_rate=short_rate,
                baseline_rate=base if base else None,
            )
        )
    customers.sort(key=lambda ci: ci.customer)
    hit = [c for c in customers if c.impacted]
    fraction = len(hit) / len(customers) if customers else 0.0
    total_weight = sum(c.weight for c in customers)
    weighted = sum(c.weight for c in hit) / total_weight if total_weight else 0.0
    return Assessment(
        severity=severity_of(spec, len(hit), fraction, weighted),
        customers=tuple(customers),
        impacted_fraction=fraction,
        weighted_impact=weighted,
        data_age=age,
        notes=tuple(notes),
    )
