"""Polling for e2e tests: the one place that waits for something to become true."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 60,
    what: str = "condition",
    interval: float = 0.5,
    explain: Callable[[], str] | None = None,
) -> T:
    """Call `check` until it returns something truthy; return that, or fail after `timeout` seconds
    naming `what` (and what `explain()` says about the state at that moment)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (explain() if explain else ""))
        time.sleep(interval)
