"""Golden tests of Patron's recording rules (`patron rules`) and of the queries that read them."""

from __future__ import annotations

from typing import Any

import pytest

from patron.api.models import CustomerSLOSpec
from patron.impact.queries import plan_queries
from patron.impact.rules import (
    candidates_query,
    coverage_query,
    covered_reads,
    prometheus_rule,
    rule_file,
    with_recorded,
)

RATIO = {"ratio": {"errors": 'req_total{service="a",code=~"5.."}', "total": 'req_total{service="a"}'}}
BASE: dict[str, Any] = {"service": "api", "objective": 99.9, "indicator": RATIO}
SHORT = {"windows": [{"long": "10m", "short": "5m", "burnRate": 10}]}


def spec(**extra: Any) -> CustomerSLOSpec:
    return CustomerSLOSpec.model_validate({**BASE, **extra})


def blocks(series: str, offsets: list[str]) -> str:
    terms = [
        f'label_replace({series}{" offset " + o if o else ""}, "patron_block", "{k}", "", "")'
        for k, o in enumerate(["", *offsets])
    ]
    return f"avg without (patron_block) ({' or '.join(terms)})"


R5 = 'patron:requests:rate5m{customerslo="ns/slo"}'
E5 = 'patron:errors:rate5m{customerslo="ns/slo"}'
G5 = 'patron:good_requests:rate5m{customerslo="ns/slo"}'

# name -> (spec, [(group name, interval, [(record, expr)])])
CASES: dict[str, tuple[CustomerSLOSpec, list[tuple[str, str, list[tuple[str, str]]]]]] = {
    "ratio: blocks of S, the budget from the coarsest window": (
        spec(impact=SHORT, window="1h"),
        [
            (
                "patron:ns/slo",
                "30s",
                [
                    ("patron:requests:rate5m", 'sum by (customer) (rate(req_total{service="a"}[5m]))'),
                    ("patron:errors:rate5m", 'sum by (customer) (rate(req_total{service="a",code=~"5.."}[5m]))'),
                    ("patron:requests:rate10m", blocks(R5, ["5m"])),
                    ("patron:errors:rate10m", blocks(E5, ["5m"])),
                ],
            ),
            (
                "patron:ns/slo:budget",
                "5m",
                [
                    (
                        "patron:requests:rate1h",
                        'sum_over_time(patron:requests:rate10m{customerslo="ns/slo"}[59m59s:10m]) * 600 / 3600',
                    ),
                    (
                        "patron:errors:rate1h",
                        'sum_over_time(patron:errors:rate10m{customerslo="ns/slo"}[59m59s:10m]) * 600 / 3600',
                    ),
                ],
            ),
        ],
    ),
    "latency: good requests; a budget that is an impact window needs no budget group": (
        spec(
            indicator={"latency": {"histogram": 'lat_seconds{service="a"}', "threshold": 0.5}},
            impact=SHORT,
            window="10m",
        ),
        [
            (
                "patron:ns/slo",
                "30s",
                [
                    ("patron:requests:rate5m", 'sum by (customer) (rate(lat_seconds_count{service="a"}[5m]))'),
                    (
                        "patron:good_requests:rate5m",
                        'sum by (customer) (rate(lat_seconds_bucket{service="a",le=~"0\\\\.5"}[5m]))',
                    ),
                    ("patron:requests:rate10m", blocks(R5, ["5m"])),
                    ("patron:good_requests:rate10m", blocks(G5, ["5m"])),
                ],
            ),
        ],
    ),
    "a window S does not divide: the mean of S over W - S; interval and label from the spec": (
        spec(
            impact={"windows": [{"long": "12m", "short": "5m", "burnRate": 10}]},
            window="12m",
            customerLabel="tenant",
            recordingRules={"interval": "1m"},
        ),
        [
            (
                "patron:ns/slo",
                "1m",
                [
                    ("patron:requests:rate5m", 'sum by (tenant) (rate(req_total{service="a"}[5m]))'),
                    ("patron:errors:rate5m", 'sum by (tenant) (rate(req_total{service="a",code=~"5.."}[5m]))'),
                    ("patron:requests:rate12m", f"avg_over_time({R5}[7m])"),
                    ("patron:errors:rate12m", f"avg_over_time({E5}[7m])"),
                ],
            ),
        ],
    ),
}


def test_golden_case_count() -> None:
    """A new case is added here on purpose, not by accident."""
    assert len(CASES) == 3


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_file_golden(name: str) -> None:
    the_spec, groups = CASES[name]
    got = rule_file(the_spec, "ns", "slo")["groups"]
    assert [(g["name"], g["interval"], [(r["record"], r["expr"]) for r in g["rules"][:-1]]) for g in got] == groups
    assert all(r["labels"] == {"customerslo": "ns/slo"} for g in got for r in g["rules"][:-1])
    markers = [g["rules"][-1] for g in got]
    assert all((m["record"], m["expr"]) == ("patron:rules:evaluated", "vector(1)") for m in markers)
    assert all(set(m["labels"]) == {"customerslo", "patron_rules"} for m in markers)


