"""Patron's connection options against a Prometheus behind TLS and basic auth (--web.config.file)."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from patron.impact.assess import DataProblem
from patron.impact.connection import Connection, ConnectionOptionError
from patron.impact.evaluate import evaluate
from patron.impact.prometheus import Prometheus
from patron.reconcile import parse_spec
from tests.support.catalog import SCENARIOS, manifest
from tests.support.promserver import PrometheusServer
from tests.support.scenarios import openmetrics

PASSWORD = "patron-secret"
# bcrypt of PASSWORD at cost 4 (Prometheus checks it at every request; cost 12 takes ~0.25 s).
BCRYPT = "$2b$04$8KMeOYZTl3fE6I9bgJxcnuTzxxj9sHMRRM4ygQ0FYyMHWX9G7hWhK"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, scenario_end: float) -> Iterator[PrometheusServer]:
    """The one-down scenario in a Prometheus serving only HTTPS with basic auth (user patron)."""
    workdir = tmp_path_factory.mktemp("secured-prometheus")
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    web = workdir / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                "basic_auth_users": {"patron": BCRYPT},
            }
        )
    )
    token = base64.b64encode(f"patron:{PASSWORD}".encode()).decode()
    server = PrometheusServer(workdir, web_config=web, ca_file=cert, auth_headers={"Authorization": f"Basic {token}"})
    server.load(openmetrics({"one-down": SCENARIOS["one-down"]}, scenario_end))
    server.start()
    yield server
    server.stop()


def _files(tmp_path: Path, auth: str) -> Path:
    path = tmp_path / "auth"
    path.write_text(auth + "\n")
    return path


def test_tls_and_basic_auth_from_files(secured: PrometheusServer, scenario_end: float, tmp_path: Path) -> None:
    assert secured.ca_file is not None
    spec = parse_spec(manifest("one-down")["spec"])
    at = datetime.fromtimestamp(scenario_end, UTC)
    good = Connection(ca_file=str(secured.ca_file), basic_auth_file=str(_files(tmp_path, f"patron:{PASSWORD}")))
    a = evaluate(spec, Prometheus(secured.url, connection=good), at)
    assert {c.customer for c in a.impacted} == {"acme"}
    # Without the CA the certificate is refused; with a wrong password Prometheus answers 401.
    for bad in (
        Connection(basic_auth_file=good.basic_auth_file),
        Connection(ca_file=good.ca_file, basic_auth_file=str(_files(tmp_path, "patron:wrong"))),
        Connection(ca_file=good.ca_file, headers=(("X-Scope-OrgID", "team-a"),)),
    ):
        with pytest.raises(DataProblem) as err:
            evaluate(spec, Prometheus(secured.url, connection=bad), at)
        assert err.value.reason in ("PrometheusUnavailable", "QueryFailed")
    # A rotated password file is read at the next request.
    rotated = _files(tmp_path, "patron:wrong")
    prom = Prometheus(secured.url, connection=Connection(ca_file=good.ca_file, basic_auth_file=str(rotated)))
    with pytest.raises(DataProblem):
        prom.query("vector(1)", at)
    rotated.write_text(f"patron:{PASSWORD}")
    assert prom.query("vector(1)", at) == [({}, 1.0)]


def test_cli_flags_and_env_vars(secured: PrometheusServer, scenario_end: float, tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(yaml.safe_dump(manifest("one-down")))
    auth = _files(tmp_path, f"patron:{PASSWORD}")
    at = datetime.fromtimestamp(scenario_end, UTC).isoformat()
    cmd = [sys.executable, "-m", "patron.cli", "evaluate", "-f", str(slo), "--prometheus", secured.url, "--at", at]
    flags = ["--prometheus-ca-file", str(secured.ca_file), "--prometheus-basic-auth-file", str(auth)]
    out = subprocess.run([*cmd, *flags, "-o", "json"], check=True, capture_output=True, text=True).stdout
    assert '"acme"' in out
    env = {"PATRON_PROMETHEUS_CA_FILE": str(secured.ca_file), "PATRON_PROMETHEUS_BASIC_AUTH_FILE": str(auth)}
    out = subprocess.run([*cmd, "-o", "json"], check=True, capture_output=True, text=True, env=env).stdout
    assert '"acme"' in out
    missing = subprocess.run([*cmd, "--prometheus-ca-file", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode != 0 and "--prometheus-ca-file" in missing.stderr


def test_bad_options_are_refused_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConnectionOptionError, match="--alertmanager-basic-auth-file"):
        Connection("--alertmanager", basic_auth_file=str(_files(tmp_path, "no-colon")))
    with pytest.raises(ConnectionOptionError, match="exclude each other"):
        Connection(bearer_token_file=str(_files(tmp_path, "t")), basic_auth_file=str(_files(tmp_path, "a:b")))
    token = Connection(bearer_token_file=str(_files(tmp_path, "tok")), headers=(("X-Scope-OrgID", "t"),))
    assert token.request_headers() == {"X-Scope-OrgID": "t", "Authorization": "Bearer tok"}
