#!/usr/bin/env python3
"""The demo's simulated shop: a `checkout` HTTP service and the ~50 customers who use it.

One asyncio process holds three parts (see docs/demo.md):

- the service, POST /checkout with header X-Customer-ID. In order, it
  1. asks the envoyproxy/ratelimit service (--ratelimit-url, its HTTP /json API) with the descriptor
     Envoy sends for the header (domain --domain, one entry `customer_id` = the header's value) and
     answers 429 when told OVER_LIMIT, as Envoy's ratelimit filter does. The service enforces the
     ratelimit ConfigMap (Patron's key and everyone else's), mounted the kubelet's way. Like
     Envoy's filter it fails open: an unreachable service limits nobody. Rejected requests cost the
     service nothing;
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
- a watcher that reads the Deployment and its ReplicaSets from the API server, and the limits the
  ratelimit service has loaded from its /rlconfig (every --poll seconds).

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
import re
import signal
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
UNIT_SECONDS = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}

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


# ---------------------------------------------------------------- the ratelimit service


@dataclass(frozen=True)
class Limit:
    per_unit: int
    unit: str  # SECOND, MINUTE, ...
    shadow: bool


# One line of /rlconfig: `<domain>.<key>[_<value>]: unit=SECOND requests_per_unit=3, shadow_mode: true, ...`
RLCONFIG_LINE = re.compile(
    r"^(?P<key>.+?): unit=(?P<unit>\w+) requests_per_unit=(?P<n>\d+), shadow_mode: (?P<shadow>\w+)"
)


def parse_rlconfig(text: str, domain: str, descriptor_key: str) -> dict[str | None, Limit]:
    """The top-level limits on `descriptor_key` in `domain` that the service has loaded, per value
    (None: the key without a value, one counter per customer)."""
    prefix = f"{domain}.{descriptor_key}"
    limits: dict[str | None, Limit] = {}
    for line in text.splitlines():
        m = RLCONFIG_LINE.match(line)
        if m is None:
            continue
        key = m["key"]
        value: str | None
        if key == prefix:
            value = None
        elif key.startswith(prefix + "_"):
            value = key[len(prefix) + 1 :]
        else:
            continue
        limits[value] = Limit(int(m["n"]), m["unit"], m["shadow"] == "true")
    return limits


class RateLimitClient:
    """envoyproxy/ratelimit's HTTP API: POST /json (the gRPC ShouldRateLimit request as JSON; HTTP 429
    when OVER_LIMIT) and the debug port's GET /rlconfig."""

    def __init__(self, url: str, debug_url: str, domain: str, descriptor_key: str) -> None:
        self.url, self.debug_url = url.rstrip("/"), debug_url.rstrip("/")
        self.domain, self.descriptor_key = domain, descriptor_key
        self.session: ClientSession | None = None

    async def start(self) -> None:
        self.session = ClientSession(connector=TCPConnector(limit=64), timeout=ClientTimeout(total=1.0))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def check(self, customer: str) -> str:
        """'ok' or 'over_limit' when a limit applied, 'none' when none did, 'error' (allowed) when the
        service did not answer."""
        assert self.session is not None
        body = {"domain": self.domain, "descriptors": [{"entries": [{"key": self.descriptor_key, "value": customer}]}]}
        try:
            async with self.session.post(self.url + "/json", json=body) as response:
                answer = await response.json(content_type=None)
        except (ClientError, TimeoutError, ValueError):
            return "error"
        if not isinstance(answer, dict):
            return "error"
        if answer.get("overallCode") == "OVER_LIMIT":
            return "over_limit"
        statuses = answer.get("statuses") or [{}]
        return "ok" if statuses[0].get("currentLimit") else "none"

    async def limits(self) -> dict[str | None, Limit]:
        assert self.session is not None
        async with self.session.get(self.debug_url + "/rlconfig") as response:
            response.raise_for_status()
            return parse_rlconfig(await response.text(), self.domain, self.descriptor_key)


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
        self.ratelimit = (
            RateLimitClient(args.ratelimit_url, args.ratelimit_debug_url, args.domain, args.descriptor_key)
            if args.ratelimit_url
            else None
        )
        self.limits: dict[str | None, Limit] = {}
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
            "Requests a ratelimit entry applied to, by the service's answer (ok, over_limit; shadow_mode is ok).",
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
        if self.ratelimit is not None:
            result = await self.ratelimit.check(customer)
            if result != "none":
                self.m_ratelimit.labels(self.args.domain, customer, result).inc()
            if result == "over_limit":
                return 429
        now = time.monotonic()
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
                (k or "*"): {"requestsPerUnit": v.per_unit, "unit": v.unit, "shadow": v.shadow}
                for k, v in self.limits.items()
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

    async def watch_limits(self) -> None:
        """shop_ratelimit_requests_per_second from the limits the service has loaded (/rlconfig)."""
        if self.ratelimit is None:
            return
        while not self.stopping.is_set():
            try:
                limits = await self.ratelimit.limits()
            except (ClientError, TimeoutError) as err:
                log.warning("reading the ratelimit service's /rlconfig failed: %s", err)
            else:
                if limits != self.limits:
                    log.info("ratelimit limits now %s", {k or "*": v.per_unit for k, v in limits.items()})
                    self.m_limit.clear()
                    for k, v in limits.items():
                        per_second = v.per_unit / UNIT_SECONDS.get(v.unit, 1)
                        self.m_limit.labels(k or "*", str(v.shadow).lower()).set(per_second)
                    self.limits = limits
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.args.poll)

    async def watch(self) -> None:
        if self.args.replicas is not None:
            return  # fixed capacity, no cluster (development)
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=self.args.kubeconfig)
        apps = client.AppsV1Api(api)
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
            return world

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
                self.world = world
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
        if self.ratelimit is not None:
            await self.ratelimit.start()
        else:
            log.warning("no --ratelimit-url: nobody is rate limited")
        watchers = [asyncio.ensure_future(self.watch()), asyncio.ensure_future(self.watch_limits())]
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
            await asyncio.gather(*watchers, return_exceptions=True)
            if self.ratelimit is not None:
                await self.ratelimit.close()
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
    p.add_argument("--namespace", default="shop", help="namespace of the Deployment")
    p.add_argument("--deployment", default="checkout")
    p.add_argument(
        "--ratelimit-url", default=os.environ.get("RATELIMIT_URL"), help="the ratelimit service's HTTP port (/json)"
    )
    p.add_argument(
        "--ratelimit-debug-url",
        default=os.environ.get("RATELIMIT_DEBUG_URL"),
        help="the ratelimit service's debug port (/rlconfig)",
    )
    p.add_argument("--domain", default="checkout", help="the ratelimit domain of the shop's Envoy filter")
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
    if args.ratelimit_url and not args.ratelimit_debug_url:
        raise SystemExit("error: --ratelimit-debug-url (or RATELIMIT_DEBUG_URL) is required with --ratelimit-url")
    if not math.isfinite(args.capacity_per_replica) or args.capacity_per_replica <= 0:
        raise SystemExit("error: --capacity-per-replica must be > 0")
    asyncio.run(Shop(args).run())


if __name__ == "__main__":
    main()
