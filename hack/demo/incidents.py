"""Incident scripts for the demo's shop, and the runner that plays them.

A script (hack/demo/incidents/*.yaml) is a list of steps. Each step may, in this order:

- `wait`: `warmup` (until the shop has run for the warm-up the CustomerSLO needs), a duration
  (`40s`, `2m`), or a condition: `{throttled: CUSTOMER}`, `{unthrottled: CUSTOMER}` (as the shop
  enforces the ratelimit config), `{rolledBack: true}` (a faulty pod template served, and now none does);
  `timeout` bounds a condition (default 5m). A wait that times out is recorded as failed and the
  script goes on, so the demo always ends;
- `say`: a sentence for the audience;
- do one action: `storm: {customer, factor}`, `calm: {customer}`, or
  `rollout: {image, fault: {tier, code}}` (a new pod template of the Deployment; without `fault`,
  a good one).

The runner talks to the shop's admin API and, for rollouts, to the API server. It is used by the
demo driver (hack/demo/demo.py) and by tests/e2e/test_demo.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCRIPTS = Path(__file__).resolve().parent / "incidents"
FAULT_ANNOTATION = "demo.patron.dev/fault"
DEFAULT_TIMEOUT = 300.0
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def seconds(text: str | float | int) -> float:
    """'40s', '2m', '1m30s', '500ms' or a number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class Step:
    wait: Any = None
    timeout: float = DEFAULT_TIMEOUT
    say: str = ""
    storm: dict[str, Any] | None = None
    calm: dict[str, Any] | None = None
    rollout: dict[str, Any] | None = None


@dataclass(frozen=True)
class Script:
    name: str
    title: str
    steps: tuple[Step, ...]


