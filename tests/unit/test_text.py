"""Customer names are data: control characters are escaped wherever Patron prints them as text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patron.api.models import CustomerSLOSpec
from patron.cli import _print_table
from patron.replay import ReplayStep
from patron.replay import render as render_replay
from patron.report import build_report
from patron.report import render as render_report
from patron.text import printable, table

HOSTILE = "acme\x1b[31m\nforged line\u202e"
SHOWN = "acme\\x1b[31m\\x0aforged line\\u202e"
SPEC = CustomerSLOSpec.model_validate(
    {"service": "shop\x07", "objective": 99, "indicator": {"ratio": {"errors": 'r{code="500"}', "total": "r"}}}
)


def test_control_characters_are_escaped_the_rest_kept() -> None:
    assert printable(HOSTILE) == SHOWN
    assert printable('büro-ünïcode 日本 \\d "quoted"') == 'büro-ünïcode 日本 \\d "quoted"'
    assert printable("\x00\x7f\x9b\t") == "\\x00\\x7f\\x9b\\x09"


@given(st.text())
def test_printable_output_has_no_control_characters(text: str) -> None:
    out = printable(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    assert printable(out) == out


def test_table_aligns_escaped_cells() -> None:
    lines = table(("A", "B"), [(HOSTILE, "x"), ("y", "z")])
    assert lines == [f"A{' ' * (len(SHOWN) + 1)}B", f"{SHOWN}  x", f"y{' ' * (len(SHOWN) + 1)}z"]


def _report() -> dict[str, Any]:
    obj = {
        "metadata": {"namespace": "shop", "name": "checkout"},
        "status": {
            "severity": "warning",
            "incident": {"started": "2026-12-02T10:00:00Z", "affected": [HOSTILE], "lost": [HOSTILE]},
        },
    }
    events = [{"reason": "ImpactStarted", "lastTimestamp": "2026-12-02T10:00:05Z", "message": f"warning: {HOSTILE}"}]
    counts = {"requests": [({"customer": HOSTILE}, 100.0)], "bad": [({"customer": HOSTILE}, 50.0)]}
    return build_report(obj, events, counts, SPEC)


@pytest.mark.parametrize("output", ["table", "markdown"])
def test_report_text_escapes_names(output: str) -> None:
    text = render_report(_report(), output)
    assert SHOWN in text and "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "forged line" not in text.replace(SHOWN, "")  # never on a line of its own


def test_report_json_is_escaped_by_json() -> None:
    text = render_report(_report(), "json")
    assert "\x1b" not in text and json.loads(text)["incident"]["lostCustomers"] == [HOSTILE]


def test_replay_table_escapes_names() -> None:
    step = ReplayStep(
        at="2026-12-02T10:00:00Z",
        severity="warning",
        active=1,
        impacted=1,
        lost=0,
        storming=0,
        worst=(HOSTILE,),
        problem=None,
        events=(f"ImpactStarted: {HOSTILE}",),
        actions=(f"ActionApplied: throttled {HOSTILE}",),
    )
    text = render_replay([step], "table")
    assert text.count(SHOWN) == 2 and "\x1b" not in text and "\u202e" not in text


def test_evaluate_table_escapes_names(capsys: pytest.CaptureFixture[str]) -> None:
    row = {"customer": HOSTILE, "tier": "none", "errorRatio": 0.5, "burnRate": 50.0, "budgetRemaining": 0.1}
    status = {
        "severity": "warning",
        "activeCustomers": 1,
        "impactedCustomers": 1,
        "impactedFraction": 1.0,
        "weightedImpact": 1.0,
        "lostCustomers": 0,
        "stormingCustomers": 0,
        "lastEvaluationTime": "2026-12-02T10:00:00Z",
        "impacted": [row | {"requestRate": 1.0, "lost": False, "storming": False}],
    }
    _print_table(status)
    out = capsys.readouterr().out
    assert SHOWN in out and "\x1b" not in out and len(out.splitlines()) == 3


def test_event_messages_are_escaped_once_where_they_are_posted(monkeypatch: pytest.MonkeyPatch) -> None:
    from patron import handlers
    from patron.reconcile import Event

    posted: list[dict[str, Any]] = []
    monkeypatch.setattr(handlers.kopf, "event", lambda obj, **kw: posted.append(kw))
    handlers._post({"metadata": {}}, Event("ImpactStarted", f"warning: {HOSTILE}", "Warning"))
    assert posted == [{"type": "Warning", "reason": "ImpactStarted", "message": f"warning: {SHOWN}"}]
