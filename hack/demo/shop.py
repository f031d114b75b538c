#!/usr/bin/env python3
"""The demo's simulated shop: a `checkout` HTTP service and the ~50 customers who use it.

One asyncio process holds three parts (see docs/demo.md):

- the service, POST /checkout with header X-Customer-ID. In order, it
  1. enforces the per-customer limits of the envoyproxy/ratelimit config found in the ratelimit
     ConfigMap (every key whose `domain` is the shop's; 429 over the limit; `shadow_mode` entries are
     only counted). Like a ratelimit sidecar, rejected requests cost the service nothing;
  2. has the capacity of its `checkout` Deployment: spec.replicas x --capacity-per-replica req/s
     (the desired count, which Patron's scale action changes; the readiness of pods on kwok nodes
     would add nothing but noise).
     Over capacity, every request is refused with the same probability (503), so a storm from one
     customer hurts everyone;
  3. routes each request to a ReplicaSet of the Deployment in proportion to its replicas; a
     pod template carrying the annotation demo.patron.dev/fault (e.g. {"tier": "enterprise",
     "code": 500}) fails that tier's requests: a bad rollout;
- the customers: Poisson arrivals of orders at each customer's rate; a failed attempt (5xx or 429)
  is retried with bounded exponential backoff; after `patience` 5xx in a row a customer gives up and
  comes back 25-50 s later (nobody gives up over a 429). A customer switched to `storm` sends
  `factor` times its rate and retries without backoff (every failure is just another attempt of its
  tight loop), and never gives up;
- a watcher that reads the Deployment, its ReplicaSets and the ConfigMap from the API server (every
  --poll seconds).

Metrics (GET /metrics, registered with the test bed's Prometheus by a file_sd JSON file):
http_requests_total{service, customer, code}, http_request_duration_seconds{service, customer},
and shop_* gauges of the simulation itself. Control: GET /admin/state, POST /admin/customers/NAME
{"mode": "storm", "factor": 10} or {"mode": "normal"}.

Randomness is seeded (--seed): the customers, their rates and their arrival schedules repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("shop")

SERVICE = "checkout"
FAULT_ANNOTATION = "demo.patron.dev/fault"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Retries of a normal customer: 0.5 s, 1 s, 2 s, ... (x0.5-1.5 jitter), at most BACKOFF_CAP.
MAX_ATTEMPTS = 4
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
COME_BACK_AFTER = (25.0, 50.0)
# The capacity check looks at the arrivals of the last LOAD_WINDOW seconds.
LOAD_WINDOW = 2.0
RECENT_SECONDS = 10

ENTERPRISE = ("acme", "globex", "initech", "umbrella")
STANDARD = (
    "amberly", "bluebird", "brightway", "cedar", "cobalt", "driftwood", "dunmore", "emberly", "evergreen",
    "fernwood", "foxglove", "goldleaf", "granite", "harbor", "hollow", "indigo", "ironside", "jasper",
    "juniper", "kestrel", "keystone", "lakeside", "maple", "northwind", "oakridge", "pinecrest", "quarry",
    "redwood", "silverline", "tidewater", "upland", "valley", "westfield", "yellowstone", "zenith",
)  # fmt: skip
TRIAL = tuple(f"trial-{i:02d}" for i in range(1, 11))
# The storming customer of the demo's storm incident: a standard customer's busy API integration.
BIGBOT = "bigbot"


@dataclass
class Customer:
    name: str
    tier: str
    rate: float  # orders per second
    patience: int  # failed attempts in a row before giving up
    mode: str = "normal"  # normal | storm
    factor: float = 1.0  # storm: attempts per second = factor x rate
    gone_until: float = 0.0  # monotonic time a customer who gave up comes back
    failures: int = 0  # failed attempts in a row
    gave_up: int = 0  # times it gave up

    def gone(self, now: float) -> bool:
        return self.mode == "normal" and now < self.gone_until


def catalogue(seed: int) -> list[Customer]:
    """The demo's customers: 4 enterprise, 36 standard (bigbot among them), 10 trial, and a synthetic
    probe (which CustomerSLOs ignore). Rates vary around each tier's, from the seed. Patience (5xx in a
    row before giving up): enterprise integrations 20, standard 5, trial 3."""
    rng = random.Random(f"catalogue/{seed}")
    out = [Customer(n, "enterprise", round(rng.uniform(2.0, 3.0), 2), 20) for n in ENTERPRISE]
    out += [Customer(n, "standard", round(rng.uniform(0.3, 0.7), 2), 5) for n in STANDARD]
    out.append(Customer(BIGBOT, "standard", 3.0, 5))
    out += [Customer(n, "trial", round(rng.uniform(0.2, 0.3), 2), 3) for n in TRIAL]
    out.append(Customer("synthetic-probe", "synthetic", 0.5, 1_000_000))
    return sorted(out, key=lambda c: c.name)


# ---------------------------------------------------------------- ratelimit config


@dataclass(frozen=True)
class Limit:
    per_unit: int
    unit_seconds: int
    shadow: bool
    source: str  # ConfigMap key


UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_limits(
    data: Mapping[str, str], domain: str, descriptor_key: str
) -> tuple[dict[str | None, Limit], list[str]]:
    """Per-customer limits from every ConfigMap key holding a ratelimit config of `domain`.

    Top-level descriptors with key `descriptor_key` count: with a `value`, for that customer; without
    one, for every customer (each has its own counter). `unlimited: true` removes a limit. Where two
    keys limit the same customer, the lower limit wins. (A real ratelimit service refuses two files of
    one domain unless it runs with MERGE_DOMAIN_CONFIG=true.) Returns (limits, problems)."""
    limits: dict[str | None, Limit] = {}
    problems: list[str] = []
    for key in sorted(data):
        try:
            doc = yaml.safe_load(data[key])
        except yaml.YAMLError as err:
            problems.append(f"{key}: not YAML: {err}")
            continue
        if not isinstance(doc, dict) or doc.get("domain") != domain:
            continue
        for d in doc.get("descriptors") or []:
            if not isinstance(d, dict) or d.get("key") != descriptor_key or d.get("unlimited"):
                continue
            rl = d.get("rate_limit") or {}
            unit = UNITS.get(str(rl.get("unit", "")).lower())
            per_unit = rl.get("requests_per_unit")
            if unit is None or not isinstance(per_unit, int) or per_unit < 0:
                problems.append(f"{key}: bad rate_limit {rl!r} for {d.get('value')!r}")
                continue
            value = d.get("value")
            limit = Limit(per_unit, unit, bool(d.get("shadow_mode")), key)
            old = limits.get(value)
            if old is None or limit.per_unit / limit.unit_seconds < old.per_unit / old.unit_seconds:
                limits[value] = limit
    return limits, problems


class RateLimiter:
    """ratelimit's fixed windows: at most per_unit requests per customer per unit (aligned to the clock)."""

    def __init__(self) -> None:
        self.limits: dict[str | None, Limit] = {}
        self._counts: dict[tuple[str, int], int] = {}

    def set(self, limits: dict[str | None, Limit]) -> None:
        self.limits = limits

    def check(self, customer: str, now: float) -> tuple[str, Limit | None]:
        """('ok' | 'over_limit' | 'shadow_mode', the limit that applied)."""
        limit = self.limits.get(customer) or self.limits.get(None)
        if limit is None:
            return "ok", None
        window = int(now // limit.unit_seconds)
        key = (customer, window)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if len(self._counts) > 10_000:
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window - 1}
        if count <= limit.per_unit:
            return "ok", limit
        return ("shadow_mode" if limit.shadow else "over_limit"), limit


