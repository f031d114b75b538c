"""The Grafana dashboard's queries against the test bed's Prometheus, scraping a live operator
during a real incident: every panel, its variables filled in, runs and returns data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_actions_helpers import World, slo, world_fixture  # noqa: F401
from tests.support.wait import wait_for

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "patron" / "dashboards" / "patron.json"
BURN_RATE = "Worst customers' burn rate"


def prometheus(url: str, path: str, **params: str) -> dict[str, Any]:
    """One Prometheus API call; a refused query (HTTP 400/422) comes back as its error body."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}{path}?{query}", timeout=30) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
    return body


def reload(url: str) -> None:
    """POST /-/reload (the test bed's Prometheus runs with --web.enable-lifecycle): rule files re-read."""
    urllib.request.urlopen(urllib.request.Request(f"{url}/-/reload", method="POST"), timeout=30).close()


def fill(text: str, namespace: str, name: str, window: str = "") -> str:
    return text.replace("$namespace", namespace).replace("$customerslo", name).replace("$window", window)


def variable(board: dict[str, Any], name: str) -> dict[str, Any]:
    (var,) = [v for v in board["templating"]["list"] if v["name"] == name]
    return var


def windows(url: str, board: dict[str, Any], namespace: str, name: str) -> list[str]:
    """The window variable's values as Grafana computes them: label_values(<match>, __name__), then its regex."""
    var = variable(board, "window")
    match = re.fullmatch(r"label_values\((.+), __name__\)", var["query"]["query"])
    assert match, var["query"]["query"]
    names = prometheus(url, "/api/v1/label/__name__/values", **{"match[]": fill(match[1], namespace, name)})["data"]
    pattern = re.compile(var["regex"].strip("/"))
    return sorted(m[1] for m in map(pattern.match, names) if m)


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
    # Patron's recording rules for the CustomerSLO, as `patron rules` prints them, loaded into Prometheus.
    manifest = slo(ns, actions={"alert": {}}, window="1m", recordingRules={"enabled": True, "interval": "1s"})
    rules = w.testbed.rules_dir / f"patron-{ns}.yml"
    cli = [sys.executable, "-m", "patron.cli", "rules", "-f", "-"]
    body = json.dumps({**manifest, "metadata": {**manifest["metadata"], "namespace": ns}})
    rules.write_text(subprocess.run(cli, input=body, check=True, capture_output=True, text=True, timeout=60).stdout)
    try:
        reload(url)
        begin = time.time()
        w.apply(manifest)
        # No traffic yet: evaluations fail with NoData, a real failure for the failures panel.
        wait_for(lambda: w.condition("Ready").get("reason") == "NoData", timeout=90, what="Ready=False NoData")
        # Prometheus has scraped the operator before the incident (no action held yet), so the actions
        # annotation's changes() sees the Alert go from 0 to 1.
        sel = f'namespace="{ns}", customerslo="checkout"'
        before = f'patron_customerslo_actions{{{sel}, type="Alert"}} == 0'
        wait_for(
            lambda: prometheus(url, "/api/v1/query", query=before)["data"]["result"],
            timeout=90,
            what="Prometheus to scrape the operator before the incident",
        )
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
        held = (
            f'patron_customerslo_customers{{{sel}, state="impacted"}} == 1 '
            f'and on() patron_customerslo_actions{{{sel}, type="Alert"}} == 1'
        )
        wait_for(
            lambda: prometheus(url, "/api/v1/query", query=held)["data"]["result"],
            timeout=90,
            what="Prometheus to scrape the operator during the incident",
        )
        # Every recorded window (15s and 1m, every second; the budget window is 1m, so no coarser
        # level) in the window picker, and the burn-rate panel's acme at its true burn rate: every
        # request fails, 1 / (1 - 90/100).
        (panel,) = [p for p in board["panels"] if p["title"] == BURN_RATE]
        burn = panel["targets"][0]["expr"]
        wait_for(
            lambda: windows(url, board, ns, "checkout") == ["rate15s", "rate1m"],
            timeout=90,
            what="every recorded window in the window picker",
        )

        def burn_rates(window: str) -> dict[str, float]:
            result = prometheus(url, "/api/v1/query", query=fill(burn, ns, "checkout", window))["data"]["result"]
            return {r["metric"].get("customer", ""): float(r["value"][1]) for r in result}

        for window in ("rate15s", "rate1m"):
            wait_for(lambda win=window: "acme" in burn_rates(win), timeout=60, what=f"acme's burn rate over {window}")
            assert burn_rates(window)["acme"] == pytest.approx(10), window
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

        problems = []
        queries = panel_queries(board)
        assert len(queries) == 11  # 10 panel targets and the actions annotation
        recorded = windows(url, board, ns, "checkout")
        for (what, expr), window in ((q, w) for q in queries for w in (recorded if "$window" in q[1] else [""])):
            error, series = check_query(url, fill(expr, ns, "checkout", window), begin, end)
            if error != "ok":
                problems.append(f"{what} ({window}): invalid: {error}")
            elif series == 0:
                problems.append(f"{what} ({window}): no data: {expr}")
        assert not problems, "\n".join(problems)

        # `patron report -o html` draws its customers chart from the same metrics, scraped for real.
        page = tmp_path / "report.html"
        cmd = [sys.executable, "-m", "patron.cli", "report", f"{ns}/checkout", "-o", "html", "--file", str(page)]
        env = {**w.testbed.environ(), "PATRON_PROMETHEUS_URL": url}
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=60)
        html = page.read_text()
        assert html.count("<polyline") == 2 and "No data" not in html, html
    finally:
        target.unlink(missing_ok=True)
        rules.unlink(missing_ok=True)
        reload(url)
