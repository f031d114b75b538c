"""Tenancy: with a namespace label enforced, every selector reads only its CustomerSLO's namespace."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patron.api.models import CustomerSLOSpec
from patron.api.selectors import Matcher, Selector, parse_selector
from patron.api.tenancy import TenancyError, check_label_name, confine, enforce_namespace_label
from patron.impact.assess import DataProblem
from patron.impact.queries import plan_queries
from patron.reconcile import parse_spec

RATIO = {"errors": 'http_requests_total{service="shop",code=~"5.."}', "total": 'http_requests_total{service="shop"}'}


def body(**indicator: Any) -> dict[str, Any]:
    return {"service": "shop", "objective": 99, "indicator": indicator or {"ratio": RATIO}}


def test_every_selector_and_every_query_gets_the_namespace_matcher() -> None:
    spec = parse_spec(body(), "namespace", "shop")
    assert spec.indicator.ratio is not None
    assert spec.indicator.ratio.total == 'http_requests_total{service="shop",namespace="shop"}'
    assert spec.indicator.ratio.errors == 'http_requests_total{service="shop",code=~"5..",namespace="shop"}'
    for name, query in plan_queries(spec).queries.items():
        if "http_requests_total{" in query:  # the families query names metrics, it selects no series
            assert query.count('namespace="shop"') == query.count("http_requests_total{"), name


def test_latency_histogram_gets_the_matcher_on_bucket_and_count() -> None:
    spec = parse_spec(body(latency={"histogram": "http_request_duration_seconds", "threshold": 0.5}), "ns", "shop")
    assert spec.indicator.latency is not None
    assert spec.indicator.latency.histogram == 'http_request_duration_seconds{ns="shop"}'
    queries = plan_queries(spec).queries.values()
    assert any('_bucket{ns="shop",le=~' in q for q in queries) and any('_count{ns="shop"}' in q for q in queries)


def test_off_by_default_the_spec_is_unchanged() -> None:
    assert parse_spec(body()) == CustomerSLOSpec.model_validate(body())


def test_a_selector_already_naming_its_own_namespace_keeps_one_matcher() -> None:
    own = {"errors": 'e{namespace="shop",namespace="shop"}', "total": 't{namespace="shop"}'}
    spec = parse_spec(body(ratio=own), "namespace", "shop")
    assert spec.indicator.ratio is not None
    assert (spec.indicator.ratio.errors, spec.indicator.ratio.total) == ('e{namespace="shop"}', 't{namespace="shop"}')


def test_a_nameless_selector_reads_only_its_namespace() -> None:
    """Allowed: with the matcher added, {__name__=~".+"} selects only the namespace's own series."""
    spec = parse_spec(body(ratio={"errors": '{__name__=~"err.+"}', "total": '{__name__=~".+"}'}), "namespace", "shop")
    assert spec.indicator.ratio is not None
    assert spec.indicator.ratio.total == '{__name__=~".+",namespace="shop"}'


@pytest.mark.parametrize(
    ("matcher", "shown"),
    [
        ('namespace="other"', 'namespace="other"'),
        ('namespace!="shop"', 'namespace!="shop"'),
        ('namespace=~"shop|other"', 'namespace=~"shop|other"'),
        ('namespace=~"shop"', 'namespace=~"shop"'),
        ('namespace!~"x"', 'namespace!~"x"'),
        ('namespace=""', 'namespace=""'),
    ],
)
def test_a_selector_setting_the_label_otherwise_is_refused_naming_the_field(matcher: str, shown: str) -> None:
    hostile = {"errors": RATIO["errors"], "total": f"http_requests_total{{{matcher}}}"}
    with pytest.raises(DataProblem) as err:
        parse_spec(body(ratio=hostile), "namespace", "shop")
    assert err.value.reason == "InvalidSpec"
    assert err.value.message == (
        f"spec.indicator.ratio.total: sets namespace label 'namespace' with {shown}; this operator enforces "
        'namespace="shop" on every selector (leave the label out: it is added)'
    )


def test_every_offending_field_is_named() -> None:
    hostile = {"errors": 'e{namespace="a"}', "total": 't{namespace="b"}'}
    with pytest.raises(DataProblem) as err:
        parse_spec(body(ratio=hostile), "namespace", "shop")
    message = err.value.message
    assert "spec.indicator.ratio.errors: " in message and "; spec.indicator.ratio.total: " in message


def test_a_selector_too_long_with_the_matcher_is_invalid_spec() -> None:
    long_total = 't{service="' + "x" * 1000 + '"}'
    with pytest.raises(DataProblem) as err:
        parse_spec(body(ratio={"errors": "e", "total": long_total}), "namespace", "shop")
    assert err.value.reason == "InvalidSpec" and "spec.indicator.ratio.total: " in err.value.message


@pytest.mark.parametrize("label", ["__name__", "__tenant", "1ns", "name-space", ""])
def test_the_enforced_label_must_be_a_plain_label_name(label: str) -> None:
    with pytest.raises(ValueError, match="not a label name"):
        check_label_name(label)


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True).filter(lambda x: not x.startswith("__"))
matchers = st.builds(Matcher, label_names, st.sampled_from(["=", "!="]), st.text(max_size=20))


@given(
    metric=st.one_of(st.none(), st.from_regex(r"[a-z_:][a-z0-9_:]{0,10}", fullmatch=True)),
    others=st.lists(matchers, max_size=4),
    label=label_names,
    namespace=st.text(min_size=1, max_size=30),
)
def test_the_rendered_selector_has_exactly_one_matcher_on_the_label(
    metric: str | None, others: list[Matcher], label: str, namespace: str
) -> None:
    """For any namespace text (quotes, backslashes, newlines...), parsed back from its rendering."""
    others = [m for m in others if m.label != label]
    selector = Selector(metric, tuple(others))
    rendered = confine(selector, label, namespace).render()
    parsed = parse_selector(rendered)
    assert [m for m in parsed.matchers if m.label == label] == [Matcher(label, "=", namespace)]
    assert [m for m in parsed.matchers if m.label != label] == others
    assert parsed.metric == metric


@given(label=label_names, namespace=st.text(min_size=1, max_size=30), other=st.text(max_size=30))
def test_any_other_matcher_on_the_label_is_refused(label: str, namespace: str, other: str) -> None:
    for op in ("=", "!=", "=~", "!~"):
        if op == "=" and other == namespace:
            continue
        with pytest.raises(TenancyError):
            confine(Selector("m", (Matcher(label, op, other),)), label, namespace)


def test_enforce_is_idempotent() -> None:
    spec = CustomerSLOSpec.model_validate(body())
    once = enforce_namespace_label(spec, "namespace", "shop")
    assert enforce_namespace_label(once, "namespace", "shop") == once


@pytest.mark.parametrize("command", [["run"], ["evaluate", "-f", "x", "--prometheus", "p"], ["report", "ns/n"]])
def test_the_flag_and_its_environment_variable(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from patron.cli import build_parser

    assert build_parser().parse_args(command).namespace_label is None  # off by default
    assert build_parser().parse_args([*command, "--enforce-namespace-label", "ns"]).namespace_label == "ns"
    monkeypatch.setenv("PATRON_ENFORCE_NAMESPACE_LABEL", "namespace")
    assert build_parser().parse_args(command).namespace_label == "namespace"
    monkeypatch.setenv("PATRON_ENFORCE_NAMESPACE_LABEL", "__name__")
    with pytest.raises(SystemExit):
        build_parser().parse_args(command)
