"""Customer names are data: shown to people, their control characters are escaped.

A customer label value can hold anything (an escape sequence that recolours or clears a terminal,
a newline that forges a line of a report or an Event). `printable` is applied wherever such text
leaves Patron as text: the table/Markdown output of report, evaluate and replay, and Event
messages. JSON output needs nothing: json escapes control characters itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# C0 and C1 controls and DEL, line/paragraph separators, and the bidirectional overrides and
# isolates that can reorder what a terminal or browser shows (CVE-2021-42574).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with each control character written as \\xNN (or \\uNNNN); everything else as is.

    Backslashes are kept as they are (selectors in messages hold regex escapes), so a name that
    literally contains `\\x1b` reads the same as one holding ESC; it can no longer act as one.
    """
    return _UNPRINTABLE.sub(_escape, text)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned plain-text columns, two spaces apart, every cell `printable`; the header line first."""
    cells = [list(header), *([printable(str(c)) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
