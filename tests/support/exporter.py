"""A live per-customer traffic exporter whose traffic a test changes while Prometheus scrapes it.

`http_requests_total{service, customer, code}` counters (code 200 and 500) are the exact integral
of each customer's current request rate and error fraction over wall time, so a rate Prometheus
computes is the rate the test set. Register it with the test-bed Prometheus (file_sd, 1 s scrape)
with `register(targets_dir)`.

    with Exporter("checkout") as exporter:
        exporter.register(testbed.targets_dir)
        exporter.set("acme", rps=10)
        exporter.set("bigbot", rps=50, errors=0.5)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from tests.support.scenarios import escape_label


@dataclass
class _Traffic:
    rps: float = 0.0
    errors: float = 0.0
    ok_total: float = 0.0
    error_total: float = 0.0
    since: float = 0.0  # time.monotonic() up to which the totals are integrated

    def advance(self, now: float) -> None:
        dt = max(now - self.since, 0.0)
        self.ok_total += self.rps * (1 - self.errors) * dt
        self.error_total += self.rps * self.errors * dt
        self.since = now


class Exporter:
    def __init__(self, service: str, label: str = "customer", clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.label = label
        self.clock = clock
        self.customers: dict[str, _Traffic] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.target_file: Path | None = None

    def set(self, customer: str, rps: float, errors: float = 0.0) -> None:
        """From now on, `customer` sends `rps` requests per second, a fraction `errors` failing (5xx)."""
        if rps < 0 or not 0 <= errors <= 1:
            raise ValueError("rps must be >= 0 and errors in [0, 1]")
        now = self.clock()
        with self.lock:
            traffic = self.customers.setdefault(customer, _Traffic(since=now))
            traffic.advance(now)
            traffic.rps, traffic.errors = rps, errors

    def totals(self, customer: str) -> tuple[float, float]:
        """(ok, error) request counts of `customer` so far."""
        with self.lock:
            traffic = self.customers[customer]
            traffic.advance(self.clock())
            return traffic.ok_total, traffic.error_total

    def render(self) -> str:
        """The Prometheus text exposition of every counter, integrated up to now."""
        now = self.clock()
        lines = ["# TYPE http_requests_total counter"]
        with self.lock:
            for name, traffic in sorted(self.customers.items()):
                traffic.advance(now)
                base = f'service="{escape_label(self.service)}",{self.label}="{escape_label(name)}"'
                lines.append(f'http_requests_total{{{base},code="200"}} {traffic.ok_total:.6f}')
                lines.append(f'http_requests_total{{{base},code="500"}} {traffic.error_total:.6f}')
        return "\n".join(lines) + "\n"

    @property
    def address(self) -> str:
        assert self.server is not None, "start() first"
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Exporter:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="exporter").start()
        return self

    def register(self, targets_dir: Path, name: str | None = None, labels: dict[str, str] | None = None) -> Path:
        """Have the test-bed Prometheus scrape this exporter: a file_sd JSON file, written atomically.

        `labels`: target labels Prometheus adds to every series (e.g. {"namespace": ...}, as a
        Kubernetes service discovery relabelling would)."""
        path = targets_dir / f"{name or 'exporter-' + self.address.replace(':', '-')}.json"
        tmp = path.with_suffix(".tmp")
        target_labels = {"job": f"exporter-{self.service}", **(labels or {})}
        tmp.write_text(json.dumps([{"targets": [self.address], "labels": target_labels}]))
        tmp.rename(path)
        self.target_file = path
        return path

    def stop(self) -> None:
        if self.target_file is not None:
            self.target_file.unlink(missing_ok=True)
            self.target_file = None
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> Exporter:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