def test_each_group_is_marked_with_a_digest_of_its_rules() -> None:
    """The coverage query reads the markers: a changed rule (here the total selector) or interval
    changes the digest of level 0's group, so the new rules warm up before anything is read (the
    budget group's own rules read only recorded series: its digest stays, its coverage waits for
    level 0's new marker)."""
    specs = (
        spec(),
        spec(),
        spec(indicator={"ratio": {**RATIO["ratio"], "total": 'req_total{service="b"}'}}),
        spec(recordingRules={"interval": "1m"}),
    )
    digests = [[g["rules"][-1]["labels"]["patron_rules"] for g in rule_file(s, "ns", "slo")["groups"]] for s in specs]
    assert digests[0] == digests[1] and len(set(digests[0])) == 2
    assert all(other[0] != digests[0][0] and other[1] == digests[0][1] for other in digests[2:])


def test_each_window_is_built_from_the_longest_recorded_window_dividing_it() -> None:
    groups = rule_file(spec(), "ns", "slo")["groups"]
    fast = {r["record"]: r["expr"] for r in groups[0]["rules"]}
    assert fast["patron:requests:rate30m"] == blocks(R5, ["5m", "10m", "15m", "20m", "25m"])
    assert fast["patron:requests:rate1h"] == blocks('patron:requests:rate30m{customerslo="ns/slo"}', ["30m"])
    r1h = 'patron:requests:rate1h{customerslo="ns/slo"}'
    assert fast["patron:requests:rate6h"] == blocks(r1h, ["1h", "2h", "3h", "4h", "5h"])
    # No rule reads a raw range longer than S.
    raw = [e for g in groups for r in g["rules"] if "req_total" in (e := r["expr"])]
    assert len(raw) == 2 and all("[5m]" in e for e in raw)


def test_prometheus_rule_wraps_the_same_groups() -> None:
    the_spec = spec(recordingRules={"enabled": True, "labels": {"release": "kps"}})
    pr = prometheus_rule(the_spec, "shop", "checkout")
    assert (pr["apiVersion"], pr["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert pr["metadata"] == {
        "name": "patron-checkout",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "patron", "release": "kps"},
    }
    assert pr["spec"] == rule_file(the_spec, "shop", "checkout")


def test_recorded_reads_replace_covered_windows_only() -> None:
    the_spec = spec(recordingRules={"enabled": True})
    plan = plan_queries(the_spec)
    coverage = coverage_query(the_spec, "ns/slo", plan)
    assert coverage.count(" or ") == 4  # 30m, 1h, 1h offset 1h, 6h, 30d: S is always read raw
    fast, budget = (
        f'patron:rules:evaluated{{customerslo="ns/slo",patron_rules="{g["rules"][-1]["labels"]["patron_rules"]}"}}'
        for g in rule_file(the_spec, "ns", "slo")["groups"]
    )
    assert (
        f"label_replace(label_replace(count({fast} offset 1h) and count({fast} offset 115m), "
        '"window", "3600", "", ""), "offset", "3600", "", "")' in coverage
    )
    assert f"count({budget}) and count({fast} offset 43195m)" in coverage
    covered = covered_reads([({"window": "1800", "offset": "0"}, 1.0), ({"window": "3600", "offset": "0"}, 1.0)])
    got = with_recorded(the_spec, "ns/slo", covered)
    assert got.queries["total[1800]"] == 'patron:requests:rate30m{customerslo="ns/slo"}'
    assert got.queries["bad[3600]"] == 'patron:errors:rate1h{customerslo="ns/slo"} != 0'
    assert got.queries["total[300]"] == plan.queries["total[300]"]
    assert got.queries["total[3600] offset 3600"] == plan.queries["total[3600] offset 3600"]
    assert got.raw == ("1h offset 1h", "6h", "30d") and not got.bounded
    every = {(r.window, r.offset) for r in plan.reads.values()}
    assert with_recorded(the_spec, "ns/slo", every).raw == ()


@pytest.mark.parametrize(("names", "regex"), [(["a.b|c(", "d"], "a\\\\.b\\\\|c\\\\(|d"), (['q"\\'], 'q\\"\\\\\\\\')])
def test_candidates_are_named_as_escaped_literals_in_every_filtered_query(names: list[str], regex: str) -> None:
    """Customer names are data: regex metacharacters and PromQL string escapes are escaped, so the
    set matches exactly these names (and Prometheus looks each up in its index)."""
    the_spec = spec(recordingRules={"enabled": True}, window="1h")
    every = {(r.window, r.offset) for r in plan_queries(the_spec).reads.values()}
    got = with_recorded(the_spec, "ns/slo", every, [({"customer": n}, 1.0) for n in names])
    only = f'customer=~"{regex}"'
    assert got.bounded and got.queries["bad[1800]"] == f'patron:errors:rate30m{{customerslo="ns/slo",{only}}} != 0'
    assert got.queries["total[300]"] == f'sum by (customer) (rate(req_total{{service="a",{only}}}[5m]))'
    assert got.queries["total[3600]"] == 'patron:requests:rate1h{customerslo="ns/slo"}'
    assert only in got.queries["baseline coverage"] and only not in got.queries["freshness"]
    joined = with_recorded(the_spec, "ns/slo", every)
    assert joined.queries["total[300]"].endswith(f"and on (customer) ({candidates_query(the_spec, 'ns/slo')})")


def test_budget_is_built_from_the_coarsest_window_that_divides_it() -> None:
    windows = {
        "windows": [{"long": "1h", "short": "5m", "burnRate": 14.4}, {"long": "2h", "short": "30m", "burnRate": 6}]
    }
    budget = rule_file(spec(impact=windows, window="3h"), "ns", "slo")["groups"][1]["rules"][0]
    assert budget["expr"] == ('sum_over_time(patron:requests:rate1h{customerslo="ns/slo"}[2h59m59s:1h]) * 3600 / 10800')
