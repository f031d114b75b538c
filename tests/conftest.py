"""Markers by folder, one test bed per pytest-xdist worker, and the backfilled scenario Prometheus
shared by Prometheus and e2e tests."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.support.catalog import SCENARIOS
from tests.support.promserver import PrometheusServer
from tests.support.scenarios import HOUR, openmetrics

REPO = Path(__file__).resolve().parents[1]

# Property tests judge answers, not speed: on a busy 2-core machine (two test beds beside them) a
# per-example deadline fails them for the scheduler's sake. Performance is measured in hack/bench.
settings.register_profile("patron", deadline=None)
settings.load_profile("patron")
_FOLDER_MARKS = {"unit": "unit", "prometheus": "prometheus"}


def pytest_configure(config: pytest.Config) -> None:
    """Under `pytest -n N` each worker brings up its own test bed in <repo>/.testbed-<worker>
    (free loopback ports, so they never collide); a single process keeps <repo>/.testbed."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and "PATRON_TESTBED_DIR" not in os.environ:
        os.environ["PATRON_TESTBED_DIR"] = str(REPO / f".testbed-{worker}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in _FOLDER_MARKS:
            item.add_marker(getattr(pytest.mark, _FOLDER_MARKS[folder]))


@pytest.fixture(scope="session")
def scenario_end() -> float:
    """The scenarios' end: now, to the second, so the operator also sees the data as current."""
    return float(int(time.time()))


@pytest.fixture(scope="session")
def scenario_prometheus(tmp_path_factory: pytest.TempPathFactory, scenario_end: float) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("scenario-prometheus"))
    # An hour ahead: e2e tests that evaluate live keep current data however late in the run they come.
    server.load(openmetrics(SCENARIOS, scenario_end, ahead=HOUR))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def patron_crd(testbed: Any) -> str:
    """The CustomerSLO CRD from crds/, applied to the test bed and Established."""
    testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / "customerslo.yaml"))
    testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/customerslos.patron.dev")
    return "customerslos.patron.dev"
