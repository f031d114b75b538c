"""`patron replay` on generated scenarios with known answers."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from tests.support.catalog import manifest
from tests.support.promserver import PrometheusServer

from patron.impact.prometheus import Prometheus
from patron.reconcile import parse_spec
from patron.replay import replay


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