# ---------------------------------------------------------------- the service


@dataclass(frozen=True)
class Version:
    """One ReplicaSet of the Deployment: its share of the traffic and the fault its template injects."""

    name: str
    image: str
    replicas: int
    fault_tier: str | None = None
    fault_code: int = 500


@dataclass
class World:
    """What the watcher last read from the API server."""

    replicas: int = 0  # the Deployment's spec.replicas
    ready: int = 0  # its status.readyReplicas (shown, not used)
    versions: tuple[Version, ...] = ()
    limits: dict[str | None, Limit] = field(default_factory=dict)
    read_at: float = 0.0
    error: str = ""


class Recent:
    """Outcomes per second for the last RECENT_SECONDS seconds, by (customer, outcome)."""

    def __init__(self) -> None:
        self.seconds: deque[tuple[int, Tally[tuple[str, str]]]] = deque()

    def add(self, customer: str, outcome: str, now: float) -> None:
        second = int(now)
        if not self.seconds or self.seconds[-1][0] != second:
            self.seconds.append((second, Tally()))
            while self.seconds and self.seconds[0][0] <= second - RECENT_SECONDS:
                self.seconds.popleft()
        self.seconds[-1][1][(customer, outcome)] += 1

    def totals(self, now: float) -> Tally[tuple[str, str]]:
        out: Tally[tuple[str, str]] = Tally()
        for second, tally in self.seconds:
            if second > int(now) - RECENT_SECONDS:
                out.update(tally)
        return out


