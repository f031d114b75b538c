"""One evaluation: plan the queries, run them at `at`, assess. The operator, `patron evaluate` and
`patron replay` all go through here."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from patron.api.models import CustomerSLOSpec
from patron.impact.assess import Assessment, assess
from patron.impact.prometheus import Prometheus
from patron.impact.queries import QueryPlan, plan_queries
from patron.impact.rules import candidates_query, coverage_query, covered_reads, with_recorded


def evaluate(
    spec: CustomerSLOSpec, prometheus: Prometheus, at: datetime | None = None, slo: str | None = None
) -> Assessment:
    """`slo` ("<ns>/<name>"): with spec.recordingRules.enabled, read its recorded series where they cover."""
    plan = plan_queries(spec)
    if slo is not None and spec.recording_rules.enabled:
        coverage = prometheus.query(coverage_query(spec, slo, plan), at)
        plan = with_recorded(spec, slo, covered_reads(coverage), prometheus.query(candidates_query(spec, slo), at))
    return assess(spec, plan, prometheus.run(plan, at))


async def evaluate_now(
    spec: CustomerSLOSpec, prometheus: Prometheus, slo: str | None = None, at: datetime | None = None
) -> Assessment:
    """The operator's evaluation: every query at one instant, now (`at` only for benchmarks of
    backfilled data), queries concurrent, budget-window results reused for a while.

    With recording rules, the coverage and candidates queries go first, together (the candidates are
    used only if the coverage query says their windows are covered), then the plan they decide.

    `assess` runs in a worker thread: for thousands of customers it takes long enough to stall
    every other CustomerSLO on the event loop.
    """
    at = at or datetime.now(UTC)  # one instant for every query, so the evaluation agrees with itself
    plan: QueryPlan = plan_queries(spec)
    if slo is not None and spec.recording_rules.enabled:
        coverage, candidates = await asyncio.gather(
            prometheus.query_async(coverage_query(spec, slo, plan), at),
            prometheus.query_async(candidates_query(spec, slo), at),
        )
        plan = with_recorded(spec, slo, covered_reads(coverage), candidates)
    results = await prometheus.run_async(plan, at)
    return await asyncio.to_thread(assess, spec, plan, results)
