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
    ERRORS_SEEN,
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
    """The impact of one evaluation. `customers` holds the active customers with fresh data only."""

    severity: str
    customers: tuple[CustomerImpact, ...]
    impacted_fraction: float
    weighted_impact: float
    data_age: float  # seconds: age of the newest sample
    notes: tuple[str, ...] = field(default=())
    unknown: tuple[str, ...] = field(default=())  # active customers without a fresh sample, not counted

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


def _check_values(results: Mapping[str, Series]) -> None:
    """Raise DataProblem('NoData') on any NaN or infinite value: nothing is concluded from them."""
    for name, series in results.items():
        bad = sum(1 for _, v in series if not math.isfinite(v))
        if bad:
            raise DataProblem("NoData", f"{bad} NaN or infinite values in {name}; nothing is concluded from them")


def _errors_note(spec: CustomerSLOSpec, plan: QueryPlan, results: Mapping[str, Series]) -> list[str]:
    """A note when the errors selector matches no series now (many counters appear at a first error)."""
    if ERRORS_SEEN not in plan.queries or results.get(ERRORS_SEEN):
        return []
    _, bad, _ = series_selectors(spec)
    return [f"no series match {bad.render()} yet: counted as zero errors"]


def _ages(spec: CustomerSLOSpec, plan: QueryPlan, series: Series) -> tuple[float, dict[str, float]]:
    """(age of the newest sample, age per customer) from FRESHNESS.

    Bounded plans list only the customers without a fresh sample, and the newest age unlabelled;
    a customer they do not list is fresh (age 0 here).
    """
    ages = by_label(series, spec.customer_label)
    if not plan.bounded:
        return min(ages.values(), default=math.inf), ages
    newest = min((v for labels, v in series if not labels.get(spec.customer_label)), default=math.inf)
    return newest, ages


def _freshness(
    spec: CustomerSLOSpec, newest: float, ages: Mapping[str, float], seen: int, active: Sequence[str], bounded: bool
) -> tuple[float, list[str]]:
    """(age of the newest sample, active customers without a fresh sample), or DataProblem.

    `ages`: seconds since each customer's newest total sample (bounded: of the stale ones only);
    `seen`: customers in total[L].

    Fresh: c's newest total sample is at most impact.staleAfter old (and within Prometheus' lookback,
    else the freshness query returns nothing for c). With no fresh sample at all: StaleData (NoData
    when nothing matches the total selector). When more than impact.maxStaleFraction of the active
    customers are not fresh: PartialData (one fresh target must not hide the stale ones).
    """
    stale_after = parse_duration(spec.impact.stale_after)
    if newest > stale_after:
        total, _, _ = series_selectors(spec)
        if newest == math.inf and not seen:
            raise DataProblem(
                "NoData",
                f"no current samples match {total.render()} with a {spec.customer_label} label; "
                "check the selectors and customerLabel",
            )
        if newest == math.inf:
            raise DataProblem("StaleData", f"no current sample of {total.render()} for any of {seen} customers")
        raise DataProblem("StaleData", f"the newest sample is {newest:.0f}s old (impact.staleAfter is {stale_after}s)")
    stale = [c for c in active if ages.get(c, 0.0 if bounded else math.inf) > stale_after]
    limit = spec.impact.max_stale_fraction
    if active and len(stale) / len(active) > limit:
        raise DataProblem(
            "PartialData",
            f"{len(stale)} of {len(active)} active customers ({len(stale) / len(active):.0%}) have no sample "
            f"newer than impact.staleAfter ({spec.impact.stale_after}), above impact.maxStaleFraction "
            f"({limit:g}): a scrape target may be down",
        )
    return newest, stale


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


@dataclass(frozen=True)
class WindowView:
    """One window w as present/absent per customer.

    A customer absent from total[w] (no series with two samples in w: a scrape gap, a Prometheus
    restart, a target down longer than w) is *unknown* in w: None, never "no errors" nor "no
    recovery". A customer present with rate 0 sent no requests in w (it gave up): it is known.
    """

    rates: Mapping[str, float]  # rate(c, w) for the customers present in w
    bads: Mapping[str, float]  # errors (ratio) or good requests (latency); absent means 0
    bad_is_good: bool

    def rate(self, c: str) -> float | None:
        return self.rates.get(c)

    def ratio(self, c: str) -> float | None:
        """errorRatio(c, w); None when c is unknown in w."""
        total = self.rates.get(c)
        return None if total is None else error_ratio(self.bads.get(c, 0.0), total, self.bad_is_good)


def burn_holds(long: WindowView, short: WindowView, c: str, allowed: float, threshold: float) -> bool:
    """One row of impact.windows: burnRate(c, long) >= threshold and burnRate(c, short) >= threshold.

    Unknown in either window: the row does not hold (nothing is concluded from missing data). Known
    with no requests in the short window: no recovery there, its burn rate is the long one's (so a
    customer who gave up stays impacted).
    """
    ratio_long, ratio_short, short_rate = long.ratio(c), short.ratio(c), short.rate(c)
    if ratio_long is None or ratio_short is None or short_rate is None:
        return False
    burn_long = ratio_long / allowed
    burn_short = ratio_short / allowed if short_rate > 0 else burn_long
    return burn_long >= threshold and burn_short >= threshold


