"""The scenario catalogue: one backfilled dataset, one `service` label per scenario, known answers."""

from __future__ import annotations

from typing import Any

from tests.support.scenarios import HOUR, Customer, Phase, changed, many

MIN = 60
OLD_ERRORS = (Phase(50 * MIN, 2.0, errors=1.0), Phase(35 * MIN, 2.0))
WEIRD = ('we"ird\\cust', "ünïcødé-客户", "back\\\\slash", "quote'single")

SCENARIOS: dict[str, list[Customer]] = {
    # (a) acme (enterprise) is fully down; 0.1 of ~990 req/s is far below a 0.1% aggregate ratio.
    "one-down": [changed("acme", 0.1, Phase(40 * MIN, 0.1, errors=1.0)), *many("std-", 99, 10.0)],
    # (b) broad outage: everyone at 50% errors for 40 minutes.
    "all-down": [changed(f"c{i:02d}", 1.0, Phase(40 * MIN, 1.0, errors=0.5)) for i in range(20)],
    # (c) 10 requests an hour, one of which failed: not an active customer.
    "low-traffic": [
        changed("tiny", 10 / HOUR, Phase(20 * MIN, 10 / HOUR, errors=1.0), Phase(19.5 * MIN, 10 / HOUR)),
        *many("big-", 10, 5.0),
    ],
    # (d) a 30 s blip of 100% errors a minute ago: short windows burn, long ones do not.
    "blip": [changed("blippy", 2.0, Phase(90, 2.0, errors=1.0), Phase(60, 2.0)), *many("calm-", 10, 2.0)],
    # (e) errors from 40 to 10 minutes ago, then silence: impacted and lost.
    "lost": [changed("quitter", 2.0, Phase(40 * MIN, 2.0, errors=1.0), Phase(10 * MIN, 0.0)), *many("stay-", 10, 2.0)],
    # (f) five times its usual traffic for the last 10 minutes, no errors.
    "storm": [changed("bigbot", 2.0, Phase(10 * MIN, 10.0)), *many("peer-", 10, 2.0)],
    # (g) bigbot at five times its usual traffic for the last 10 minutes while victim has been fully
    # down for 40: an incident (1 of 12 impacted: critical) during which a customer storms.
    "storm-hurts": [
        changed("bigbot", 2.0, Phase(10 * MIN, 10.0)),
        changed("victim", 2.0, Phase(40 * MIN, 2.0, errors=1.0)),
        *many("peer-", 10, 2.0),
    ],
    # (h) latency: half of sloth's requests slower than 0.3 s for 40 minutes.
    "slow": [Customer("sloth", (Phase(10 * 24 * HOUR, 2.0), Phase(40 * MIN, 2.0, slow=0.5))), *many("fast-", 10, 2.0)],
    # (i) names that need escaping everywhere, all fully down.
    "weird": [changed(name, 1.0, Phase(40 * MIN, 1.0, errors=1.0)) for name in WEIRD] + list(many("ok-", 5, 1.0)),
    # (j) scrape gaps after old errors (50 to 35 minutes ago): gappy has no samples from 6 minutes ago
    # but the last one (fresh, yet unknown in S); gone none for 8 minutes (stale: unknown); quitter
    # has samples and sends nothing (gave up: impacted and lost).
    "gap": [
        changed("gappy", 2.0, *OLD_ERRORS, Phase(6 * MIN, 2.0, scraped=False), Phase(10, 2.0)),
        changed("gone", 2.0, *OLD_ERRORS, Phase(8 * MIN, 2.0, scraped=False)),
        changed("quitter", 2.0, Phase(40 * MIN, 2.0, errors=1.0), Phase(10 * MIN, 0.0)),
        *many("ok-", 20, 2.0),
    ],
    # (k) an outage that spreads and heals: one more of spread-0..4 fails fully every 4 minutes from
    # 40 minutes ago, each for 16 minutes (the last heals 8 minutes ago); bigbot storms (5x) for the
    # last 15; 10 peers are fine.
    "spreading": [
        *(
            changed(f"spread-{i}", 2.0, Phase((40 - 4 * i) * MIN, 2.0, errors=1.0), Phase((24 - 4 * i) * MIN, 2.0))
            for i in range(5)
        ),
        changed("bigbot", 2.0, Phase(15 * MIN, 10.0)),
        *many("fine-", 10, 2.0),
    ],
    # healthy: nothing to see.
    "healthy": list(many("h-", 30, 1.0)),
    # stopped: the service's only target stopped 4 minutes before the end (no sample since).
    "stopped": [changed(f"s-{i}", 1.0, Phase(4 * MIN, 1.0, scraped=False)) for i in range(5)],
}


def manifest(service: str, name: str | None = None, **spec: Any) -> dict[str, Any]:
    """A CustomerSLO for one scenario; the budget window fits in the 7 h of backfilled data."""
    body: dict[str, Any] = {
        "service": service,
        "objective": 99.9,
        "window": "6h",
        "indicator": {
            "ratio": {
                "errors": f'http_requests_total{{service="{service}",code=~"5.."}}',
                "total": f'http_requests_total{{service="{service}"}}',
            }
        },
    }
    body.update(spec)
    return {
        "apiVersion": "patron.dev/v1alpha1",
        "kind": "CustomerSLO",
        "metadata": {"name": name or service},
        "spec": body,
    }


def latency_indicator(service: str, threshold: float = 0.3) -> dict[str, Any]:
    return {"latency": {"histogram": f'http_request_duration_seconds{{service="{service}"}}', "threshold": threshold}}
