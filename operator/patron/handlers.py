"""Kopf handlers: thin. They enlist CustomerSLOs in one scheduler (patron.schedule), which runs the
same idempotent `reconcile` for each when it is due, at most --max-concurrent-evaluations at once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from patron import metrics, rulesync
from patron.actions import ActionContext, AlertmanagerClient, abandoned, act, release
from patron.actions.plan import parse_records
from patron.api.durations import parse_duration
from patron.api.models import API_GROUP, API_VERSION, PLURAL, CustomerSLOSpec
from patron.config import OperatorConfig
from patron.impact.assess import Assessment, DataProblem
from patron.impact.evaluate import evaluate_now
from patron.impact.prometheus import Prometheus
from patron.kube import K8s, Served, StatusWriter, api_client
from patron.reconcile import (
    Event,
    Outcome,
    Written,
    evaluated,
    failed,
    freshest,
    lag_threshold,
    lagging,
    material,
    parse_spec,
)
from patron.schedule import Schedule, Scheduler
from patron.status import parse_timestamp
from patron.text import printable

Logger = logging.Logger | logging.LoggerAdapter[Any]
RESOURCE = (API_GROUP, API_VERSION, PLURAL)
# A status whose only change is lastEvaluationTime is still written this often, as a heartbeat;
# in a large fleet less often, so that heartbeats add up to at most HEARTBEATS_PER_SECOND writes.
HEARTBEAT_SECONDS = 60.0
HEARTBEATS_PER_SECOND = 1.0
# A resumed CustomerSLO (operator start, peering takeover) is first due within this many seconds
# (at most its interval), spread uniformly: a restart does not evaluate the whole fleet at once.
RESUME_SPREAD = 10.0
# While a deleted CustomerSLO still holds changes, giving them back is retried this often.
RELEASE_RETRY_SECONDS = 10.0
# Kopf's per-object workers (watch events being handled) and Event posters running at once. Unbounded,
# a start with 1,000 new CustomerSLOs opened 123 TLS connections to the API server at once, and their
# memory was not given back (peak RSS 368 MiB; 224 MiB bounded: docs/benchmarks.md, Fleet).
KOPF_WORKERS = 20
KOPF_EVENT_POSTERS = 5


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
    settings.queueing.worker_limit = KOPF_WORKERS
    settings.posting.worker_limit = KOPF_EVENT_POSTERS
    config: OperatorConfig = memo.config
    # Plain namespace names need no namespace listing (and no RBAC on namespaces): without this,
    # Kopf retries listing them for about a minute before falling back to exactly those names.
    if config.namespaces and not any(set("*?!,") & set(ns) for ns in config.namespaces):
        settings.scanning.disabled = True
    memo.kopf_settings = settings
    memo.fleet = Fleet(config.max_concurrent_evaluations)
    memo.prometheus = Prometheus(config.prometheus_url, config.prometheus_timeout, config.prometheus_connection)
    memo.kube = K8s(api_client())
    memo.rules_served = Served(memo.kube, "PrometheusRule")  # asked only with --manage-prometheus-rules
    memo.alerts = (
        AlertmanagerClient(config.alertmanager_urls, connection=config.alertmanager_connection)
        if config.alertmanager_urls
        else None
    )
    if memo.alerts is not None:
        memo.alerts.start()


@kopf.on.cleanup()
async def stop_alerts(memo: kopf.Memo, **_: Any) -> None:
    """Stop the scheduler; deliver the alerts still queued (for a few seconds at most), then stop the senders."""
    if memo.get("fleet") is not None:
        memo.fleet.stop()
    if memo.get("alerts") is not None:
        await memo.alerts.close()


@kopf.on.delete(*RESOURCE)
async def on_delete(name: str, namespace: str | None, memo: Any, logger: Logger, **_: Any) -> None:
    """Give back what Patron holds for this CustomerSLO before it goes (patron.actions.release).
    The finalizer stays (a TemporaryError retries) until nothing is held, or until RELEASE_GIVE_UP
    after the deletionTimestamp: then a ReleaseAbandoned Warning names what was left behind."""
    memo.fleet.dismiss((namespace or "", name))
    async with _lock(memo):  # an evaluation still running finishes first
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


Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Member:
    memo: Any  # the CustomerSLO's own Kopf memo: it holds the object's lock
    logger: Logger
    body: Any  # Kopf's live view of the object (kopf.Body): every watch event updates it


class Fleet:
    """The CustomerSLOs this operator evaluates, and the one scheduler that runs them.

    An evaluation starts from the object as watched (no GET): Kopf's live body, or the object its
    last status write returned while the watch has not delivered that write yet (`written`)."""

    def __init__(self, limit: int) -> None:
        self.members: dict[Key, Member] = {}
        self.written: dict[Key, Written] = {}
        self.scheduler: Scheduler[Key] = Scheduler(Schedule(limit), self._evaluate)
        self.task: asyncio.Task[None] | None = None

    def enlist(self, key: Key, interval: float, member: Member, spread: float) -> None:
        """Scheduled (again) within `spread` seconds from now; an earlier due time stays."""
        if self.task is None:
            self.task = asyncio.create_task(self.scheduler.run(), name="patron scheduler")
        self.members[key] = member
        self.scheduler.put(key, interval, spread)
        metrics.SCHEDULED.set(len(self.members))

    def dismiss(self, key: Key) -> None:
        self.members.pop(key, None)
        self.written.pop(key, None)
        self.scheduler.remove(key)
        metrics.SCHEDULED.set(len(self.members))

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _evaluate(self, key: Key, lag: float) -> None:
        member = self.members.get(key)
        if member is None:
            return
        metrics.EVALUATION_LAG.observe(lag)
        await reconcile(key[0], key[1], member.memo, member.logger, lag, member.body)

    async def current(self, k8s: K8s, key: Key, body: Any) -> dict[str, Any] | None:
        """A private copy of the object as the server last had it (read afresh when that is unknown)."""
        known = freshest(body, self.written.get(key))
        if known is body or known is None:  # the watch delivered our write, or it cannot be told
            self.written.pop(key, None)
        if known is None:
            return await k8s.get("CustomerSLO", *key)
        return snapshot(known)

    def wrote(self, key: Key, seen: str, writer: StatusWriter) -> None:
        """After an evaluation that started with the body at resourceVersion `seen`: remember what
        its last write returned, if it wrote (without managedFields: never read)."""
        if writer.written is not None and key in self.members:
            writer.written.get("metadata", {}).pop("managedFields", None)
            self.written[key] = Written(seen, writer.written)


def snapshot(obj: Any) -> dict[str, Any]:
    """A deep copy of a watched object without metadata.managedFields (never read; the bulk)."""
    meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    return cast(dict[str, Any], json.loads(json.dumps({**obj, "metadata": meta})))


def _interval(spec: kopf.Spec) -> float:
    try:
        return float(parse_duration(str(spec.get("interval", "30s"))))
    except ValueError:
        return 30.0


def _enlist(name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body, memo: Any, spread: float) -> None:
    # Scheduled evaluations log without posting Events: Events are the outcome's, on transitions only.
    logger = kopf.LocalObjectLogger(body=body, settings=memo.kopf_settings)
    memo.fleet.enlist((namespace or "", name), _interval(spec), Member(memo, logger, body), spread)


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def on_change(name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A new or changed CustomerSLO is due at once."""
    _enlist(name, namespace, spec, body, memo, 0.0)