def assess(spec: CustomerSLOSpec, plan: QueryPlan, results: Mapping[str, Series]) -> Assessment:
    """Impact per customer and in total (formulas in DESIGN.md "Definitions").

    - Active: rate(c, L) >= minRequestRate and c matches no `ignore` regex.
    - Unknown: active but without a fresh sample (see `_freshness`): neither impacted nor healthy,
      left out of every count. Above impact.maxStaleFraction of the active: DataProblem PartialData.
    - Impacted: for some row, burnRate(c, long) >= burnRate and burnRate(c, short) >= burnRate, both
      windows present (`burn_holds`: absent is unknown, present with no requests is no recovery).
    - Lost: impacted, c present in S, and rate(c, S) < trafficDrop x rate(c, L offset L).
    - Storming: c present in S, rate(c, S) >= amplification x rate(c, L offset baseline),
      baseline > 0, and c's series covers the whole baseline window (else rate() underestimates
      it: no baseline).
    """
    _check_values(results)
    notes = _errors_note(spec, plan, results)
    if plan.raw:
        notes.append(f"read raw, not yet covered by the recording rules: {', '.join(plan.raw)}")
    label = spec.customer_label
    _, _, bad_is_good = series_selectors(spec)
    totals = {key: by_label(results.get(key, ()), label) for key in results if key.startswith("total[")}
    views = {
        w: WindowView(totals.get(total_key(w), {}), by_label(results.get(bad_key(w), ()), label), bad_is_good)
        for w in plan.windows
    }
    rows = [(parse_duration(r.long), parse_duration(r.short), r.burn_rate) for r in spec.impact.windows]
    tier_of = TierIndex(spec.customers.tiers)
    first = spec.first_window
    s_win, l_win = parse_duration(first.short), parse_duration(first.long)
    short, long_ = views[s_win], views[l_win]
    budget = views[parse_duration(spec.window)]
    baseline = parse_duration(spec.impact.retry_storm.baseline)
    earlier_rates = totals.get(total_key(l_win, l_win), {})
    covered = by_label(results.get(BASELINE_COVERAGE, ()), label)
    baseline_rates = {c: r for c, r in totals.get(total_key(l_win, baseline), {}).items() if c in covered}
    if bad_is_good:
        _check_buckets(spec, long_.rates, long_.bads)
    ignore = [compile_re2(p) for p in spec.customers.ignore]
    allowed = spec.error_budget
    active = [
        c
        for c, rate_l in long_.rates.items()
        if rate_l >= spec.customers.min_request_rate and not any(p.search(c) for p in ignore)
    ]
    newest, ages = _ages(spec, plan, results.get(FRESHNESS, ()))
    if total_key(l_win) in plan.recorded and not long_.rates and newest <= parse_duration(spec.impact.stale_after):
        # The rules' markers said covered, yet the recorded series are gone: never "no customers".
        raise DataProblem(
            "NoData",
            f"fresh samples exist, but Patron's recorded rate over {first.long} holds no customer: "
            "its recording rules fail or were removed",
        )
    age, stale = _freshness(spec, newest, ages, len(long_.rates), active, plan.bounded)
    unknown = set(stale)
    if stale:
        notes.append(
            f"{len(stale)} customers without a fresh sample are unknown, not counted: {', '.join(sorted(stale)[:5])}"
            + (", ..." if len(stale) > 5 else "")
        )

    customers = []
    for c in active:
        if c in unknown:
            continue
        impacted = any(burn_holds(views[lw], views[sw], c, allowed, threshold) for lw, sw, threshold in rows)
        short_rate = short.rate(c)
        earlier = earlier_rates.get(c)
        base = baseline_rates.get(c)
        tier = tier_of(c)
        # Shown over S; over L when c sent nothing in S or is unknown there (display only).
        err_s = short.ratio(c) if short_rate else long_.ratio(c)
        customers.append(
            CustomerImpact(
                customer=c,
                tier=tier.name if tier else NO_TIER,
                weight=tier.weight if tier else 1.0,
                request_rate=long_.rates[c],
                error_ratio=err_s or 0.0,
                burn_rate=(err_s or 0.0) / allowed,
                budget_remaining=1 - (budget.ratio(c) or 0.0) / allowed,
                impacted=impacted,
                lost=impacted
                and short_rate is not None
                and earlier is not None
                and short_rate < spec.impact.lost_customers.traffic_drop * earlier,
                storming=short_rate is not None
                and base is not None
                and base > 0
                and short_rate >= spec.impact.retry_storm.amplification * base,
                short_rate=short_rate or 0.0,
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
        unknown=tuple(sorted(unknown)),
    )
