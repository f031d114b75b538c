"""The grouped PromQL queries of one evaluation.

The query set depends only on the spec, never on the customers: one `sum by (<customerLabel>)`
query per series kind and window, so a 10,000-customer SLO costs as many queries as a 10-customer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from patron.api.durations import format_duration, parse_duration
from patron.api.models import CustomerSLOSpec
from patron.api.selectors import Matcher, Selector

FRESHNESS = "freshness"
BASELINE_COVERAGE = "baseline coverage"
BUDGET_REFRESH = 300.0  # seconds a live operator may reuse budget-window results
ERRORS_SEEN = "errors seen"


@dataclass(frozen=True)
class Read:
    """What a rate query reads: `kind` ("total" or "bad") over `window` seconds, `offset` seconds ago."""

    kind: str
    window: int
    offset: int = 0


@dataclass(frozen=True)
class QueryPlan:
    """Named PromQL queries; names are stable keys the math reads results by."""

    queries: dict[str, str]
    windows: tuple[int, ...]  # seconds, every window the math needs a rate over
    # Queries over the budget window alone: the costliest (30d by default), used only for
    # budgetRemaining, never for a decision, so a live operator may reuse them for BUDGET_REFRESH.
    budget_only: frozenset[str] = frozenset()
    reads: Mapping[str, Read] = field(default_factory=dict)  # the rate queries, by name
    raw: tuple[str, ...] = ()  # spellings of the windows read raw although recording rules are enabled
    recorded: frozenset[str] = frozenset()  # the reads taken from Patron's recorded series
    # Bounded: every query but the active one (total[L]) returns only candidates (customers over a
    # burn threshold or storming); FRESHNESS then returns the stale customers and the newest age.
    bounded: bool = False


def total_key(window: int, offset: int = 0) -> str:
    return f"total[{window}]" + (f" offset {offset}" if offset else "")


def bad_key(window: int) -> str:
    """Errors (ratio indicator) or good requests under the threshold (latency indicator)."""
    return f"bad[{window}]"


def _rate(selector: Selector, label: str, window: int, offset: int = 0) -> str:
    off = f" offset {format_duration(offset)}" if offset else ""
    return f"sum by ({label}) (rate({selector.render()}[{format_duration(window)}]{off}))"


def le_values(threshold: float) -> list[str]:
    """The spellings client libraries use for bucket bound `threshold` (Go: "1", Python: "1.0")."""
    spellings = {repr(float(threshold)), format(threshold, "g")}
    if float(threshold).is_integer():
        spellings.add(str(int(threshold)))
    return sorted(spellings)


def series_selectors(spec: CustomerSLOSpec) -> tuple[Selector, Selector, bool]:
    """(total, bad, bad_is_good): the selectors behind the indicator.

    Ratio: bad = errors. Latency: total = <h>_count and the second selector counts GOOD requests,
    <h>_bucket{le=threshold}; errors = total - good.
    """
    ind = spec.indicator
    if ind.ratio is not None:
        return ind.ratio.total_selector, ind.ratio.errors_selector, False
    assert ind.latency is not None
    hist = ind.latency.histogram_selector
    base = hist.metric or ""
    le_regex = "|".join(v.replace(".", "\\.").replace("+", "\\+") for v in le_values(ind.latency.threshold))
    good = hist.with_metric(base + "_bucket").with_matcher("le", "=~", le_regex)
    return hist.with_metric(base + "_count"), good, True


def unfiltered(spec: CustomerSLOSpec) -> set[str]:
    """The reads a bounded plan never filters to candidates: total[L], which decides who is active,
    and for latency good requests over L (every active customer must have the threshold's bucket)."""
    long_ = parse_duration(spec.first_window.long)
    return {total_key(long_)} | ({bad_key(long_)} if series_selectors(spec)[2] else set())


def plan_queries(spec: CustomerSLOSpec, only: Matcher | None = None) -> QueryPlan:
    """Every query one evaluation runs.

    - total[w], bad[w] for each window w of impact.windows and spec.window;
    - total[L] offset L (lost customers' earlier traffic), total[L] offset baseline (storms);
    - baseline coverage: which customers had series when the storm baseline window began;
    - freshness: per customer, the age in seconds of its newest total sample;
    - errors seen (ratio indicator): whether the errors selector matches any series now (an error
      counter may not exist before a first error; the Ready message then says so).

    Every query uses the indicator's own selectors, so none reads other services' series; whether
    the total series exist at all is answered by the freshness and total[L] results. `only` (a
    customer-label matcher naming the candidates) narrows every selector but those of `unfiltered`
    and the freshness and errors-seen queries, so Prometheus reads only those customers' series.
    """
    total, bad, bad_is_good = series_selectors(spec)
    label = spec.customer_label
    impact_windows = {parse_duration(w.long) for w in spec.impact.windows} | {
        parse_duration(w.short) for w in spec.impact.windows
    }
    budget = parse_duration(spec.window)
    windows = sorted(impact_windows | {budget})
    reads: dict[str, Read] = {}
    for w in windows:
        reads[total_key(w)] = Read("total", w)
        reads[bad_key(w)] = Read("bad", w)
    long_ = parse_duration(spec.first_window.long)
    baseline = parse_duration(spec.impact.retry_storm.baseline)
    for offset in sorted({long_, baseline}):
        reads[total_key(long_, offset)] = Read("total", long_, offset)
    keep = unfiltered(spec)

    def narrow(selector: Selector, name: str) -> Selector:
        return selector if only is None or name in keep else selector.with_matcher(only.label, only.op, only.value)

    queries = {
        name: _rate(narrow(total if r.kind == "total" else bad, name), label, r.window, r.offset)
        + nonzero(r, bad_is_good)
        for name, r in reads.items()
    }
    # Customers whose series already existed when the baseline window began: for a younger series
    # rate() spreads a partial increase over the whole window and underestimates the baseline.
    queries[BASELINE_COVERAGE] = (
        f"group by ({label}) ({narrow(total, BASELINE_COVERAGE).render()} offset {format_duration(long_ + baseline)})"
    )
    queries[FRESHNESS] = f"time() - max by ({label}) (timestamp({total.render()}))"
    if not bad_is_good:
        queries[ERRORS_SEEN] = f"group({bad.render()})"
    return QueryPlan(
        queries=queries,
        windows=tuple(windows),
        budget_only=frozenset() if budget in impact_windows else frozenset({total_key(budget), bad_key(budget)}),
        reads=reads,
    )


def nonzero(read: Read, bad_is_good: bool) -> str:
    """Absent errors mean zero errors, so only customers with errors (or NaN) need sending back."""
    return " != 0" if read.kind == "bad" and not bad_is_good else ""
