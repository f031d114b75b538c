"""One scheduler for every CustomerSLO: when each is due, which one runs next, how many at once.

`Schedule` is the pure decision logic (the caller passes the time); `Scheduler` runs it on the event
loop. Invariants:
- at most `limit` evaluations run at once, and never two of one object;
- among the due objects the earliest due goes first (ties: the one that started least recently),
  so under overload every object is evaluated in round-robin order and none starves;
- the next due time is `start + interval`: an object keeps its phase, and one that started late
  does not run twice in a row to catch up;
- lag = start - due, the time an evaluation waited for a slot; it is never counted as Prometheus'.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


@dataclass
class _Entry:
    interval: float
    due: float
    order: int  # tie-breaker among equal due times: smaller goes first
    running: bool = False
    started: float = 0.0
    again: float | None = None  # while running: asked to be due again at this time
    removed: bool = False  # while running: removed, forgotten when it finishes


class Schedule(Generic[K]):
    """Due times of a set of objects; `take` says which to start now. Pure: no clock, no I/O."""

    def __init__(self, limit: int, rng: random.Random | None = None) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        self.rng = rng or random.Random()
        self._entries: dict[K, _Entry] = {}
        self._heap: list[tuple[float, int, K]] = []  # (due, order, key); stale items skipped
        self._counter = 0
        self.running = 0

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if not e.removed)

    def __contains__(self, key: object) -> bool:
        entry = self._entries.get(key)  # type: ignore[arg-type]
        return entry is not None and not entry.removed

    def _next_order(self) -> int:
        self._counter += 1
        return self._counter

    def _push(self, key: K, entry: _Entry) -> None:
        heapq.heappush(self._heap, (entry.due, entry.order, key))
        if len(self._heap) > 2 * len(self._entries) + 64:  # drop stale items now and then
            self._heap = [(e.due, e.order, k) for k, e in self._entries.items() if not e.running]
            heapq.heapify(self._heap)

    def put(self, key: K, interval: float, now: float, spread: float = 0.0) -> None:
        """Add `key`, or update its interval, due at most `spread` (uniform jitter) after `now`.

        An earlier due time wins: an object already due sooner keeps its turn. A running object is
        due again at that time after it finishes (a spec change during an evaluation is not lost).
        """
        due = now + (self.rng.uniform(0.0, spread) if spread > 0 else 0.0)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(interval, due, self._next_order())
            self._push(key, entry)
            return
        entry.interval, entry.removed = interval, False
        if entry.running:
            entry.again = due if entry.again is None else min(entry.again, due)
        elif due < entry.due:
            entry.due = due
            self._push(key, entry)

    def remove(self, key: K) -> None:
        """Forget `key`. A running evaluation keeps its slot until it finishes; then it is dropped."""
        entry = self._entries.get(key)
        if entry is not None and entry.running:
            entry.removed = True
        else:
            self._entries.pop(key, None)

    def take(self, now: float) -> list[tuple[K, float]]:
        """The objects to start now, earliest due first, up to the free slots: (key, lag seconds)."""
        out: list[tuple[K, float]] = []
        while self.running < self.limit and self._heap and self._heap[0][0] <= now:
            due, order, key = heapq.heappop(self._heap)
            entry = self._entries.get(key)
            if entry is None or entry.running or (entry.due, entry.order) != (due, order):
                continue  # stale
            entry.running, entry.started = True, now
            entry.order = self._next_order()  # started later than every object started before
            self.running += 1
            out.append((key, now - due))
        return out

    def finish(self, key: K, now: float) -> None:
        """`key`'s evaluation ended: due again `interval` after it started (or sooner if asked)."""
        entry = self._entries.get(key)
        if entry is None or not entry.running:
            return
        self.running -= 1
        entry.running = False
        if entry.removed:
            del self._entries[key]
            return
        entry.due = entry.started + entry.interval
        if entry.again is not None:
            entry.due, entry.again = min(entry.due, entry.again), None
        self._push(key, entry)

    def next_due(self) -> float | None:
        """When `take` may next return something: the earliest idle due time; None when nothing
        is waiting or every slot is busy (a `finish` comes first)."""
        if self.running >= self.limit:
            return None
        while self._heap:
            due, order, key = self._heap[0]
            entry = self._entries.get(key)
            if entry is not None and not entry.running and (entry.due, entry.order) == (due, order):
                return due
            heapq.heappop(self._heap)
        return None


class Scheduler(Generic[K]):
    """Runs a Schedule on the event loop: starts `evaluate(key, lag)` for each object when due.

    `put`/`remove` take effect at once (the loop is woken). An exception in `evaluate` is logged
    and the object stays scheduled.
    """

    def __init__(
        self,
        schedule: Schedule[K],
        evaluate: Callable[[K, float], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.schedule = schedule
        self.evaluate = evaluate
        self.clock = clock
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def put(self, key: K, interval: float, spread: float = 0.0) -> None:
        self.schedule.put(key, interval, self.clock(), spread)
        self._wake.set()

    def remove(self, key: K) -> None:
        self.schedule.remove(key)
        self._wake.set()

    async def run(self) -> None:
        """Forever: start what is due, then sleep until the next due time, a finish or a put."""
        try:
            while True:
                self._wake.clear()
                for key, lag in self.schedule.take(self.clock()):
                    task = asyncio.create_task(self._one(key, lag))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                due = self.schedule.next_due()
                timeout = None if due is None else max(0.0, due - self.clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _one(self, key: K, lag: float) -> None:
        try:
            await self.evaluate(key, lag)
        except Exception:
            log.exception("evaluation of %s failed unexpectedly", key)
        finally:
            self.schedule.finish(key, self.clock())
            self._wake.set()
