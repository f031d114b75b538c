"""The Alertmanager client against a local HTTP server that is down, failing, then up."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from typing import Any

from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from patron.actions.alertmanager import Alert, AlertmanagerClient, AlertQueue
from tests.unit.test_actions_plan import T0


def make(name: str, resolved: bool = False, n: int = 0) -> Alert:
    ends = T0 if resolved else T0 + timedelta(seconds=8)
    return Alert({"alertname": name}, {"n": str(n)}, T0, ends, "http://p/graph", resolved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeAlertmanager:
    """POST /api/v2/alerts answering `failures` times 503, then 200; records what it accepted."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[dict[str, Any]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=503, text="starting")
        self.received.extend(await request.json())
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def test_alerts_survive_an_alertmanager_that_is_down_then_failing() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], int]:
        am = FakeAlertmanager(failures=2)
        client = AlertmanagerClient([am.url], backoff=(0.05, 0.2))
        client.start()
        client.send([make("A"), make("B")])
        await asyncio.sleep(0.3)  # nothing listens: connection refused, retried
        await am.start()
        client.send([make("A", resolved=True)])  # the newer version replaces the queued one
        await client.close(flush_timeout=5)
        await am.stop()
        return am.received, client.pending()

    received, pending = asyncio.run(scenario())
    assert pending == 0
    assert sorted((a["labels"]["alertname"], a["endsAt"]) for a in received) == [
        ("A", "2026-11-26T10:00:00.000Z"),
        ("B", "2026-11-26T10:00:08.000Z"),
    ]


def test_every_url_gets_every_alert_even_if_one_is_down() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], int]:
        up = FakeAlertmanager()
        await up.start()
        client = AlertmanagerClient([up.url, f"http://127.0.0.1:{free_port()}"], backoff=(0.05, 0.1))
        client.start()
        client.send([make("A")])
        await asyncio.sleep(0.5)
        left = client.pending()
        await client.close(flush_timeout=0.1)
        await up.stop()
        return up.received, left

    received, left = asyncio.run(scenario())
    assert [a["labels"]["alertname"] for a in received] == ["A"]
    assert left == 1  # still queued for the one that is down


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=60), st.integers(1, 5))
def test_queue_is_bounded_keeps_resolves_and_the_newest_version(puts: list[tuple[str, bool]], capacity: int) -> None:
    queue = AlertQueue(capacity)
    for n, (name, resolved) in enumerate(puts):
        before = dict(queue.pending)
        queue.put(make(name, resolved, n))
        assert len(queue.pending) <= capacity
        lost = [a for fp, a in before.items() if fp not in queue.pending]
        if lost:  # one was dropped to make room: a resolve only when no firing alert was left
            (victim,) = lost
            others = [a for a in before.values() if a is not victim and a.labels["alertname"] != name]
            assert not victim.resolved or all(a.resolved for a in others)
    latest = {name: n for n, (name, _) in enumerate(puts)}
    for alert in queue.pending.values():
        assert int(alert.annotations["n"]) == latest[alert.labels["alertname"]]