@kopf.on.resume(*RESOURCE)
async def on_resume(name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body, memo: Any, **_: Any) -> None:
    _enlist(name, namespace, spec, body, memo, min(_interval(spec), RESUME_SPREAD))


@kopf.daemon(*RESOURCE, cancellation_timeout=5.0)
async def scheduled(
    name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body, memo: Any, stopped: Any, **_: Any
) -> None:
    """A CustomerSLO is scheduled while this daemon runs. Kopf stops daemons when an object is being
    deleted and while a peer of higher priority works (peering pause), and starts them again after
    the pause: so a standby replica evaluates nothing."""
    _enlist(name, namespace, spec, body, memo, min(_interval(spec), RESUME_SPREAD))
    try:
        await stopped.wait()
    finally:
        memo.fleet.dismiss((namespace or "", name))


def _lock(memo: Any) -> asyncio.Lock:
    if "lock" not in memo:
        memo.lock = asyncio.Lock()
    lock: asyncio.Lock = memo.lock
    return lock


async def reconcile(namespace: str, name: str, memo: Any, logger: Logger, lag: float = 0.0, body: Any = None) -> None:
    """Evaluate the object as last known (Kopf's live `body`; read afresh without one), write
    status if it changed, post Events. Idempotent.

    `lag`: how late this evaluation started (seconds past due); past lag_threshold it is Lagging.
    """
    async with _lock(memo):
        k8s: K8s = memo.kube
        fleet: Fleet = memo.fleet
        key = (namespace, name)
        seen = None if body is None else str(body["metadata"].get("resourceVersion"))
        obj = await (k8s.get("CustomerSLO", namespace, name) if body is None else fleet.current(k8s, key, body))
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
            outcome = lagging(outcome, lag, lag_threshold(parse_duration(spec.interval)), generation, now, previous)
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
        try:
            outcome = await act(context, spec, assessment, outcome)
            if spec is not None:
                status = await rulesync.sync(
                    k8s, memo.rules_served, memo.config, obj, spec, outcome.status, now, logger
                )
                outcome = Outcome(status, outcome.events)
            metrics.observe(namespace, name, outcome.status, time.monotonic() - started, spec)
            heartbeat = heartbeat_seconds(len(fleet.members))
            if _worth_writing(context.writer.current, outcome.status, now, heartbeat):
                await context.writer.write(outcome.status)
        finally:  # also after a write-ahead of a failed action
            if seen is not None:
                fleet.wrote(key, seen, context.writer)
        for event in outcome.events:
            _post(obj, event)


def heartbeat_seconds(objects: int) -> float:
    """max(HEARTBEAT_SECONDS, objects / HEARTBEATS_PER_SECOND): 60 s up to 60 CustomerSLOs, 1,000 s for 1,000."""
    return max(HEARTBEAT_SECONDS, objects / HEARTBEATS_PER_SECOND)


def _worth_writing(previous: dict[str, Any], status: dict[str, Any], now: datetime, heartbeat: float) -> bool:
    """Write when something material changed, or as a heartbeat of lastEvaluationTime."""
    if material(previous) != material(status):
        return True
    last = previous.get("lastEvaluationTime")
    return last is None or (now - parse_timestamp(last)).total_seconds() >= heartbeat
