"""The Prometheus adapter: runs a QueryPlan over Prometheus' HTTP API (urllib3, keep-alive
connections, nothing set up per request) in its own bounded thread pool (patron.pools), off the event
loop.

Timeouts measure Prometheus alone: the wait for a pool thread is not timed, a query is bounded by
`timeout` (client read timeout and Prometheus' own `timeout` parameter), and a failed or timed-out
query is never retried within the evaluation (the next evaluation asks again).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError

from patron import metrics
from patron.impact.assess import DataProblem, Series
from patron.impact.connection import Connection, ConnectionOptionError
from patron.impact.queries import BUDGET_REFRESH, QueryPlan
from patron.pools import Pool
from patron.text import printable

DEFAULT_TIMEOUT = 10.0
# Threads for Prometheus queries: more only queue inside Prometheus (it runs a few queries at once).
THREADS = 8
# Budget-window results kept at most (PromQL -> result), oldest dropped first; expired ones go too.
BUDGET_CACHE_SIZE = 4096
# A range query's result: per series its labels and (unix time, value) samples, oldest first.
RangeSeries = list[tuple[dict[str, str], list[tuple[float, float]]]]


class Prometheus:
    """A Prometheus HTTP API endpoint. Errors become DataProblem('PrometheusUnavailable' | 'QueryFailed')."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT, connection: Connection | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.connection = connection or Connection()
        self._http = _http(self.url, self.connection, timeout)
        self._pool = Pool("prometheus", THREADS)
        self._budget_cache: dict[str, tuple[float, Series]] = {}  # insertion order = age

    def query(self, promql: str, at: datetime | None = None) -> Series:
        """One instant query; a vector or scalar result as (labels, value) pairs."""
        params = {"query": promql, "timeout": f"{self.timeout:g}s", **({"time": f"{at.timestamp():.3f}"} if at else {})}
        return _parse(self._call(promql, "query", params))

    def query_range(self, promql: str, start: datetime, end: datetime, step_seconds: int) -> RangeSeries:
        """One range query over [start, end]: a matrix as (labels, [(unix time, value), ...]) pairs."""
        bounds = {"start": str(round(start.timestamp())), "end": str(round(end.timestamp()))}
        data = self._call(promql, "query_range", {"query": promql, **bounds, "step": str(step_seconds)})
        out: RangeSeries = []
        for item in data if isinstance(data, list) else []:
            out.append((dict(item.get("metric", {})), [(float(t), float(v)) for t, v in item.get("values", [])]))
        return out

    def _call(self, promql: str, endpoint: str, params: dict[str, str]) -> object:
        """POST /api/v1/<endpoint> with a form body (a query naming thousands of candidates would
        pass no proxy's URL limit as a GET): its `data.result`; errors as DataProblem, counted and
        timed in patron_prometheus_query_*. No retry: a failed query waits for the next evaluation."""
        started = time.monotonic()
        try:
            response = self._http.request(
                "POST",
                f"{self.url}/api/v1/{endpoint}",
                fields=params,
                encode_multipart=False,
                headers=self.connection.request_headers(),
            )
            body: Any = json.loads(response.data) if response.status == 200 else None
            data = body["data"]["result"] if body is not None else None
        except (HTTPError, OSError, ConnectionOptionError, ValueError, KeyError, TypeError) as err:
            metrics.QUERIES.labels(outcome="unavailable").inc()
            raise DataProblem("PrometheusUnavailable", f"Prometheus at {self.url} did not answer: {err}") from err
        finally:
            metrics.QUERY_SECONDS.observe(time.monotonic() - started)
        if response.status != 200:
            metrics.QUERIES.labels(outcome="error").inc()
            detail = f"HTTP {response.status} ({response.data[:500]!r})"
            raise DataProblem("QueryFailed", f"Prometheus refused {promql!r}: {detail}")
        warnings = body.get("warnings") if isinstance(body, dict) else None
        if warnings:  # data of a store, shard or rule evaluator may be missing: never act on it
            metrics.QUERIES.labels(outcome="partial").inc()
            shown = "; ".join(printable(str(w)) for w in warnings[:3])
            raise DataProblem("PartialData", f"Prometheus at {self.url} answered with warnings (partial data): {shown}")
        metrics.QUERIES.labels(outcome="ok").inc()
        return data

    def run(self, plan: QueryPlan, at: datetime | None = None) -> dict[str, Series]:
        return {name: self.query(promql, at) for name, promql in plan.queries.items()}

    async def query_async(self, promql: str, at: datetime | None = None) -> Series:
        """One instant query (now by default), in a worker thread, bounded by the timeout."""
        return await self._in_thread(self.query, promql, at)

    async def run_async(self, plan: QueryPlan, at: datetime | None = None) -> dict[str, Series]:
        """Run the plan's queries now, concurrently in worker threads, each bounded by the timeout.

        Budget-window results younger than BUDGET_REFRESH are reused (keyed by PromQL, so CustomerSLOs
        sharing a selector share them too).
        """
        now = time.monotonic()
        reused = {
            n: self._budget_cache[q][1]
            for n, q in plan.queries.items()
            if n in plan.budget_only and now - self._budget_cache.get(q, (-BUDGET_REFRESH, []))[0] < BUDGET_REFRESH
        }
        names = [n for n in plan.queries if n not in reused]
        results = await asyncio.gather(
            *(self._in_thread(self.query, plan.queries[n], at) for n in names), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        fresh: dict[str, Series] = dict(zip(names, results, strict=True))  # type: ignore[arg-type]
        for n in fresh.keys() & plan.budget_only:
            self._remember(plan.queries[n], now, fresh[n])
        return {**fresh, **reused}

    def _remember(self, promql: str, now: float, result: Series) -> None:
        """Cache a budget-window result: expired entries and those over BUDGET_CACHE_SIZE go, oldest first."""
        cache = self._budget_cache
        cache.pop(promql, None)
        cache[promql] = (now, result)
        while cache and (len(cache) > BUDGET_CACHE_SIZE or now - next(iter(cache.values()))[0] >= BUDGET_REFRESH):
            del cache[next(iter(cache))]

    async def _in_thread(
        self, fn: Callable[[str, datetime | None], Series], promql: str, at: datetime | None
    ) -> Series:
        """fn in a Prometheus pool thread; only the call itself is timed (a little over `timeout`,
        which the client and Prometheus enforce themselves)."""
        try:
            return await self._pool.run(fn, promql, at, timeout=self.timeout + 5)
        except TimeoutError as err:
            raise DataProblem("PrometheusUnavailable", f"Prometheus at {self.url} timed out") from err


def _http(url: str, connection: Connection, timeout: float) -> urllib3.PoolManager:
    """Keep-alive connections to `url`, bounded by `timeout`, never retried (a retry would only add
    load to an overloaded Prometheus); through the environment's proxy (HTTP(S)_PROXY, NO_PROXY);
    TLS verified against --prometheus-ca-file, else the system's trust store."""
    options: dict[str, Any] = {
        "maxsize": THREADS,
        "retries": False,
        "timeout": urllib3.Timeout(connect=timeout, read=timeout),
    }
    parts = urlsplit(url)
    if parts.scheme == "https":
        options["ssl_context"] = connection.ssl_context()
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **options)
    return urllib3.PoolManager(**options)


def _parse(data: object) -> Series:
    """custom_query returns the `result` list of a vector, or [ts, value] for a scalar."""
    if isinstance(data, list) and len(data) == 2 and not isinstance(data[0], dict):
        return [({}, float(data[1]))]
    out: list[tuple[dict[str, str], float]] = []
    for item in data if isinstance(data, list) else []:
        out.append((dict(item.get("metric", {})), float(item["value"][1])))
    return out
