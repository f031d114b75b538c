"""The regexes of a CustomerSLO (tier patterns, customers.ignore): RE2 syntax, linear-time matching.

Python's `re` backtracks: `^(a|a)+$` against a 40-character customer name does not finish, and
it would stall every CustomerSLO on the operator's event loop. RE2 matches in time linear in the
name's length and refuses at compile time what it cannot match that way (backreferences,
lookarounds). Memory per compiled pattern is bounded by RE2's max_mem (8 MiB).
"""

from __future__ import annotations

from typing import Protocol

import re2

RE2_SYNTAX = "RE2 syntax (https://github.com/google/re2/wiki/Syntax): no backreferences or lookarounds"


class Pattern(Protocol):
    """What Patron uses of a compiled RE2 pattern."""

    def search(self, text: str) -> object | None: ...


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the error goes to the caller, not to stderr
    return options


_OPTIONS = _options()


def compile_re2(pattern: str) -> Pattern:
    """`pattern` compiled by RE2; ValueError saying why RE2 refuses it."""
    try:
        compiled: Pattern = re2.compile(pattern, _OPTIONS)
    except re2.error as err:
        reason = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        raise ValueError(f"{pattern!r} is not a valid regular expression: {reason}; use {RE2_SYNTAX}") from None
    return compiled
