"""Chart values `connections`: Secrets mounted as files, their paths and headers in PATRON_* env vars."""

from __future__ import annotations

import pytest

from tests.unit.test_chart import CHART, container, env, helm, one, render

CONNECTIONS = {
    "prometheus": {
        "secretName": "prom-auth",
        "caKey": "ca.crt",
        "basicAuthKey": "auth",
        "headers": {"X-Scope-OrgID": "team-a", "X-Extra": "1"},
    },
    "alertmanager": {"secretName": "am-auth", "bearerTokenKey": "token"},
}


def test_secrets_are_mounted_and_named_by_env_vars() -> None:
    docs = render({"connections": CONNECTIONS})
    variables = env(docs)
    assert variables["PATRON_PROMETHEUS_CA_FILE"] == "/etc/patron/prometheus/ca.crt"
    assert variables["PATRON_PROMETHEUS_BASIC_AUTH_FILE"] == "/etc/patron/prometheus/auth"
    assert variables["PATRON_PROMETHEUS_HEADERS"] == "X-Extra: 1\nX-Scope-OrgID: team-a"
    assert variables["PATRON_ALERTMANAGER_BEARER_TOKEN_FILE"] == "/etc/patron/alertmanager/token"
    assert "PATRON_PROMETHEUS_BEARER_TOKEN_FILE" not in variables
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["/etc/patron/prometheus"]["readOnly"] and mounts["/etc/patron/alertmanager"]["readOnly"]
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["prometheus-connection"]["secret"] == {"secretName": "prom-auth"}
    assert volumes["alertmanager-connection"]["secret"] == {"secretName": "am-auth"}


def test_defaults_mount_nothing() -> None:
    docs = render()
    assert not [name for name in env(docs) if name.endswith(("_FILE", "_HEADERS"))]
    assert [m["mountPath"] for m in container(docs)["volumeMounts"]] == ["/tmp"]


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"prometheus": {"token": "x"}}, "'token' not allowed"),  # a misspelt key
        ({"prometheus": {"headers": {"X-Bad": "two\nlines"}}}, "does not match pattern"),
        ({"prometheus": {"headers": {"Bad Name": "v"}}}, "invalid propertyName 'Bad Name'"),
        ({"mimir": {}}, "'mimir' not allowed"),
    ],
)
def test_bad_connection_values_are_refused(bad: dict[str, object], named: str) -> None:
    result = helm("lint", str(CHART), values={"connections": bad}, check=False)
    assert result.returncode != 0 and named in result.stdout + result.stderr
