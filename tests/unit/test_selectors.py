from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patron.api.selectors import SelectorError, parse_selector, quote


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("http_requests_total", "http_requests_total"),
        ('http_requests_total{service="checkout"}', 'http_requests_total{service="checkout"}'),
        (' x { a = "1" , b =~ "5.." , } ', 'x{a="1",b=~"5.."}'),
        ("{__name__=\"up\",job!='x'}", '{__name__="up",job!="x"}'),
        ("m{a=`raw\\str`}", 'm{a="raw\\\\str"}'),
        ('m{a="\\u00e9\\"q"}', 'm{a="é\\"q"}'),
    ],
)
def test_plain_selectors_round_trip(text: str, rendered: str) -> None:
    assert parse_selector(text).render() == rendered


@pytest.mark.parametrize(
    "text",
    [
        "rate(x[5m])",
        "x[5m]",
        "x offset 5m",
        "x + y",
        'sum by (a) (x{a="1"})',
        "x{a=b}",
        'x{a="1"',
        '{a=""}',
        "",
        'x{a=~"("}',
        'x{a=~"(?=b)"}',  # Python's re accepts a lookahead; Prometheus (RE2) does not
        'x{a="1"} or vector(1)',
    ],
)
def test_anything_but_a_plain_selector_is_refused(text: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse_selector(text)
    assert "plain vector selector" in str(err.value) or "regex" in str(err.value)


@given(st.text())
def test_any_label_value_survives_quoting(value: str) -> None:
    sel = parse_selector(f"m{{customer={quote(value)}}}")
    assert sel.matchers[0].value == value
    assert parse_selector(sel.render()) == sel