def load(name_or_path: str) -> Script:
    """A script by name (hack/demo/incidents/NAME.yaml) or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCRIPTS / f"{name_or_path}.yaml"
    doc = yaml.safe_load(path.read_text())
    steps = []
    for i, raw in enumerate(doc.get("steps") or []):
        unknown = set(raw) - {"wait", "timeout", "say", "storm", "calm", "rollout"}
        actions = [k for k in ("storm", "calm", "rollout") if k in raw]
        if unknown or len(actions) > 1:
            raise ValueError(f"{path}: step {i + 1}: unknown keys {sorted(unknown)} or more than one action")
        wait = raw.get("wait")
        if isinstance(wait, str) and wait != "warmup":
            seconds(wait)  # validate early
        steps.append(
            Step(
                wait=wait,
                timeout=seconds(raw.get("timeout", DEFAULT_TIMEOUT)),
                say=" ".join(str(raw.get("say", "")).split()),
                storm=raw.get("storm"),
                calm=raw.get("calm"),
                rollout=raw.get("rollout"),
            )
        )
    return Script(doc["name"], doc.get("title", doc["name"]), tuple(steps))


@dataclass
class Mark:
    """One moment of a run: seconds since the script started, what happened, and whether it went as planned."""

    at: float
    what: str
    ok: bool = True
    kind: str = "step"  # step | say | action | wait


@dataclass
class Runner:
    shop_url: str
    namespace: str
    warmup: float = 0.0  # seconds of shop uptime `wait: warmup` waits for
    deployment: str = "checkout"
    kube: Any = None  # a kubernetes.client.ApiClient (rollout steps only)
    say: Callable[[str], None] = print
    on_mark: Callable[[Mark], None] | None = None  # called as each mark is made
    poll: float = 1.0
    marks: list[Mark] = field(default_factory=list)
    started: float = 0.0

    # ------------------------------------------------------------ the shop

    def shop_state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.shop_url + "/admin/state", timeout=10) as response:
            state: dict[str, Any] = json.load(response)
        return state

    def set_customer(self, name: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.shop_url}/admin/customers/{name}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    # ------------------------------------------------------------ actions

    def do_rollout(self, spec: dict[str, Any]) -> str:
        from kubernetes import client

        apps = client.AppsV1Api(self.kube)
        dep = apps.read_namespaced_deployment(self.deployment, self.namespace)
        container = dep.spec.template.spec.containers[0].name
        fault = spec.get("fault")
        patch = {
            "spec": {
                "template": {
                    "metadata": {"annotations": {FAULT_ANNOTATION: json.dumps(fault) if fault else None}},
                    "spec": {"containers": [{"name": container, "image": spec["image"]}]},
                }
            }
        }
        apps.patch_namespaced_deployment(self.deployment, self.namespace, patch)
        return f"rollout of {self.deployment} to {spec['image']}" + (f" (fault {json.dumps(fault)})" if fault else "")

    def act(self, step: Step) -> str | None:
        if step.storm is not None:
            factor = float(step.storm.get("factor", 10))
            self.set_customer(step.storm["customer"], {"mode": "storm", "factor": factor})
            return f"storm: {step.storm['customer']} x{factor:g}"
        if step.calm is not None:
            self.set_customer(step.calm["customer"], {"mode": "normal"})
            return f"calm: {step.calm['customer']}"
        if step.rollout is not None:
            return self.do_rollout(step.rollout)
        return None

    # ------------------------------------------------------------ waits

    def condition(self, wait: Any) -> tuple[str, Callable[[], bool]]:
        if wait == "warmup":
            return f"warm-up ({self.warmup:.0f} s of traffic)", lambda: self.shop_state()["uptime"] >= self.warmup
        if isinstance(wait, dict) and "throttled" in wait:
            name = wait["throttled"]
            return f"{name} throttled", lambda: name in self.shop_state()["limits"]
        if isinstance(wait, dict) and "unthrottled" in wait:
            name = wait["unthrottled"]
            return f"{name} unthrottled", lambda: name not in self.shop_state()["limits"]
        if isinstance(wait, dict) and wait.get("rolledBack"):
            seen = {"fault": False}

            def rolled_back() -> bool:
                """A faulty pod template served, and now none does."""
                serving = [v for v in self.shop_state()["versions"] if v["replicas"] > 0]
                if any(v["fault_tier"] for v in serving):
                    seen["fault"] = True
                    return False
                return seen["fault"] and bool(serving)

            return "rolled back", rolled_back
        raise ValueError(f"unknown wait {wait!r}")

    async def wait(self, step: Step) -> None:
        if step.wait is None:
            return
        if isinstance(step.wait, int | float) or (isinstance(step.wait, str) and step.wait != "warmup"):
            await asyncio.sleep(seconds(step.wait))
            return
        what, check = self.condition(step.wait)
        deadline = time.monotonic() + (step.timeout if step.wait != "warmup" else max(step.timeout, self.warmup + 60))
        while True:
            try:
                if await asyncio.to_thread(check):
                    self.mark(f"waited for {what}", kind="wait")
                    return
            except OSError:
                pass  # the shop is briefly unreachable: ask again
            if time.monotonic() > deadline:
                self.mark(f"timed out waiting for {what}", ok=False, kind="wait")
                self.say(f"(no {what} within {step.timeout:.0f} s; the script goes on)")
                return
            await asyncio.sleep(self.poll)

    # ------------------------------------------------------------ running

    def mark(self, what: str, ok: bool = True, kind: str = "step") -> None:
        mark = Mark(round(time.monotonic() - self.started, 1), what, ok, kind)
        self.marks.append(mark)
        if self.on_mark is not None:
            self.on_mark(mark)

    async def run(self, script: Script) -> list[Mark]:
        self.started = time.monotonic()
        for step in script.steps:
            await self.wait(step)
            if step.say:
                self.say(step.say)
            done = await asyncio.to_thread(self.act, step)
            if done:
                self.mark(done, kind="action")
        return self.marks

    def elapsed(self) -> float:
        return time.monotonic() - self.started
