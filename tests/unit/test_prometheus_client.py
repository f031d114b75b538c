"""The Prometheus adapter's reading of an answer, against a loopback HTTP server that answers as
Thanos Query does when a store is missing (HTTP 200, data, and the store's error in `warnings`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from patron.impact.assess import DataProblem
from patron.impact.prometheus import Prometheus

pytestmark = pytest.mark.unit
SAMPLE = {"metric": {"customer": "acme"}, "value": [1764676800, "1"]}


@pytest.fixture
def answering() -> Iterator[tuple[str, dict[str, object]]]:
    """A server answering every query with the envelope in the returned dict (edit it per test)."""
    envelope: dict[str, object] = {"status": "success", "data": {"resultType": "vector", "result": [SAMPLE]}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(envelope).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", envelope
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_with_warnings_is_partial_data_not_an_answer(answering: tuple[str, dict[str, object]]) -> None:
    """Regression: Thanos Query v0.41 answers HTTP 200 with a missing store's error in `warnings`
    (even with partial_response=false); the adapter used to return the data as if it were whole."""
    url, envelope = answering
    prometheus = Prometheus(url, timeout=5)
    assert prometheus.query("sum(x)") == [({"customer": "acme"}, 1.0)]
    envelope["warnings"] = ["receive series from Addr: 127.0.0.1:10901 ... rpc error: code = Unavailable"]
    with pytest.raises(DataProblem) as problem:
        prometheus.query("sum(x)")
    assert problem.value.reason == "PartialData"
    assert "127.0.0.1:10901" in problem.value.message


def test_infos_are_not_warnings(answering: tuple[str, dict[str, object]]) -> None:
    """Info-level annotations ("metric might not be a counter") may be false positives: not partial."""
    url, envelope = answering
    envelope["infos"] = ['PromQL info: metric might not be a counter, name does not end in _total: "x"']
    assert Prometheus(url, timeout=5).query("sum(x)") == [({"customer": "acme"}, 1.0)]
