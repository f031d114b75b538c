"""Patron's throttle enforced by the real envoyproxy/ratelimit service of the test bed (issue 12).

The service loads the test's ratelimit ConfigMap through the test bed's kubelet-style mirror
(timestamped directory, `..data` swapped atomically) with RUNTIME_IGNOREDOTFILES=true and
RUNTIME_WATCH_ROOT=false, and is asked over its HTTP /json API with the descriptor Envoy's ratelimit
filter sends for a customer header. Nothing here interprets the config Patron wrote: the service does.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest

from tests.e2e.conftest import TESTBED_SH, run
from tests.e2e.test_actions_helpers import World, world_fixture  # noqa: F401
from tests.e2e.test_actions_throttle import storm_under_two_throttles
from tests.support.wait import wait_for

# A user's own rule in the same ConfigMap (another domain): it must stay loaded throughout.
USER_RULE = "domain: search\ndescriptors:\n  - key: customer_id\n    rate_limit: {unit: minute, requests_per_unit: 9}\n"
LIMIT = 13  # ceil(baseline 10 req/s x headroom 1.25): storm_under_two_throttles
BURST = 30  # requests sent within one second window


class RateLimitService:
    def __init__(self, env: dict[str, str]) -> None:
        self.url = env["RATELIMIT_URL"]
        self.debug_url = env["RATELIMIT_DEBUG_URL"]

    def rlconfig(self) -> str:
        with urllib.request.urlopen(self.debug_url + "/rlconfig", timeout=5) as response:
            text: str = response.read().decode()
        return text

    def ask(self, domain: str, customer: str) -> tuple[int, dict[str, Any]]:
        """What Envoy's ratelimit filter asks for a request with the customer header: (HTTP status, answer)."""
        body = {"domain": domain, "descriptors": [{"entries": [{"key": "customer_id", "value": customer}]}]}
        request = urllib.request.Request(self.url + "/json", data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def burst(self, domain: str, customer: str) -> Counter[str]:
        """BURST requests inside one fixed one-second window of the service (the counters' unit):
        started just after a second begins, retried whole if they did not finish before it ended."""
        for _ in range(5):
            time.sleep(1.02 - time.time() % 1)
            started = int(time.time())
            answers = [self.ask(domain, customer) for _ in range(BURST)]
            if int(time.time()) == started:
                codes = Counter(a["overallCode"] for _, a in answers)
                assert all((status == 429) == (a["overallCode"] == "OVER_LIMIT") for status, a in answers)
                limited = {bool(a["statuses"][0].get("currentLimit")) for _, a in answers}
                codes["with a limit" if limited == {True} else "without a limit"] = len(answers)
                return codes
        raise AssertionError("could not send a burst inside one second (machine too busy)")


def line(domain: str, value: str | None, per_second: int, shadow: bool = False) -> str:
    """One limit as /rlconfig prints it."""
    key = f"{domain}.customer_id" + (f"_{value}" if value else "")
    return f"{key}: unit=SECOND requests_per_unit={per_second}, shadow_mode: {str(shadow).lower()}, quota_mode: false"


def loaded(service: RateLimitService, line: str) -> bool:
    return line in service.rlconfig().splitlines()


@pytest.mark.slow
def test_the_real_service_enforces_patrons_limit_on_the_stormer_only(world: World) -> None:
    w = world
    w.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ratelimit-config"},
            "data": {"search.yaml": USER_RULE},
        }
    )
    run(
        [str(TESTBED_SH), "ratelimit-config", f"{w.namespace}/ratelimit-config"],
        env={**os.environ, "PATRON_TESTBED_DIR": str(w.testbed.state_dir)},
    )
    service = RateLimitService(w.testbed.environ())
    user_line = "search.customer_id: unit=MINUTE requests_per_unit=9, shadow_mode: false, quota_mode: false"
    wait_for(lambda: loaded(service, user_line), timeout=30, what="the user's rule loaded", explain=service.rlconfig)

    # Before any storm the service has no limit for anyone in these domains.
    assert service.burst("checkout", "bigbot") == {"OK": BURST, "without a limit": BURST}
    storm_under_two_throttles(w)

    limit_line, shadow_line = line("checkout", "bigbot", LIMIT), line("shadow", "bigbot", LIMIT, shadow=True)
    wait_for(lambda: loaded(service, limit_line), timeout=120, what="Patron's limit loaded", explain=service.rlconfig)
    wait_for(lambda: loaded(service, shadow_line), timeout=30, what="the shadow limit loaded", explain=service.rlconfig)
    assert loaded(service, user_line)

    # The storming customer: exactly LIMIT requests per second pass, the rest get 429.
    assert service.burst("checkout", "bigbot") == {"OK": LIMIT, "OVER_LIMIT": BURST - LIMIT, "with a limit": BURST}
    # Everyone else: no limit applies at all.
    for other in ("acme", "carol", "bigbot-2", "BIGBOT"):
        assert service.burst("checkout", other) == {"OK": BURST, "without a limit": BURST}, other
    # Shadow mode: the limit applies (it is counted) but never limits.
    assert service.burst("shadow", "bigbot") == {"OK": BURST, "with a limit": BURST}

    w.exporter.set("bigbot", rps=10)
    w.exporter.set("carol", rps=10)
    wait_for(
        lambda: not loaded(service, limit_line) and not loaded(service, shadow_line),
        timeout=150,
        what="the limits gone from the service after recovery",
        explain=service.rlconfig,
    )
    (record,) = w.records("Throttle")
    assert record["state"] == "Reverted"
    assert loaded(service, user_line)
    assert service.burst("checkout", "bigbot") == {"OK": BURST, "without a limit": BURST}
