"""Kopf handlers: thin. Every trigger runs the same idempotent `reconcile`."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from patron import metrics
from patron.actions import ActionContext, AlertmanagerClient, abandoned, act, release
from patron.actions.plan import parse_records
from patron.api.durations import parse_duration
from patron.api.models import API_GROUP, API_VERSION, PLURAL, CustomerSLOSpec
from patron.config import OperatorConfig
from patron.impact.assess import Assessment, DataProblem
from patron.impact.evaluate import evaluate_now
from patron.impact.prometheus import Prometheus
from patron.kube import K8s, StatusWriter, api_client
from patron.reconcile import Event, Outcome, evaluated, failed, material, parse_spec
from patron.status import parse_timestamp
from patron.text import printable

Logger = logging.Logger | logging.LoggerAdapter[Any]
RESOURCE = (API_GROUP, API_VERSION, PLURAL)
# A status whose only change is lastEvaluationTime is still written this often, as a heartbeat.
HEARTBEAT_SECONDS = 60.0
# How often each CustomerSLO checks whether its spec.interval has passed (the finest interval).
TICK_SECONDS = 2.0
# While a deleted CustomerSLO still holds changes, giving them back is retried this often.
RELEASE_RETRY_SECONDS = 10.0


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """All Kopf settings in one place."""
    # Patron's own prefix for everything Kopf stores on objects, so it never collides with another
    # Kopf operator's annotations and `kubectl get -o yaml` shows whose they are.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Only Patron's own Events (ImpactStarted, ActionApplied, ...) and Kopf's warnings reach the
    # objects; Kopf's "Handler succeeded" INFO events would bury them.
    settings.posting.level = logging.WARNING
    # Bounded API calls: a hung connection must not stall a CustomerSLO's evaluations.
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    config: OperatorConfig = memo.config
    # Plain namespace names need no namespace listing (and no RBAC on namespaces): without this,
    # Kopf retries listing them for about a minute before falling back to exactly those names.
    if config.namespaces and not any(set("*?!,") & set(ns) for ns in config.namespaces):
        settings.scanning.disabled = True
    memo.prometheus = Prometheus(config.prometheus_url, config.prometheus_timeout, config.prometheus_connection)
    memo.kube = K8s(api_client())
    memo.alerts = (
        AlertmanagerClient(config.alertmanager_urls, connection=config.alertmanager_connection)
        if config.alertmanager_urls
        else None
    )
    if memo.alerts is not None:
        memo.alerts.start()


@kopf.on.cleanup()
async def stop_alerts(memo: kopf.Memo, **_: Any) -> None:
    """Deliver the alerts still queued (for a few seconds at most), then stop the senders."""
    if memo.get("alerts") is not None:
        await memo.alerts.close()


@kopf.on.delete(*RESOURCE)
async def on_delete(name: str, namespace: str | None, memo: Any, logger: Logger, **_: Any) -> None:
    """Give back what Patron holds for this CustomerSLO before it goes (patron.actions.release).
    The finalizer stays (a TemporaryError retries) until nothing is held, or until RELEASE_GIVE_UP
    after the deletionTimestamp: then a ReleaseAbandoned Warning names what was left behind."""
    async with _lock(memo):
        metrics.forget(namespace or "", name)
        k8s: K8s = memo.kube
        obj = await k8s.get("CustomerSLO", namespace or "", name)
        if obj is None:
            return
        context = _context(obj, memo, logger, datetime.now(UTC))
        try:
            released = await release(context)
        except Exception as err:  # e.g. the status write failed: nothing known to be given back
            logger.warning("giving back failed: %s", err)
            left = tuple(r for r in parse_records(context.writer.current.get("actions") or []) if r.held)
            done, left_events = False, tuple[Event, ...]()
        else:
            done, left, left_events = released.done, released.left, released.events
        for event in left_events:
            _post(obj, event)
        if done:
            return
        give_up = abandoned(context, left)
        if give_up is not None:
            _post(obj, give_up)
            return
        raise kopf.TemporaryError(f"{len(left)} held change(s) not given back yet", delay=RELEASE_RETRY_SECONDS)


def _context(obj: dict[str, Any], memo: Any, logger: Logger, now: datetime) -> ActionContext:
    meta = obj["metadata"]
    k8s: K8s = memo.kube
    writer = StatusWriter(k8s, meta["namespace"], meta["name"], obj.get("status") or {})
    return ActionContext(obj, k8s, writer, memo.config, memo.get("alerts"), now, logger)


def _post(obj: dict[str, Any], event: Event) -> None:
    """Post one Event on the CustomerSLO; customer names in its message are data: escaped."""
    kopf.event(cast(kopf.Body, obj), type=event.type, reason=event.reason, message=printable(event.message)[:1024])


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.resume(*RESOURCE)
async def on_change(name: str, namespace: str | None, memo: Any, logger: Logger, **_: Any) -> None:
    await reconcile(namespace or "", name, memo, logger)


@kopf.timer(*RESOURCE, interval=TICK_SECONDS)
async def on_tick(name: str, namespace: str | None, spec: kopf.Spec, memo: Any, logger: Logger, **_: Any) -> None:
    """Kopf timers have one fixed interval; this one re-evaluates when spec.interval has passed."""
    last = memo.get("last_evaluation", 0.0)
    try:
        interval = parse_duration(str(spec.get("interval", "30s")))
    except ValueError:
        interval = 30
    if time.monotonic() - last >= interval:
        await reconcile(namespace or "", name, memo, logger)


def _lock(memo: Any) -> asyncio.Lock:
    if "lock" not in memo:
        memo.lock = asyncio.Lock()
    lock: asyncio.Lock = memo.lock
    return lock


async def reconcile(namespace: str, name: str, memo: Any, logger: Logger) -> None:
    """Read the object afresh, evaluate, write status if it changed, post Events. Idempotent."""
    async with _lock(memo):
        memo.last_evaluation = time.monotonic()
        k8s: K8s = memo.kube
        obj = await k8s.get("CustomerSLO", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        previous: dict[str, Any] = dict(obj.get("status") or {})
        generation = obj["metadata"].get("generation")
        now = datetime.now(UTC)
        started = time.monotonic()
        outcome: Outcome
        spec: CustomerSLOSpec | None = None
        assessment: Assessment | None = None
        try:
            spec = parse_spec(obj.get("spec") or {}, memo.config.namespace_label, namespace)
            assessment = await evaluate_now(spec, memo.prometheus, f"{namespace}/{name}")
            outcome = evaluated(spec, previous, assessment, generation, now)
            metrics.IMPACTED.labels(namespace, name).set(len(assessment.impacted))
            metrics.EVALUATIONS.labels(outcome="Evaluated").inc()
        except DataProblem as problem:
            logger.warning("evaluation failed: %s: %s", problem.reason, problem.message)
            outcome = failed(previous, problem, generation, now)
            metrics.EVALUATIONS.labels(outcome=problem.reason).inc()
        finally:
            metrics.EVALUATION_SECONDS.observe(time.monotonic() - started)
            metrics.LAST_EVALUATION.labels(namespace, name).set_to_current_time()
        context = _context(obj, memo, logger, now)
        outcome = await act(context, spec, assessment, outcome)
        metrics.observe(namespace, name, outcome.status, time.monotonic() - started, spec)
        if _worth_writing(context.writer.current, outcome.status, now):
            await context.writer.write(outcome.status)
        for event in outcome.events:
            _post(obj, event)


def _worth_writing(previous: dict[str, Any], status: dict[str, Any], now: datetime) -> bool:
    """Write when something material changed, or as a heartbeat of lastEvaluationTime."""
    if material(previous) != material(status):
        return True
    last = previous.get("lastEvaluationTime")
    return last is None or (now - parse_timestamp(last)).total_seconds() >= HEARTBEAT_SECONDS
