"""The Grafana dashboard's queries against the test bed's Prometheus, scraping a live operator
during a real incident: every panel, its variables filled in, runs and returns data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.test_actions_helpers import World, slo, world_fixture  # noqa: F401
from tests.support.wait import wait_for

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "patron" / "dashboards" / "patron.json"
# Panels over Patron's recorded series (DESIGN.md "Recording rules"): they need spec.recordingRules
# and the rules loaded into Prometheus. Nothing in the test bed records them yet, so such a panel is
# only checked to be valid PromQL; its non-empty check is waived, never satisfied with made-up series.
NEEDS_RECORDING_RULES = "patron:"


def prometheus(url: str, path: str, **params: str) -> dict[str, Any]:
    """One Prometheus API call; a refused query (HTTP 400/422) comes back as its error body."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}{path}?{query}", timeout=30) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
    return body


def fill(text: str, namespace: str, name: str) -> str:
    return text.replace("$namespace", namespace).replace("$customerslo", name)


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, expr) of every panel target and every Prometheus annotation."""
    out = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in board["panels"] for t in p["targets"]]
    out += [(f"annotation {a['name']!r}", a["expr"]) for a in board["annotations"]["list"] if "expr" in a]
    return out


def check_query(url: str, expr: str, start: float, end: float) -> tuple[str, int]:
    """('ok' | the error, number of series) of a range query as Grafana runs it."""
    body = prometheus(url, "/api/v1/query_range", query=expr, start=f"{start:.0f}", end=f"{end:.0f}", step="2")
    if body.get("status") != "success":
        return str(body.get("error")), 0
    return "ok", len(body["data"]["result"])


def test_every_dashboard_query_returns_data_during_an_incident(world: World, tmp_path: Path) -> None:
    w, ns, url = world, world.namespace, world.testbed.prometheus_url
    board = json.loads(DASHBOARD.read_text())
    op = w.start_operator()
    target = w.testbed.targets_dir / f"patron-{ns}.json"
    target.write_text(json.dumps([{"targets": [f"127.0.0.1:{op.metrics_port}"], "labels": {"job": "patron"}}]))
    try:
        begin = time.time()
        w.apply(slo(ns, actions={"alert": {}}))
        # No traffic yet: evaluations fail with NoData, a real failure for the failures panel.
        wait_for(lambda: w.condition("Ready").get("reason") == "NoData", timeout=90, what="Ready=False NoData")
        w.exporter.set("acme", rps=5, errors=1.0)
        for peer in ("beta", "gamma"):
            w.exporter.set(peer, rps=5)
        wait_for(
            lambda: (
                w.status().get("severity") == "warning" and [r for r in w.records("Alert") if r["state"] == "Active"]
            ),
            timeout=120,
            what="an incident with the alert held",
            explain=w.log_tail,
        )
        sel = f'namespace="{ns}", customerslo="checkout"'
        held = (
            f'patron_customerslo_customers{{{sel}, state="impacted"}} == 1 '
            f'and on() patron_customerslo_actions{{{sel}, type="Alert"}} == 1'
        )
        wait_for(
            lambda: prometheus(url, "/api/v1/query", query=held)["data"]["result"],
            timeout=90,
            what="Prometheus to scrape the operator during the incident",
        )
        time.sleep(3)  # a few more scrapes (1 s interval), so rate() and changes() have points on both sides
        end = time.time()

        # The checker fails an invalid query and an empty one.
        assert check_query(url, "sum(", begin, end)[0] != "ok"
        assert check_query(url, 'patron_customerslo_severity{customerslo="no-such"}', begin, end) == ("ok", 0)

        # The picker: namespace and customerslo from label_values of Patron's metrics.
        namespaces = prometheus(url, "/api/v1/label/namespace/values", **{"match[]": "patron_customerslo_severity"})
        assert ns in namespaces["data"]
        match = fill('patron_customerslo_severity{namespace="$namespace"}', ns, "checkout")
        assert prometheus(url, "/api/v1/label/customerslo/values", **{"match[]": match})["data"] == ["checkout"]

        problems, waived = [], []
        queries = panel_queries(board)
        assert len(queries) == 11  # 10 panel targets and the actions annotation
        for what, expr in queries:
            error, series = check_query(url, fill(expr, ns, "checkout"), begin, end)
            if error != "ok":
                problems.append(f"{what}: invalid: {error}")
            elif series == 0 and NEEDS_RECORDING_RULES in expr:
                waived.append(what)
            elif series == 0:
                problems.append(f"{what}: no data: {expr}")
        assert not problems, "\n".join(problems)
        assert waived == ['panel "Worst customers\' burn rate (needs spec.recordingRules)" A']

        # `patron report -o html` draws its customers chart from the same metrics, scraped for real.
        page = tmp_path / "report.html"
        cmd = [sys.executable, "-m", "patron.cli", "report", f"{ns}/checkout", "-o", "html", "--file", str(page)]
        env = {**w.testbed.environ(), "PATRON_PROMETHEUS_URL": url}
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=60)
        html = page.read_text()
        assert html.count("<polyline") == 2 and "No data" not in html, html
    finally:
        target.unlink(missing_ok=True)
