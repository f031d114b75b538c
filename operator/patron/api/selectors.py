"""Plain Prometheus vector selectors: parsed, validated and rendered back with escaping.

CustomerSLOs carry selectors, never free PromQL: `name{label="value", other=~"re"}`. Anything
else (functions, ranges, offsets, operators) is refused, so a spec cannot smuggle a query.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from patron.api.regex import compile_re2

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OPS = ("=~", "!~", "!=", "=")
_ESCAPES = {
    "\\": "\\",
    '"': '"',
    "'": "'",
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}


class SelectorError(ValueError):
    """A string that is not a plain vector selector."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def render(self) -> str:
        return f"{self.label}{self.op}{quote(self.value)}"


@dataclass(frozen=True)
class Selector:
    metric: str | None
    matchers: tuple[Matcher, ...] = ()

    def with_metric(self, metric: str) -> Selector:
        return Selector(metric, self.matchers)

    def with_matcher(self, label: str, op: str, value: str) -> Selector:
        return Selector(self.metric, (*self.matchers, Matcher(label, op, value)))

    def render(self) -> str:
        inner = ",".join(m.render() for m in self.matchers)
        if self.metric and not inner:
            return self.metric
        return f"{self.metric or ''}{{{inner}}}"


def quote(value: str) -> str:
    """A PromQL double-quoted string literal for `value` (JSON escaping is a valid PromQL escaping)."""
    return json.dumps(value, ensure_ascii=False)


def _read_string(text: str, pos: int) -> tuple[str, int]:
    quote_char = text[pos]
    if quote_char not in "\"'`":
        raise SelectorError(f"expected a quoted string at position {pos}")
    pos += 1
    out: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if ch == quote_char:
            return "".join(out), pos + 1
        if ch == "\\" and quote_char != "`":
            pos += 1
            if pos >= len(text):
                break
            esc = text[pos]
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
            elif esc in "uU":
                width = 4 if esc == "u" else 8
                digits = text[pos + 1 : pos + 1 + width]
                if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise SelectorError(f"bad \\{esc} escape at position {pos}")
                out.append(chr(int(digits, 16)))
                pos += width
            else:
                raise SelectorError(f"unknown escape \\{esc} at position {pos}")
        else:
            out.append(ch)
        pos += 1
    raise SelectorError("unterminated string")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def parse_selector(text: str) -> Selector:
    """Parse `name{l="v",...}`; raise SelectorError saying what is allowed."""
    hint = 'use a plain vector selector such as http_requests_total{service="checkout",code=~"5.."}'
    pos = _skip_space(text, 0)
    metric = None
    m = _NAME.match(text, pos)
    if m:
        metric = m.group(0)
        pos = _skip_space(text, m.end())
    matchers: list[Matcher] = []
    if pos < len(text) and text[pos] == "{":
        pos = _skip_space(text, pos + 1)
        while pos < len(text) and text[pos] != "}":
            lm = _LABEL.match(text, pos)
            if not lm:
                raise SelectorError(f"{text!r}: expected a label name at position {pos}; {hint}")
            pos = _skip_space(text, lm.end())
            op = next((o for o in _OPS if text.startswith(o, pos)), None)
            if op is None:
                raise SelectorError(f"{text!r}: expected =, !=, =~ or !~ at position {pos}; {hint}")
            pos = _skip_space(text, pos + len(op))
            try:
                value, pos = _read_string(text, pos)
            except SelectorError as err:
                raise SelectorError(f"{text!r}: {err}; {hint}") from None
            if op in ("=~", "!~"):
                # Prometheus' regexes are RE2 (Go's regexp): refuse here what it would refuse.
                try:
                    compile_re2(value)
                except ValueError as err:
                    raise SelectorError(f"{text!r}: bad regex for {lm.group(0)}: {err}") from None
            matchers.append(Matcher(lm.group(0), op, value))
            pos = _skip_space(text, pos)
            if pos < len(text) and text[pos] == ",":
                pos = _skip_space(text, pos + 1)
            elif pos < len(text) and text[pos] != "}":
                raise SelectorError(f"{text!r}: expected , or }} at position {pos}; {hint}")
        if pos >= len(text):
            raise SelectorError(f"{text!r}: missing closing }}; {hint}")
        pos = _skip_space(text, pos + 1)
    if pos != len(text):
        raise SelectorError(f"{text!r} is not a plain vector selector (unexpected {text[pos:]!r}); {hint}")
    if metric is None and not any(m.op in ("=", "=~") and m.value for m in matchers):
        raise SelectorError(f"{text!r}: name a metric or at least one non-empty matcher; {hint}")
    return Selector(metric, tuple(matchers))
