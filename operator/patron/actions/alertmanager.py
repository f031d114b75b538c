"""An async Alertmanager API v2 client: `send` queues, a background task per URL delivers.

Delivery (POST /api/v2/alerts) is retried with exponential backoff (with jitter) while an
Alertmanager is unreachable or answers 5xx/429. Each URL has its own queue, keyed by the alert's
label set, so a newer version of an alert (a re-send, or its resolve) replaces the queued one and
a queue never holds one alert twice. The queue is bounded: when full, the oldest *firing* alert
is dropped first (firing alerts are re-sent every evaluation anyway); resolves are dropped last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from patron import metrics
from patron.impact.connection import Connection, ConnectionOptionError

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Alert:
    """One Alertmanager v2 postable alert; `resolved` when endsAt is the time it was built."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime
    generator_url: str
    resolved: bool = False

    @property
    def fingerprint(self) -> Fingerprint:
        return tuple(sorted(self.labels.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": _rfc3339(self.starts_at),
            "endsAt": _rfc3339(self.ends_at),
            "generatorURL": self.generator_url,
        }


def _rfc3339(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertQueue:
    """Pending alerts of one Alertmanager, at most `capacity`, one per label set, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pending: OrderedDict[Fingerprint, Alert] = OrderedDict()
        self.dropped = 0
        self.changed = asyncio.Event()

    def put(self, alert: Alert) -> None:
        fp = alert.fingerprint
        self.pending.pop(fp, None)
        if len(self.pending) >= self.capacity:
            victim = next((k for k, a in self.pending.items() if not a.resolved), next(iter(self.pending)))
            del self.pending[victim]
            self.dropped += 1
        self.pending[fp] = alert
        self.changed.set()

    def batch(self, size: int) -> list[Alert]:
        return list(self.pending.values())[:size]

    def delivered(self, alerts: Iterable[Alert]) -> None:
        """Forget delivered alerts, unless a newer version was queued meanwhile."""
        for alert in alerts:
            if self.pending.get(alert.fingerprint) is alert:
                del self.pending[alert.fingerprint]
        if not self.pending:
            self.changed.clear()


class Rejected(Exception):
    """Alertmanager answered 4xx (not 429): the batch is wrong and retrying cannot help."""


class AlertmanagerClient:
    """Queues alerts for every URL and delivers them from one background task per URL."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        timeout: float = 10.0,
        backoff: tuple[float, float] = (0.5, 10.0),
        connection: Connection | None = None,
    ) -> None:
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.connection = connection or Connection("--alertmanager")
        self.queues = {url: AlertQueue(capacity) for url in self.urls}
        self.batch_size = batch_size
        self.timeout = timeout
        self.backoff = backoff
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def send(self, alerts: Iterable[Alert]) -> None:
        """Queue `alerts` for every Alertmanager; returns at once."""
        for alert in alerts:
            for queue in self.queues.values():
                before = queue.dropped
                queue.put(alert)
                if queue.dropped > before:
                    metrics.ACTIONS.labels(action="alert", result="dropped").inc()
                    log.warning("alert queue full (%d): dropped the oldest firing alert", queue.capacity)

    def pending(self) -> int:
        return sum(len(q.pending) for q in self.queues.values())

    def start(self) -> None:
        """Start the senders on the running event loop."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(ssl=self.connection.ssl_context()),
        )
        self._tasks = [asyncio.create_task(self._deliver(url), name=f"alertmanager {url}") for url in self.urls]

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Deliver what is pending (for at most `flush_timeout` seconds), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flushed(), flush_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        left = self.pending()
        if left:
            log.warning("stopping with %d undelivered alerts", left)

    async def _flushed(self) -> None:
        while self.pending():
            await asyncio.sleep(0.05)

    async def _deliver(self, url: str) -> None:
        queue = self.queues[url]
        delay = self.backoff[0]
        while True:
            await queue.changed.wait()
            batch = queue.batch(self.batch_size)
            if not batch:
                queue.changed.clear()
                continue
            try:
                await self._post(url, batch)
            except Rejected as err:
                log.error("Alertmanager %s rejected %d alerts, not retried: %s", url, len(batch), err)
                metrics.ACTIONS.labels(action="alert", result="rejected").inc(len(batch))
                queue.delivered(batch)
            except (aiohttp.ClientError, TimeoutError, OSError, ConnectionOptionError) as err:
                metrics.ACTIONS.labels(action="alert", result="retry").inc()
                log.warning(
                    "Alertmanager %s unreachable (%s); %d alerts queued, retry in %.1fs",
                    url,
                    err,
                    len(queue.pending),
                    delay,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])
                continue
            metrics.ACTIONS.labels(action="alert", result="sent").inc(len(batch))
            queue.delivered(batch)
            delay = self.backoff[0]

    async def _post(self, url: str, batch: Sequence[Alert]) -> None:
        assert self._session is not None, "start() first"
        payload = [a.to_json() for a in batch]
        headers = self.connection.request_headers()  # token files are re-read: rotation
        async with self._session.post(f"{url}/api/v2/alerts", json=payload, headers=headers) as resp:
            body = await resp.text()
            if resp.status == 429 or resp.status >= 500:
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message=body[:200]
                )
            if resp.status >= 400:
                raise Rejected(f"HTTP {resp.status}: {body[:500]}")