class Shop:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.customers = {c.name: c for c in catalogue(args.seed)}
        self.tier_of = {c.name: c.tier for c in self.customers.values()}
        self.world = World(replicas=args.replicas or 0, ready=args.replicas or 0)
        self.limiter = RateLimiter()
        self.rng = random.Random(f"service/{args.seed}")
        self.arrivals: deque[float] = deque()
        self.recent = Recent()
        self.started = time.monotonic()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping = asyncio.Event()
        self.session: ClientSession | None = None
        self.url = ""
        reg = self.registry = CollectorRegistry()
        self.m_requests = Counter(
            "http_requests_total", "Requests to the shop's services.", ["service", "customer", "code"], registry=reg
        )
        self.m_duration = Histogram(
            "http_request_duration_seconds",
            "Request duration.",
            ["service", "customer"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.m_ratelimit = Counter(
            "ratelimit_requests_total",
            "Requests checked against a ratelimit entry, by result (ok, over_limit, shadow_mode).",
            ["domain", "customer", "result"],
            registry=reg,
        )
        self.m_orders = Counter(
            "shop_orders_total", "Customer orders by outcome (ok, failed).", ["customer", "outcome"], registry=reg
        )
        self.m_gave_up = Counter("shop_customer_gave_up_total", "Times a customer gave up.", ["customer"], registry=reg)
        self.m_capacity = Gauge("shop_capacity_requests_per_second", "The service's capacity.", registry=reg)
        self.m_replicas = Gauge("shop_replicas", "The Deployment's spec.replicas.", registry=reg)
        self.m_load = Gauge("shop_load_requests_per_second", "Arrivals after the ratelimit check.", registry=reg)
        self.m_state = Gauge(
            "shop_customer_state", "1 for the customer's current state.", ["customer", "tier", "state"], registry=reg
        )
        self.m_limit = Gauge(
            "shop_ratelimit_requests_per_second", "Limits in force, per customer.", ["customer", "shadow"], registry=reg
        )
        self.shown: dict[str, str] = {}
        for c in self.customers.values():
            self.show_state(c)

    def show_state(self, customer: Customer) -> None:
        """shop_customer_state: 1 for the customer's state (normal, storm, gone), 0 for the others."""
        state = "gone" if customer.gone(time.monotonic()) else customer.mode
        if self.shown.get(customer.name) != state:
            for s in ("normal", "storm", "gone"):
                self.m_state.labels(customer.name, customer.tier, s).set(1 if s == state else 0)
            self.shown[customer.name] = state

    # ------------------------------------------------------------ capacity and routing

    @property
    def capacity(self) -> float:
        return float(self.world.replicas * self.args.capacity_per_replica)

    def load(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] <= now - LOAD_WINDOW:
            self.arrivals.popleft()
        return len(self.arrivals) / LOAD_WINDOW

    def version_for(self) -> Version | None:
        serving = [v for v in self.world.versions if v.replicas > 0]
        total = sum(v.replicas for v in serving)
        if not total:
            return None
        pick = self.rng.uniform(0, total)
        for v in serving:
            pick -= v.replicas
            if pick <= 0:
                return v
        return serving[-1]

    async def serve(self, customer: str) -> int:
        """One request: ratelimit, capacity, the version it lands on. Returns the HTTP status."""
        now = time.monotonic()
        result, limit = self.limiter.check(customer, time.time())
        if limit is not None:
            self.m_ratelimit.labels(self.args.domain, customer, result).inc()
        if result == "over_limit":
            await asyncio.sleep(0.002)
            return 429
        self.arrivals.append(now)
        load = self.load(now)
        capacity = self.capacity
        if load > capacity and self.rng.random() >= capacity / load:
            await asyncio.sleep(0.005)
            return 503
        version = self.version_for()
        if version is not None and version.fault_tier and self.tier_of.get(customer) == version.fault_tier:
            await asyncio.sleep(0.01)
            return version.fault_code
        utilisation = min(load / capacity, 1.0) if capacity else 1.0
        await asyncio.sleep(self.rng.uniform(0.015, 0.035) * (1 + 6 * utilisation**4))
        return 200

    async def handle_checkout(self, request: web.Request) -> web.Response:
        customer = request.headers.get("X-Customer-ID", "")
        if not customer:
            return web.json_response({"error": "X-Customer-ID header missing"}, status=400)
        started = time.monotonic()
        code = await self.serve(customer)
        self.m_requests.labels(SERVICE, customer, str(code)).inc()
        self.m_duration.labels(SERVICE, customer).observe(time.monotonic() - started)
        self.recent.add(customer, "ok" if code < 400 else str(code), started)
        return web.json_response({"code": code}, status=code)

    async def handle_metrics(self, _: web.Request) -> web.Response:
        now = time.monotonic()
        self.m_capacity.set(self.capacity)
        self.m_replicas.set(self.world.replicas)
        self.m_load.set(self.load(now))
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------ control

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        totals = self.recent.totals(now)
        storming = {c.name for c in self.customers.values() if c.mode == "storm"}

        def summary(names: Iterable[str]) -> dict[str, Any]:
            wanted = set(names)
            counts: Tally[str] = Tally()
            for (customer, outcome), n in totals.items():
                if customer in wanted:
                    counts[outcome] += n
            requests = sum(counts.values())
            errors = sum(n for o, n in counts.items() if o.startswith("5"))
            return {
                "rps": round(requests / RECENT_SECONDS, 2),
                "errorRatio": round(errors / requests, 4) if requests else 0.0,
                "throttled": round(counts["429"] / RECENT_SECONDS, 2),
                "codes": dict(counts),
            }

        tiers = sorted({c.tier for c in self.customers.values()})
        return {
            "uptime": round(now - self.started, 1),
            "replicas": self.world.replicas,
            "readyReplicas": self.world.ready,
            "capacity": self.capacity,
            "load": round(self.load(now), 1),
            "versions": [v.__dict__ for v in self.world.versions],
            "limits": {
                (k or "*"): {"requestsPerUnit": v.per_unit, "unitSeconds": v.unit_seconds, "shadow": v.shadow}
                for k, v in self.world.limits.items()
            },
            "worldError": self.world.error,
            "worldAge": round(now - self.world.read_at, 1) if self.world.read_at else None,
            "all": summary(self.customers),
            "others": summary(set(self.customers) - storming),
            "tiers": {t: summary(c.name for c in self.customers.values() if c.tier == t) for t in tiers},
            "customers": {
                c.name: {
                    "tier": c.tier,
                    "rate": c.rate,
                    "mode": c.mode,
                    "factor": c.factor,
                    "gone": c.gone(now),
                    "gaveUp": c.gave_up,
                }
                for c in self.customers.values()
            },
        }

    async def handle_state(self, _: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def handle_customer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        customer = self.customers.get(name)
        if customer is None:
            return web.json_response({"error": f"no customer {name}"}, status=404)
        body = await request.json()
        mode = body.get("mode")
        if mode not in ("normal", "storm"):
            return web.json_response({"error": "mode must be normal or storm"}, status=400)
        factor = float(body.get("factor", 10))
        if mode == "storm" and not 1 < factor <= 100:
            return web.json_response({"error": "factor must be in (1, 100]"}, status=400)
        customer.mode, customer.factor = mode, (factor if mode == "storm" else 1.0)
        customer.gone_until, customer.failures = 0.0, 0
        self.show_state(customer)
        log.info("customer %s: %s%s", name, mode, f" x{factor:g}" if mode == "storm" else "")
        return web.json_response({"customer": name, "mode": customer.mode, "factor": customer.factor})

    # ------------------------------------------------------------ customers

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def attempt(self, customer: Customer) -> int:
        assert self.session is not None
        try:
            async with self.session.post(
                self.url + "/checkout", headers={"X-Customer-ID": customer.name}, data=b"{}"
            ) as response:
                await response.read()
                return response.status
        except (ClientError, TimeoutError):
            return 599

    def record(self, customer: Customer, code: int) -> None:
        """Count a failed attempt (5xx) towards giving up; a success resets the count. A 429 is neither:
        being told to slow down is not the shop being broken."""
        if code < 400:
            customer.failures = 0
            return
        if code < 500:
            return
        customer.failures += 1
        if customer.mode == "normal" and customer.failures >= customer.patience:
            rng = random.Random(f"gone/{self.args.seed}/{customer.name}/{customer.gave_up}")
            customer.gone_until = time.monotonic() + rng.uniform(*COME_BACK_AFTER)
            customer.failures = 0
            customer.gave_up += 1
            self.m_gave_up.labels(customer.name).inc()
            self.show_state(customer)
            log.info("customer %s gave up after %d failed attempts", customer.name, customer.patience)

    async def order(self, customer: Customer, rng: random.Random) -> None:
        """A normal customer's order: retried with bounded exponential backoff on 429 and 5xx."""
        for attempt in range(MAX_ATTEMPTS):
            code = await self.attempt(customer)
            self.record(customer, code)
            if code < 400:
                self.m_orders.labels(customer.name, "ok").inc()
                return
            if (code != 429 and code < 500) or customer.gone(time.monotonic()) or attempt == MAX_ATTEMPTS - 1:
                break
            await asyncio.sleep(min(BACKOFF_BASE * 2**attempt, BACKOFF_CAP) * rng.uniform(0.5, 1.5))
        self.m_orders.labels(customer.name, "failed").inc()

    async def storm_attempt(self, customer: Customer) -> None:
        self.record(customer, await self.attempt(customer))

    async def customer_loop(self, customer: Customer) -> None:
        rng = random.Random(f"arrivals/{self.args.seed}/{customer.name}")
        was_gone = False
        while not self.stopping.is_set():
            storming = customer.mode == "storm"
            rate = customer.rate * (customer.factor if storming else 1.0) * self.args.load_factor
            await asyncio.sleep(rng.expovariate(rate))
            now = time.monotonic()
            gone = customer.gone(now)
            if was_gone and not gone:
                self.show_state(customer)
                log.info("customer %s came back", customer.name)
            was_gone = gone
            if gone:
                continue
            self.spawn(self.storm_attempt(customer) if storming else self.order(customer, rng))

    # ------------------------------------------------------------ the API server

    async def watch(self) -> None:
        if self.args.replicas is not None:
            return  # fixed capacity, no cluster (development)
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=self.args.kubeconfig)
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        ns, name = self.args.namespace, self.args.deployment

        def read() -> World:
            world = World(read_at=time.monotonic())
            try:
                dep = apps.read_namespaced_deployment(name, ns)
            except client.ApiException as err:
                world.error = f"Deployment {ns}/{name}: HTTP {err.status} {err.reason}"
            else:
                world.replicas = dep.spec.replicas or 0
                world.ready = dep.status.ready_replicas or 0
                selector = ",".join(f"{k}={v}" for k, v in sorted((dep.spec.selector.match_labels or {}).items()))
                versions = []
                for rs in apps.list_namespaced_replica_set(ns, label_selector=selector).items:
                    owners = rs.metadata.owner_references or []
                    if not any(o.uid == dep.metadata.uid for o in owners):
                        continue
                    annotations = rs.spec.template.metadata.annotations or {}
                    fault = _fault(annotations.get(FAULT_ANNOTATION))
                    image = rs.spec.template.spec.containers[0].image if rs.spec.template.spec.containers else ""
                    versions.append(
                        Version(
                            rs.metadata.name,
                            image,
                            rs.spec.replicas or 0,
                            fault.get("tier"),
                            int(fault.get("code", 500)),
                        )
                    )
                world.versions = tuple(sorted(versions, key=lambda v: v.name))
            try:
                cm = core.read_namespaced_config_map(self.args.config_map, ns)
            except client.ApiException as err:
                if err.status != 404:
                    world.error += f" ConfigMap {ns}/{self.args.config_map}: HTTP {err.status} {err.reason}"
            else:
                world.limits, problems = parse_limits(cm.data or {}, self.args.domain, self.args.descriptor_key)
                for problem in problems:
                    log.warning("ratelimit config: %s", problem)
            return world

        last_limits: dict[str | None, Limit] = {}
        while not self.stopping.is_set():
            try:
                world = await asyncio.to_thread(read)
            except Exception as err:  # keep the last world; the shop keeps serving as it was
                log.warning("reading the API server failed: %s", err)
            else:
                if world.error:
                    log.warning("%s", world.error.strip())
                if world.replicas != self.world.replicas:
                    log.info("replicas %d -> %d", self.world.replicas, world.replicas)
                if world.limits != last_limits:
                    log.info("ratelimit limits now %s", {k or "*": v.per_unit for k, v in world.limits.items()})
                    self.m_limit.clear()
                    for k, v in world.limits.items():
                        self.m_limit.labels(k or "*", str(v.shadow).lower()).set(v.per_unit / v.unit_seconds)
                    last_limits = world.limits
                self.world = world
                self.limiter.set(world.limits)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.args.poll)

    # ------------------------------------------------------------ lifecycle

    def targets_file(self) -> Path | None:
        if not self.args.targets_dir:
            return None
        return Path(self.args.targets_dir) / f"shop-{self.args.namespace}.json"

    async def run(self) -> None:
        app = web.Application()
        app.router.add_post("/checkout", self.handle_checkout)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/admin/state", self.handle_state)
        app.router.add_post("/admin/customers/{name}", self.handle_customer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.args.port)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        targets = self.targets_file()
        if targets is not None:
            labels = {"job": "shop", "namespace": self.args.namespace}
            tmp = targets.with_suffix(".tmp")
            tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": labels}]))
            tmp.rename(targets)  # file_sd reads whole files only
        log.info("shop on %s (namespace %s, seed %d)", self.url, self.args.namespace, self.args.seed)
        watcher = asyncio.ensure_future(self.watch())
        try:
            if self.args.replicas is None:
                await self._first_world()
            if self.args.ready_file:
                Path(self.args.ready_file).write_text(self.url + "\n")
            self.session = ClientSession(
                connector=TCPConnector(limit=256), timeout=ClientTimeout(total=self.args.request_timeout)
            )
            loops = [asyncio.ensure_future(self.customer_loop(c)) for c in self.customers.values()]
            await self.stopping.wait()
            for task in [*loops, *self.tasks]:
                task.cancel()
            await asyncio.gather(*loops, *self.tasks, return_exceptions=True)
        finally:
            self.stopping.set()
            await asyncio.gather(watcher, return_exceptions=True)
            if targets is not None:
                targets.unlink(missing_ok=True)
            if self.session is not None:
                await self.session.close()
            await runner.cleanup()
            log.info("shop stopped")

    async def _first_world(self) -> None:
        """Customers start once the Deployment was read (or after 10 s, whatever it says)."""
        deadline = time.monotonic() + 10
        while not self.world.read_at and time.monotonic() < deadline:
            await asyncio.sleep(0.1)


def _fault(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("annotation %s is not JSON: %r", FAULT_ANNOTATION, text)
        return {}
    return value if isinstance(value, dict) else {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--namespace", default="shop", help="namespace of the Deployment and ConfigMap")
    p.add_argument("--deployment", default="checkout")
    p.add_argument("--config-map", default="ratelimit-config")
    p.add_argument("--domain", default="checkout", help="ratelimit domain the shop enforces")
    p.add_argument("--descriptor-key", default="customer_id")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--replicas", type=int, help="fixed replicas; no cluster (development only)")
    p.add_argument("--capacity-per-replica", type=float, default=15.0, help="req/s one replica serves")
    p.add_argument("--load-factor", type=float, default=1.0, help="multiplies every customer's rate")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between reads of the API server")
    p.add_argument("--port", type=int, default=0, help="0: any free port")
    p.add_argument("--targets-dir", default=os.environ.get("PROMETHEUS_TARGETS_DIR"), help="Prometheus file_sd dir")
    p.add_argument("--ready-file", help="write the shop's URL here once it serves")
    p.add_argument("--request-timeout", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main() -> None:
    args = build_parser().parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if args.replicas is None and not args.kubeconfig:
        raise SystemExit("error: --kubeconfig (or KUBECONFIG) is required unless --replicas is given")
    if not math.isfinite(args.capacity_per_replica) or args.capacity_per_replica <= 0:
        raise SystemExit("error: --capacity-per-replica must be > 0")
    asyncio.run(Shop(args).run())


if __name__ == "__main__":
    main()
