"""patron.schedule: due times, the concurrency limit, fair (earliest due first) order, no starvation."""

from __future__ import annotations

import asyncio
import heapq
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from patron.schedule import Schedule, Scheduler


def simulate(
    n: int, limit: int, interval: float, durations: list[float], until: float
) -> list[tuple[float, int, float]]:
    """Discrete-event run of a Schedule: every object added at 0; evaluation k takes durations[k % len].

    Returns the starts as (time, object, lag).
    """
    schedule: Schedule[int] = Schedule(limit, random.Random(0))
    for key in range(n):
        schedule.put(key, interval, 0.0)
    now, starts, ends = 0.0, [], []  # ends: heap of (time, key)
    while now <= until:
        for key, lag in schedule.take(now):
            assert schedule.running <= limit
            starts.append((now, key, lag))
            heapq.heappush(ends, (now + durations[len(starts) % len(durations)], key))
        due = schedule.next_due()
        now = min(ends[0][0] if ends else float("inf"), due if due is not None else float("inf"))
        while ends and ends[0][0] <= now:
            schedule.finish(heapq.heappop(ends)[1], now)
    return starts


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 30), limit=st.integers(1, 4), duration=st.floats(0.5, 5.0))
def test_under_overload_every_object_is_evaluated_in_round_robin_order(n: int, limit: int, duration: float) -> None:
    # Overload: an interval shorter than the time the fleet needs for one round.
    interval = duration * n / limit / 4
    starts = simulate(n, limit, interval, [duration], until=duration * n * 5)
    keys = [key for _, key, _ in starts]
    assert len(keys) >= 3 * n
    first = keys[:n]
    assert sorted(first) == list(range(n))  # each once before any twice
    for i in range(n, len(keys)):
        assert keys[i] == keys[i - n]  # then the same order, round after round


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 25),
    limit=st.integers(1, 4),
    interval=st.floats(1.0, 60.0),
    durations=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=20),
)
def test_no_object_starves_and_the_limit_holds(n: int, limit: int, interval: float, durations: list[float]) -> None:
    longest = max(durations)
    until = (interval + longest) * (n + 2) * 3
    starts = simulate(n, limit, interval, durations, until)
    # An object waits at most for every other object ahead of it to get a slot: (n // limit + 1) rounds
    # of the longest evaluation, after its own evaluation and interval.
    bound = interval + longest + (n // limit + 1) * longest
    last = dict.fromkeys(range(n), 0.0)
    for when, key, lag in starts:
        assert when - last[key] <= bound + 1e-6
        assert lag >= 0
        last[key] = when
    for key in range(n):
        assert until - last[key] <= bound + longest + 1e-6


def test_next_due_is_start_plus_interval_keeping_the_phase() -> None:
    schedule: Schedule[str] = Schedule(limit=4)
    schedule.put("a", 30.0, now=100.0)
    assert schedule.take(100.0) == [("a", 0.0)]
    assert schedule.next_due() is None  # nothing idle
    schedule.finish("a", now=107.0)  # took 7 s
    assert schedule.next_due() == 130.0
    assert schedule.take(129.9) == []
    assert schedule.take(145.0) == [("a", 15.0)]  # 15 s late: the lag, not counted as Prometheus'
    schedule.finish("a", now=146.0)
    assert schedule.next_due() == 175.0  # no catching up: one evaluation per interval after a late one


def test_a_change_is_due_at_once_and_an_earlier_due_time_stays() -> None:
    schedule: Schedule[str] = Schedule(limit=1)
    schedule.put("a", 30.0, now=0.0)
    schedule.take(0.0)
    schedule.finish("a", 1.0)
    schedule.put("a", 30.0, now=5.0)  # spec changed at 5: due now, not at 30
    assert schedule.next_due() == 5.0
    schedule.put("a", 30.0, now=6.0, spread=10.0)  # a later put does not push it back
    assert schedule.next_due() == 5.0


def test_a_change_during_an_evaluation_runs_it_again_after() -> None:
    schedule: Schedule[str] = Schedule(limit=2)
    schedule.put("a", 30.0, now=0.0)
    assert [k for k, _ in schedule.take(0.0)] == ["a"]
    schedule.put("a", 10.0, now=2.0)  # changed while running: never two evaluations at once
    assert schedule.take(2.0) == []
    schedule.finish("a", 3.0)
    assert schedule.next_due() == 2.0  # due again at once with its new interval
    schedule.take(3.0)
    schedule.finish("a", 4.0)
    assert schedule.next_due() == 13.0


def test_removed_objects_go_and_a_running_one_keeps_its_slot_until_it_ends() -> None:
    schedule: Schedule[str] = Schedule(limit=1)
    for key in "ab":
        schedule.put(key, 30.0, now=0.0)
    assert [k for k, _ in schedule.take(0.0)] == ["a"]
    schedule.remove("a")
    assert "a" not in schedule and len(schedule) == 1
    assert schedule.take(0.0) == []  # "a" still runs: the limit holds
    schedule.finish("a", 1.0)
    assert [k for k, _ in schedule.take(1.0)] == ["b"]
    schedule.finish("b", 2.0)
    schedule.take(100.0)
    assert "a" not in schedule


def test_spread_jitters_the_first_due_time_within_the_bound() -> None:
    schedule: Schedule[int] = Schedule(limit=1000, rng=random.Random(1))
    for key in range(200):
        schedule.put(key, 30.0, now=0.0, spread=10.0)
    lags = schedule.take(10.0)
    assert len(lags) == 200
    dues = [10.0 - lag for _, lag in lags]
    assert all(0.0 <= d <= 10.0 for d in dues)
    assert max(dues) - min(dues) > 5.0  # spread, not all at once


def test_scheduler_runs_due_objects_with_the_limit_and_picks_up_new_ones_at_once() -> None:
    async def main() -> tuple[list[str], int]:
        running, peak, started = 0, 0, []

        async def evaluate(key: str, lag: float) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            started.append(key)
            await asyncio.sleep(0.02)
            running -= 1
            if key == "boom":
                raise RuntimeError("an evaluation's bug does not stop the scheduler")

        scheduler: Scheduler[str] = Scheduler(Schedule(2), evaluate)
        task = asyncio.create_task(scheduler.run())
        for key in ("a", "b", "c", "boom"):
            scheduler.put(key, 3600.0)
        await asyncio.sleep(0.2)
        scheduler.put("late", 3600.0)  # picked up at once, not at a tick
        await asyncio.sleep(0.1)
        task.cancel()
        return started, peak

    started, peak = asyncio.run(main())
    assert started == ["a", "b", "c", "boom", "late"]
    assert peak == 2


def test_heartbeat_writes_add_up_to_at_most_one_per_second_fleet_wide() -> None:
    from patron.handlers import HEARTBEAT_SECONDS, heartbeat_seconds

    assert heartbeat_seconds(1) == heartbeat_seconds(60) == HEARTBEAT_SECONDS
    for objects in (61, 200, 1000, 5000):
        assert objects / heartbeat_seconds(objects) <= 1.0


def _obj(version: str, **status: object) -> dict[str, object]:
    return {
        "metadata": {"name": "a", "resourceVersion": version, "managedFields": [{"manager": "x"}]},
        "status": status,
    }


def test_an_evaluation_starts_from_the_watched_body_or_the_last_write_the_watch_has_not_delivered() -> None:
    from patron.reconcile import Written, freshest

    body = _obj("5", severity="none")
    assert freshest(body, None) is body
    ours = _obj("7", severity="critical")  # our write, made while the body was at 5
    assert freshest(body, Written("5", ours)) is ours  # the watch has not delivered it yet
    watched = _obj("7")
    assert freshest(watched, Written("5", ours)) is watched  # delivered: the body is as new
    # Another change arrived first (6): whether ours is in it cannot be told, so it is read afresh.
    assert freshest(_obj("6"), Written("5", ours)) is None


def test_the_evaluations_copy_of_a_watched_body_is_deep_and_leaves_managed_fields_out() -> None:
    from patron.handlers import snapshot

    body = _obj("5", conditions=[{"type": "Ready", "status": "True"}])
    copy = snapshot(body)
    copy["status"]["conditions"][0]["status"] = "False"  # type: ignore[index]
    assert body["status"] == {"conditions": [{"type": "Ready", "status": "True"}]}
    assert "managedFields" not in copy["metadata"] and "managedFields" in body["metadata"]  # type: ignore[operator]
