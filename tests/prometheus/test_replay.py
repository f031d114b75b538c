"""`patron replay` on generated scenarios with known answers."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from patron.impact.prometheus import Prometheus
from patron.reconcile import parse_spec
from patron.replay import ReplayStep, replay
from patron.status import timestamp
from tests.support.catalog import manifest
from tests.support.promserver import PrometheusServer

THROTTLE = {"configMap": "ratelimit", "domain": "shop", "minSeverity": "warning"}
SCALE = {"target": {"name": "checkout"}, "step": 2, "maxReplicas": 7, "cooldown": "5m"}


def test_replay_of_a_customer_who_gives_up(scenario_prometheus: PrometheusServer, scenario_end: float) -> None:
    end = datetime.fromtimestamp(scenario_end, UTC)
    spec = parse_spec(manifest("lost")["spec"])
    steps = replay(spec, Prometheus(scenario_prometheus.url), end - timedelta(minutes=50), end, timedelta(minutes=1))
    assert len(steps) == 51
    started = [s for s in steps if any(e.startswith("ImpactStarted") for e in s.events)]
    # Errors begin 40 minutes before the end; both 1h/5m burn rates pass 14.4 within the first minute.
    assert [s.at for s in started] == [(end - timedelta(minutes=39)).strftime("%Y-%m-%dT%H:%M:%SZ")]
    assert all(s.severity == "none" for s in steps[:11])
    # 1 of 11 active customers (9% >= 5%) is critical from then on, and never resolves in the period.
    assert all(s.severity == "critical" and s.worst == ("quitter",) for s in steps[11:])
    assert not any(e.startswith("ImpactResolved") for s in steps for e in s.events)
    # It stopped sending 10 minutes before the end: lost once its short window shows the drop.
    assert steps[-1].lost == 1 and steps[30].lost == 0


def test_replay_cli_json(scenario_prometheus: PrometheusServer, scenario_end: float, tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text(yaml.safe_dump(manifest("blip")))
    end = datetime.fromtimestamp(scenario_end, UTC)
    out = subprocess.run(
        [sys.executable, "-m", "patron.cli", "replay", "-f", str(path), "--prometheus", scenario_prometheus.url,
         "--from", (end - timedelta(minutes=5)).isoformat(), "--to", end.isoformat(), "--step", "30s", "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    steps = json.loads(out)
    assert len(steps) == 11
    assert {s["severity"] for s in steps} == {"none"}  # a blip is never impact


def test_replay_refuses_unbounded_periods(scenario_prometheus: PrometheusServer) -> None:
    spec = parse_spec(manifest("lost")["spec"])
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="more than"):
        replay(spec, Prometheus(scenario_prometheus.url), now - timedelta(days=30), now, timedelta(seconds=1))


def _actions(steps: list[ReplayStep]) -> list[tuple[int, str]]:
    """(step index, action Event) for every action Event of the replay."""
    return [(i, a) for i, s in enumerate(steps) for a in s.actions]


def test_replay_throttles_the_storming_customer(scenario_prometheus: PrometheusServer, scenario_end: float) -> None:
    end = datetime.fromtimestamp(scenario_end, UTC)
    body = manifest("storm-hurts", actions={"throttle": THROTTLE})
    spec = parse_spec(body["spec"])
    prometheus = Prometheus(scenario_prometheus.url)
    steps = replay(spec, prometheus, end - timedelta(minutes=15), end, timedelta(minutes=1), name="storm-hurts")
    assert len(steps) == 16
    # victim has been down for 40 minutes: 1 of 12 customers impacted (8% >= 5%) is critical throughout.
    assert {(s.severity, s.worst) for s in steps} == {("critical", ("victim",))}
    # bigbot goes from 2 to 10 req/s 10 minutes before the end (samples every 30 s). Two minutes in, its
    # 5m rate counts five 30 s intervals at 10 req/s and four at 2 (1740 requests over 270 s, i.e. 6.44
    # req/s extrapolated) >= 3 x its 2 req/s baseline: storming from end-8m, throttled at that step,
    # to ceil(2 x 1.2) = 3 req/s, exactly once, and held to the end (ttl 30m).
    assert [s.storming for s in steps] == [0] * 7 + [1] * 9
    key = "patron-storm-hurts.yaml"
    assert _actions(steps) == [
        (7, f"ActionApplied: Throttle ConfigMap/ratelimit key {key} customer bigbot: 3 req/s (baseline 2 x 1.2)")
    ]
    assert all(s.objects == {"ConfigMap/ratelimit": {}} and s.records == () for s in steps[:7])
    rules = yaml.safe_load(steps[7].objects["ConfigMap/ratelimit"][key])
    assert rules == {
        "domain": "shop",
        "descriptors": [
            {"key": "customer_id", "value": "bigbot", "rate_limit": {"unit": "second", "requests_per_unit": 3}}
        ],
    }
    held = {
        "type": "Throttle",
        "target": "ConfigMap/ratelimit",
        "targetRef": {"kind": "ConfigMap", "name": "ratelimit"},
        "customer": "bigbot",
        "state": "Active",
        "since": steps[7].at,
        "detail": "3 req/s (baseline 2 x 1.2)",
        "key": key,
        "limit": 3,
        "expires": timestamp(end - timedelta(minutes=8) + timedelta(minutes=30)),
    }
    assert all(s.records == (held,) and s.objects == steps[7].objects for s in steps[7:])

    # With a 5m ttl the entry is lifted at end-3m, its key removed, and not set again in the incident.
    body = manifest("storm-hurts", actions={"throttle": {**THROTTLE, "ttl": "5m"}})
    steps = replay(parse_spec(body["spec"]), prometheus, end - timedelta(minutes=15), end, timedelta(minutes=1))
    key = "patron-replay.yaml"
    assert [(i, a.split(":")[0]) for i, a in _actions(steps)] == [(7, "ActionApplied"), (12, "ActionReverted")]
    assert steps[12].actions == (
        "ActionReverted: Throttle ConfigMap/ratelimit customer bigbot: lifted, ttl 5m expired",
    )
    assert [list(s.objects["ConfigMap/ratelimit"]) for s in steps] == [[]] * 7 + [[key]] * 5 + [[]] * 4
    assert [r["state"] for r in steps[-1].records] == ["Reverted"]


def test_replay_scales_up_in_steps_to_the_bound(scenario_prometheus: PrometheusServer, scenario_end: float) -> None:
    end = datetime.fromtimestamp(scenario_end, UTC)
    spec = parse_spec(manifest("all-down", actions={"scale": SCALE, "alert": {}})["spec"])
    steps = replay(spec, Prometheus(scenario_prometheus.url), end - timedelta(minutes=50), end, timedelta(minutes=1))
    assert len(steps) == 51
    # Everyone at 50% errors from end-40m: the 1h burn rate passes 14.4 once 104 s of errors are in it,
    # so the first evaluation with impact is end-38m (step 12): critical (20 of 20 impacted).
    assert [s.severity for s in steps] == ["none"] * 12 + ["critical"] * 39
    assert _actions(steps) == [
        (12, "ActionApplied: Alert CustomerImpact (critical): firing"),
        (12, "ActionApplied: Scale Deployment/checkout: replicas 3 -> 5 (original 3, max 7)"),
        (13, "ActionSkipped: Scale Deployment/checkout: no further step, cooldown 5m until " + steps[17].at),
        (17, "ActionApplied: Scale Deployment/checkout: replicas 5 -> 7 (original 3, max 7)"),
        (18, "ActionSkipped: Scale Deployment/checkout: no further step, at the bound 7"),
    ]
    replicas = [s.objects["Deployment/checkout"] for s in steps]
    assert replicas == [3] * 12 + [5] * 5 + [7] * 34
    scale = [r for r in steps[-1].records if r["type"] == "Scale"]
    assert scale == [
        {
            "type": "Scale",
            "target": "Deployment/checkout",
            "targetRef": {"kind": "Deployment", "name": "checkout"},
            "state": "Active",
            "since": steps[17].at,
            "detail": "7 replicas (original 3; at the bound 7)",
            "replicas": 7,
            "originalReplicas": 3,
        }
    ]
    assert all(s.notes == () for s in steps)


def test_replay_cli_table_shows_actions(
    scenario_prometheus: PrometheusServer, scenario_end: float, tmp_path: Path
) -> None:
    path = tmp_path / "slo.yaml"
    rollback = {"target": {"name": "checkout"}}
    path.write_text(yaml.safe_dump(manifest("all-down", actions={"scale": SCALE, "rollback": rollback})))
    end = datetime.fromtimestamp(scenario_end, UTC)
    out = subprocess.run(
        [sys.executable, "-m", "patron.cli", "replay", "-f", str(path), "--prometheus", scenario_prometheus.url,
         "--from", (end - timedelta(minutes=40)).isoformat(), "--to", end.isoformat(), "--step", "1m",
         "--replicas", "4"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    applied = [line.strip() for line in lines if "ActionApplied" in line]
    assert applied == [
        "ActionApplied: Scale Deployment/checkout: replicas 4 -> 6 (original 4, max 7)",
        "ActionApplied: Scale Deployment/checkout: replicas 6 -> 7 (original 4, max 7)",
    ]
    # Rollback needs the Deployment's revision history: reported once, never guessed.
    assert lines[-1].startswith("note: rollback: not simulated")
    assert sum(line.startswith("note:") for line in lines) == 1
