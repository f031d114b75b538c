"""`patron run` as a real process against the test bed (standalone Kopf), for e2e tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.promserver import free_port, start_logged


@dataclass
class OperatorProcess:
    kubeconfig: Path
    prometheus_url: str
    namespaces: Sequence[str]
    log_path: Path
    alertmanager_urls: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    metrics_port: int = 0

    def start(self) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        cmd = [
            sys.executable, "-m", "patron.cli", "run",
            "--prometheus-url", self.prometheus_url,
            "--metrics-port", str(self.metrics_port),
            "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
            *(f"--namespace={ns}" for ns in self.namespaces),
            *(f"--alertmanager-url={url}" for url in self.alertmanager_urls),
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        health = f"http://127.0.0.1:{self.health_port}/healthz"
        self.process = start_logged(cmd, self.log_path, health, "patron run", env)

    def metrics(self) -> str:
        """The process's own /metrics page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def evaluated(self) -> set[tuple[str, str]]:
        """(namespace, name) of every CustomerSLO this process has evaluated, from its own metrics."""
        out = set()
        for line in self.metrics().splitlines():
            if line.startswith("patron_last_evaluation_timestamp_seconds{"):
                labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
                out.add((labels["namespace"].strip('"'), labels["customerslo"].strip('"')))
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crashed pod."""
        self.stop(signal.SIGKILL)


@contextmanager
def running_operator(**kwargs: object) -> Iterator[OperatorProcess]:
    op = OperatorProcess(**kwargs)  # type: ignore[arg-type]
    op.start()
    try:
        yield op
    finally:
        op.stop()
