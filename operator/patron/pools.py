"""Dedicated, bounded thread pools for blocking clients, one per system (Prometheus, Kubernetes).

Blocking calls never run on the event loop nor in asyncio's shared default pool, so a slow system
cannot starve the other's calls. `Pool.run` first waits for a free thread (not timed: that wait is
the operator's queue, not the remote system), then bounds the call itself by `timeout`. A thread
stays counted as busy until its call really returns, even after a timeout gave up on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Pool:
    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"patron-{name}")
        # The free threads as seen by each event loop (an asyncio.Semaphore belongs to one loop; the
        # operator has one, but `asyncio.run` twice with one client, as the CLI and benchmarks do, is two).
        self._free: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """fn(*args) in a pool thread; TimeoutError after `timeout` seconds of the call itself."""
        loop = asyncio.get_running_loop()
        free = self._free.get(loop)
        if free is None:
            free = self._free[loop] = asyncio.Semaphore(self.threads)
        await free.acquire()
        try:
            future: Future[T] = self._executor.submit(fn, *args)
        except BaseException:
            free.release()
            raise
        future.add_done_callback(lambda _: _release(loop, free))
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)


def _release(loop: asyncio.AbstractEventLoop, free: asyncio.Semaphore) -> None:
    """From the pool thread: free the slot on the loop (unless the loop is gone, at shutdown)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(free.release)
