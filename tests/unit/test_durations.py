from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patron.api.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("30d", 2592000), ("1w", 604800)]
)
def test_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "1.5h", "5m1h", "0s", "-5m", "5 m"])
def test_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than 0s"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**8))
def test_format_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
