"""The Grafana dashboard: valid JSON whose queries use only Patron's documented metrics, and the
chart's optional ConfigMap for Grafana's dashboard sidecar (tests/e2e/test_dashboard.py runs the queries)."""

from __future__ import annotations

import json
import re

from patron.impact.rules import series_name
from tests.unit.test_chart import CHART, REPO, helm, kinds, render

DASHBOARD = CHART / "dashboards" / "patron.json"


def test_dashboard_queries_use_documented_metrics_per_customerslo() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "namespace", "customerslo", "window"]
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    docs = (REPO / "docs" / "operations.md").read_text()
    for expr in exprs:
        assert "$namespace" in expr and "$customerslo" in expr, expr  # every panel follows the picker
        for metric in re.findall(r"\b(patron_[a-z_]+?)(?:_bucket)?\{", expr):
            assert f"`{metric}`" in docs, f"{metric} is not documented in docs/operations.md"
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_burn_rate_panel_reads_the_series_patron_rules_records() -> None:
    """The window picker's regex turns patron:requests:rate<w> into rate<w>; the panel, given it,
    names the recorded series of rules.py (requests, errors, good_requests) for that window."""
    board = json.loads(DASHBOARD.read_text())
    (var,) = [v for v in board["templating"]["list"] if v["name"] == "window"]
    (panel,) = [p for p in board["panels"] if p["title"] == "Worst customers' burn rate"]
    for seconds in (15, 300, 3600, 21600, 30 * 86400, 90):
        value = re.fullmatch(var["regex"].strip("/"), series_name("requests", seconds))
        assert value, seconds
        names = set(re.findall(r"patron:[a-z_]+:rate\w+", panel["targets"][0]["expr"].replace("$window", value[1])))
        assert names == {series_name(kind, seconds) for kind in ("requests", "errors", "good_requests")}


def test_chart_renders_the_dashboard_configmap_only_when_enabled() -> None:
    assert not [d for d in kinds(render(), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    values = {"grafana": {"dashboard": {"enabled": True, "annotations": {"grafana_folder": "Patron"}}}}
    (cm,) = [d for d in kinds(render(values), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Patron"}
    assert json.loads(cm["data"]["patron.json"]) == json.loads(DASHBOARD.read_text())
    refused = helm("template", "x", str(CHART), values={"grafana": {"dashboard": {"enable": True}}}, check=False)
    assert refused.returncode != 0 and "enable" in refused.stderr
