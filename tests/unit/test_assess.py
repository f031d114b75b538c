"""The impact math on synthetic query results (no Prometheus)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from patron.api.models import CustomerSLOSpec
from patron.impact.assess import Assessment, DataProblem, assess, error_ratio, severity_of
from patron.impact.queries import (
    BASELINE_COVERAGE,
    ERRORS_SEEN,
    FRESHNESS,
    QueryPlan,
    bad_key,
    plan_queries,
    total_key,
)
from patron.impact.rules import with_recorded

BASE: dict[str, Any] = {
    "service": "checkout",
    "objective": 99.9,
    "indicator": {"ratio": {"errors": 'req_total{code=~"5.."}', "total": "req_total"}},
}


def make_spec(**extra: Any) -> CustomerSLOSpec:
    return CustomerSLOSpec.model_validate({**BASE, **extra})


def results(
    plan: QueryPlan,
    traffic: dict[str, tuple[float, float]],
    short: dict[str, tuple[float, float]] | None = None,
    earlier: dict[str, float] | None = None,
    age: float = 1.0,
    young: tuple[str, ...] = (),
    stale: tuple[str, ...] = (),
    gap: tuple[str, ...] = (),
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """customer -> (rps, error ratio) in every window, `short` overriding the 5m/30m windows.

    `stale`: customers whose newest sample is older than staleAfter; `gap`: customers absent from
    the 5m/30m windows (no series there).
    """
    out: dict[str, list[tuple[dict[str, str], float]]] = {
        FRESHNESS: [({"customer": c}, 3600.0 if c in stale else age) for c in traffic],
        ERRORS_SEEN: [({}, 1.0)],
    }
    for w in plan.windows:
        src = {**traffic, **(short or {})} if w in (300, 1800) else traffic
        if w in (300, 1800):
            src = {c: v for c, v in src.items() if c not in gap}
        out[total_key(w)] = [({"customer": c}, r) for c, (r, _) in src.items()]
        out[bad_key(w)] = [({"customer": c}, r * e) for c, (r, e) in src.items()]
    out[BASELINE_COVERAGE] = [({"customer": c}, 1.0) for c in traffic if c not in young]
    for key in plan.queries:
        if " offset " in key:
            out[key] = [({"customer": c}, (earlier or {}).get(c, r)) for c, (r, _) in traffic.items()]
    return out


def run(spec: CustomerSLOSpec, **kw: Any) -> Assessment:
    plan = plan_queries(spec)
    return assess(spec, plan, results(plan, **kw))


def test_error_ratio_latency_counts_good_requests() -> None:
    assert error_ratio(bad=9, total=10, bad_is_good=True) == pytest.approx(0.1)
    assert error_ratio(bad=1, total=10, bad_is_good=False) == pytest.approx(0.1)
    assert error_ratio(bad=0, total=0, bad_is_good=False) == 0.0


def test_enterprise_customer_down_is_weighted() -> None:
    spec = make_spec(customers={"tiers": [{"name": "enterprise", "weight": 10, "customers": ["acme"]}]})
    traffic = {"acme": (1.0, 1.0), **{f"c{i}": (1.0, 0.0) for i in range(10)}}
    a = run(spec, traffic=traffic)
    assert [c.customer for c in a.impacted] == ["acme"]
    assert a.impacted_fraction == pytest.approx(1 / 11)
    assert a.weighted_impact == pytest.approx(10 / 20)
    assert a.severity == "critical"  # weightedImpact 0.5 >= 0.2


def test_inactive_and_ignored_customers_do_not_count() -> None:
    spec = make_spec(customers={"minRequestRate": 0.1, "ignore": ["^synthetic-"]})
    a = run(spec, traffic={"tiny": (0.01, 1.0), "synthetic-probe": (5, 1.0), "real": (1, 0.0)})
    assert [c.customer for c in a.customers] == ["real"]
    assert a.severity == "none"


def test_multiwindow_needs_both_windows() -> None:
    spec = make_spec()
    # Long windows burn, short ones recovered: not impacted.
    a = run(spec, traffic={"x": (1.0, 0.5)}, short={"x": (1.0, 0.0)})
    assert a.impacted == ()
    # A customer silent in the short windows shows no recovery: still impacted, and lost.
    b = run(spec, traffic={"x": (1.0, 0.5)}, short={"x": (0.0, 0.0)})
    assert [c.customer for c in b.impacted] == ["x"] and [c.customer for c in b.lost] == ["x"]


def test_storm_needs_a_baseline() -> None:
    spec = make_spec()
    a = run(spec, traffic={"bot": (2.0, 0.0)}, short={"bot": (10.0, 0.0)}, earlier={"bot": 2.0})
    assert [c.customer for c in a.storming] == ["bot"]
    b = run(spec, traffic={"bot": (2.0, 0.0)}, short={"bot": (10.0, 0.0)}, earlier={"bot": 0.0})
    assert b.storming == ()
    # A series younger than the baseline window has an underestimated baseline: not a storm.
    c = run(spec, traffic={"bot": (2.0, 0.0)}, short={"bot": (10.0, 0.0)}, earlier={"bot": 2.0}, young=("bot",))
    assert c.storming == () and c.customers[0].baseline_rate is None


def test_levels() -> None:
    spec = make_spec()
    assert severity_of(spec, 0, 0.0, 0.0) == "none"
    assert severity_of(spec, 1, 0.01, 0.01) == "warning"
    assert severity_of(spec, 1, 0.05, 0.0) == "critical"
    assert severity_of(spec, 1, 0.0, 0.2) == "critical"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.update({FRESHNESS: []}), "StaleData"),
        (lambda r: r.update({FRESHNESS: [({"customer": "a"}, 3600.0)]}), "StaleData"),
        (lambda r: r.update({k: [] for k in r if k != ERRORS_SEEN}), "NoData"),
        (lambda r: r[total_key(3600)].append(({"customer": "nan"}, math.nan)), "NoData"),
    ],
)
def test_untrustworthy_data_is_never_healthy(mutate: Any, reason: str) -> None:
    spec = make_spec()
    plan = plan_queries(spec)
    r = results(plan, traffic={"a": (1.0, 0.0)})
    mutate(r)
    with pytest.raises(DataProblem) as err:
        assess(spec, plan, r)
    assert err.value.reason == reason


def test_query_count_does_not_depend_on_customers() -> None:
    spec = make_spec()
    # 5 windows (5m 30m 1h 6h 30d) x 2 kinds + 1 offset (L = baseline = 1h) + baseline coverage
    # + freshness + errors seen
    assert len(plan_queries(spec).queries) == 14
    assert all("customer" not in q or "by (customer)" in q for q in plan_queries(spec).queries.values())


traffic_st = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.tuples(st.one_of(st.just(0.0), st.floats(1e-3, 1000)), st.floats(0, 1)),
    min_size=1,
    max_size=30,
)


@given(traffic_st)
def test_counts_are_consistent(traffic: dict[str, tuple[float, float]]) -> None:
    a = run(make_spec(), traffic=traffic)
    assert 0.0 <= a.impacted_fraction <= 1.0 and 0.0 <= a.weighted_impact <= 1.0
    assert {c.customer for c in a.lost} <= {c.customer for c in a.impacted} <= {c.customer for c in a.customers}
    assert all(c.request_rate >= 0.05 for c in a.customers)
    assert all(traffic[c.customer][1] > 0 for c in a.impacted)


@given(traffic_st, st.floats(0.01, 100))
def test_impact_does_not_depend_on_traffic_scale(traffic: dict[str, tuple[float, float]], k: float) -> None:
    """Scaling every rate by k changes no ratio; only the activity threshold may move."""
    spec = make_spec(customers={"minRequestRate": 0})
    a = run(spec, traffic=traffic)
    b = run(spec, traffic={c: (r * k, e) for c, (r, e) in traffic.items()})
    assert {c.customer for c in a.impacted} == {c.customer for c in b.impacted}


@given(traffic_st, st.floats(0, 1))
def test_more_errors_never_heal(traffic: dict[str, tuple[float, float]], extra: float) -> None:
    assume(traffic)
    name = sorted(traffic)[0]
    rate, err = traffic[name]
    worse = {**traffic, name: (rate, min(1.0, err + extra))}
    spec = make_spec()
    was = name in {c.customer for c in run(spec, traffic=traffic).impacted}
    assert not was or name in {c.customer for c in run(spec, traffic=worse).impacted}


def test_a_gap_in_the_short_windows_is_unknown_not_no_recovery() -> None:
    """Regression: a customer with old errors and no series in S (scrape gap, Prometheus restart)
    used to get its long-window burn in S, so it became impacted and lost on missing data."""
    spec = make_spec()
    a = run(spec, traffic={"old": (1.0, 0.5), "ok": (1.0, 0.0)}, gap=("old",))
    assert a.impacted == () and a.lost == () and a.storming == ()
    assert a.severity == "none"
    # Present in S with no requests (it gave up): known, still impacted, and lost.
    b = run(spec, traffic={"quit": (1.0, 0.5), "ok": (1.0, 0.0)}, short={"quit": (0.0, 0.0)})
    assert [c.customer for c in b.impacted] == ["quit"] and [c.customer for c in b.lost] == ["quit"]


@given(traffic_st, st.data())
def test_a_customer_unknown_in_every_short_window_is_never_impacted_lost_or_storming(
    traffic: dict[str, tuple[float, float]], data: st.DataObject
) -> None:
    gap = tuple(data.draw(st.sets(st.sampled_from(sorted(traffic)))))
    a = run(make_spec(), traffic=traffic, gap=gap, earlier={c: 1e-6 for c in traffic})
    hit = {c.customer for c in (*a.impacted, *a.lost, *a.storming)}
    assert not hit & set(gap)


def test_one_fresh_target_does_not_hide_stale_ones() -> None:
    """Regression: freshness was one max(timestamp()): one fresh customer made all data look fresh."""
    spec = make_spec()
    traffic = {f"c{i}": (1.0, 0.5 if i < 5 else 0.0) for i in range(10)}
    with pytest.raises(DataProblem) as err:
        run(spec, traffic=traffic, stale=("c0", "c1", "c2", "c3", "c4"))
    assert err.value.reason == "PartialData"
    assert "5 of 10 active customers" in err.value.message and "maxStaleFraction (0.1)" in err.value.message


def test_stale_customers_below_the_threshold_are_unknown_not_counted() -> None:
    spec = make_spec()
    traffic = {f"c{i}": (1.0, 0.0) for i in range(10)} | {"old": (1.0, 0.5)}
    a = run(spec, traffic=traffic, stale=("old",))  # 1 of 11: under 10%
    assert a.unknown == ("old",) and a.active_count == 10
    assert a.impacted == () and "old" not in {c.customer for c in a.customers}
    assert any("1 customers without a fresh sample are unknown, not counted: old" in n for n in a.notes)


@given(traffic_st, st.data(), st.floats(0, 1))
def test_partial_data_exactly_above_max_stale_fraction(
    traffic: dict[str, tuple[float, float]], data: st.DataObject, limit: float
) -> None:
    spec = make_spec(customers={"minRequestRate": 0}, impact={"maxStaleFraction": limit})
    stale = tuple(data.draw(st.sets(st.sampled_from(sorted(traffic)))))
    assume(len(stale) < len(traffic))  # all stale is StaleData
    try:
        a = run(spec, traffic=traffic, stale=stale)
    except DataProblem as err:
        assert err.reason == "PartialData" and len(stale) / len(traffic) > limit
    else:
        assert len(stale) / len(traffic) <= limit
        assert set(a.unknown) == set(stale) and not set(stale) & {c.customer for c in a.customers}


def test_max_stale_fraction_is_bounded_at_apply_time() -> None:
    with pytest.raises(ValueError, match=r"max_stale_fraction|maxStaleFraction"):
        make_spec(impact={"maxStaleFraction": 1.5})


def test_every_query_is_scoped_by_the_selectors_own_matchers() -> None:
    """Regression: `group by (__name__) ({__name__=~"<metric>"})` read every series of the metric,
    whatever the service: its cost grew with other CustomerSLOs' series."""
    ratio = {"errors": 'req_total{service="a",code=~"5.."}', "total": 'req_total{service="a"}'}
    latency = {"histogram": 'lat_seconds{service="a"}', "threshold": 0.5}
    for indicator in ({"ratio": ratio}, {"latency": latency}):
        queries = plan_queries(make_spec(indicator=indicator)).queries
        assert all('service="a"' in q for q in queries.values()), queries
        assert not any("__name__" in q for q in queries.values())
    golden = plan_queries(make_spec(indicator={"ratio": ratio})).queries
    assert golden[FRESHNESS] == 'time() - max by (customer) (timestamp(req_total{service="a"}))'
    assert golden[ERRORS_SEEN] == 'group(req_total{service="a",code=~"5.."})'
    assert golden[BASELINE_COVERAGE] == 'group by (customer) (req_total{service="a"} offset 2h)'


def test_recorded_series_gone_while_raw_is_fresh_is_no_data_not_no_customers() -> None:
    """The rules' markers said covered, but the recorded rate over L came back empty (its rules fail
    or were removed) while raw samples are fresh: nothing is concluded."""
    spec = make_spec(recordingRules={"enabled": True})
    plan = with_recorded(spec, "ns/slo", {(r.window, r.offset) for r in plan_queries(spec).reads.values()}, [])
    fresh = {FRESHNESS: [({}, 12.0)]}
    with pytest.raises(DataProblem, match="recorded rate over 1h holds no customer") as err:
        assess(spec, plan, fresh)
    assert err.value.reason == "NoData"
    healthy = {**fresh, total_key(3600): [({"customer": "a"}, 1.0)]}
    assert assess(spec, plan, healthy).active_count == 1
