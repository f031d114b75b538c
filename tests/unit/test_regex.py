"""CustomerSLO regexes are RE2: linear-time matching, invalid patterns refused naming the field."""

from __future__ import annotations

import pytest
import re2
from pydantic import ValidationError

from patron.api.models import CustomerSLOSpec
from patron.api.regex import compile_re2
from patron.impact.assess import DataProblem, TierIndex
from patron.reconcile import parse_spec
from tests.unit.test_assess import BASE, make_spec, run

CATASTROPHIC = "^(a|a)+$"  # exponential backtracking in Python's re on "aaa...ab"
LONG_MISS = "a" * 60 + "b"  # Python's re would try ~2^60 paths before answering "no match"


def test_compiled_patterns_are_re2() -> None:
    assert isinstance(compile_re2(CATASTROPHIC), re2._Regexp)


def test_catastrophic_pattern_on_a_long_name_answers_at_once() -> None:
    """Regression (issue 9): Python's re took 0.29 s on 22 characters here, doubling per character."""
    spec = make_spec(
        customers={"ignore": [CATASTROPHIC], "tiers": [{"name": "evil", "weight": 5, "pattern": CATASTROPHIC}]}
    )
    a = run(spec, traffic={LONG_MISS: (1.0, 0.0), "a" * 60: (1.0, 0.0), "real": (1.0, 0.0)})
    assert [c.customer for c in a.customers] == [LONG_MISS, "real"]  # "a"*60 is ignored
    tiers = TierIndex(spec.customers.tiers)
    assert tiers(LONG_MISS) is None
    tier = tiers("a" * 60)
    assert tier is not None and tier.name == "evil"


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", r"invalid escape sequence: \1"),
        ("acme(?=-eu)", "invalid perl operator: (?="),
        ("(?<!x)acme", "invalid perl operator: (?<"),
        ("[abc", "missing ]"),
        ("a{2000}", "invalid repetition size"),
    ],
)
def test_patterns_re2_cannot_match_in_linear_time_are_refused_naming_the_field(pattern: str, why: str) -> None:
    body = {**BASE, "customers": {"ignore": ["^ok$", pattern], "tiers": [{"name": "t", "pattern": pattern}]}}
    with pytest.raises(ValidationError):
        CustomerSLOSpec.model_validate(body)
    with pytest.raises(DataProblem) as err:
        parse_spec(body)
    message = err.value.message
    assert err.value.reason == "InvalidSpec"
    assert "spec.customers.ignore.1:" in message and "spec.customers.tiers.0.pattern:" in message
    assert why in message and "RE2 syntax" in message and "no backreferences or lookarounds" in message


def test_re2_search_semantics_match_re_for_ordinary_patterns() -> None:
    """Unanchored search, as re.search: a pattern matches anywhere unless anchored."""
    assert compile_re2("bot").search("crawler-bot-7") is not None
    assert compile_re2("^bot").search("crawler-bot-7") is None
    assert compile_re2(r"(?i)^ACME-\d+$").search("acme-42") is not None
