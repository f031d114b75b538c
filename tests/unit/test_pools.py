"""patron.pools.Pool: the wait for a thread is not timed, the call is; a busy thread stays counted."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from patron.pools import Pool


def test_waiting_for_a_thread_is_not_timed_only_the_call_is() -> None:
    async def main() -> list[str]:
        pool = Pool("test", 1)
        # Four calls of 0.2 s through one thread, each with a 0.5 s timeout: the last waits 0.6 s
        # for the thread, yet none times out (the old asyncio.wait_for(to_thread) counted the queue).
        return await asyncio.gather(
            *(pool.run(lambda i=i: (time.sleep(0.2), f"r{i}")[1], timeout=0.5) for i in range(4))
        )

    assert asyncio.run(main()) == ["r0", "r1", "r2", "r3"]


def test_a_timed_out_call_keeps_its_thread_busy_until_it_returns() -> None:
    release = threading.Event()

    async def main() -> None:
        pool = Pool("test", 1)
        with pytest.raises(TimeoutError):
            await pool.run(release.wait, 5, timeout=0.1)
        second = asyncio.create_task(pool.run(lambda: "second", timeout=0.1))
        await asyncio.sleep(0.3)
        assert not second.done()  # waits for the thread (untimed), does not time out in the queue
        release.set()
        assert await second == "second"

    asyncio.run(main())


def test_one_pool_serves_one_event_loop_after_another() -> None:
    """Regression: the slots were an asyncio.Semaphore bound to the first loop, so a client used by two
    `asyncio.run` calls (the CLI, the benchmarks) failed with "bound to a different event loop"."""
    pool = Pool("test", 2)

    async def twice() -> list[int]:
        return list(await asyncio.gather(pool.run(lambda: 1), pool.run(lambda: 2), pool.run(lambda: 3)))

    assert asyncio.run(twice()) == [1, 2, 3]
    assert asyncio.run(twice()) == [1, 2, 3]
