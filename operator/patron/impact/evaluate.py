"""One evaluation: plan the queries, run them at `at`, assess. The operator, `patron evaluate` and
`patron replay` all go through here."""

from __future__ import annotations

import asyncio
from datetime import datetime

from patron.api.models import CustomerSLOSpec
from patron.impact.assess import Assessment, assess
from patron.impact.prometheus import Prometheus
from patron.impact.queries import plan_queries


def evaluate(spec: CustomerSLOSpec, prometheus: Prometheus, at: datetime | None = None) -> Assessment:
    plan = plan_queries(spec)
    return assess(spec, plan, prometheus.run(plan, at))


async def evaluate_now(spec: CustomerSLOSpec, prometheus: Prometheus) -> Assessment:
    """The operator's evaluation: now, queries concurrent, budget-window results reused for a while.

    `assess` runs in a worker thread: for thousands of customers it takes long enough to stall
    every other CustomerSLO on the event loop.
    """
    plan = plan_queries(spec)
    results = await prometheus.run_async(plan)
    return await asyncio.to_thread(assess, spec, plan, results)
