"""Prometheus-style durations (`30s`, `5m`, `1h30m`, `30d`), as used in CustomerSLO specs."""

from __future__ import annotations

import re

# The subset of Prometheus durations that Patron accepts: one or more <int><unit>, largest unit first.
DURATION_PATTERN = r"^([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"([0-9]+)([wdhms])")


def parse_duration(text: str) -> int:
    """Seconds in `text`; raises ValueError naming what is allowed."""
    if not text or not re.match(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 5m, 1h, 6h, 30d (units w d h m s)")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than 0s")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest Prometheus duration for `seconds` (inverse of parse_duration)."""
    if seconds <= 0:
        raise ValueError("duration must be positive")
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)
