"""A real Prometheus (Debian package) on a loopback port, serving a backfilled scenario."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, timeout: float = 60.0, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.2)


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    """SIGTERM a process this test started, SIGKILL when it is still there after `timeout` s."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_logged(
    cmd: list[str], log_path: Path, ready_url: str, what: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `cmd` with its stdout and stderr appended to `log_path`, then wait until `ready_url`
    answers; when it does not within 60 s, stop the process and raise with the log's tail."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(ready_url, timeout=60)
    except TimeoutError:
        terminate(process)
        raise RuntimeError(f"{what} did not become ready:\n{log_path.read_text(errors='replace')[-4000:]}") from None
    return process


@dataclass
class PrometheusServer:
    """`promtool tsdb create-blocks-from openmetrics`, then a Prometheus on that data dir."""

    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # Prometheus' --web.config.file (TLS, basic auth), with what a client then needs to get in.
    web_config: Path | None = None
    ca_file: Path | None = None
    auth_headers: dict[str, str] | None = None
    extra_args: tuple[str, ...] = ()
    # prometheus.yml (global, scrape_configs, rule_files); default: nothing scraped, 15 s interval.
    config: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    def load(self, openmetrics_text: str) -> None:
        source = self.workdir / "scenario.om"
        source.write_text(openmetrics_text)
        self.load_file(source)

    def load_file(self, source: Path) -> None:
        """Backfill an OpenMetrics file into the data dir, then remove it."""
        data = self.workdir / "data"
        subprocess.run(
            [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
            check=True,
            capture_output=True,
        )
        source.unlink()

    def backfill_patron_rules(self, rule_files: Iterable[dict[str, Any]], start: float, end: float) -> None:
        """Backfill Patron's rule files (`patron.impact.rules.rule_file`) over [start, end]: level k
        holds the k-th pair of rules of each file (a window's total and bad rules, in the order they
        chain: level 0, the windows, the budget), each under its own group's interval."""
        levels: dict[int, list[dict[str, Any]]] = {}
        for rule_file in rule_files:
            groups = rule_file["groups"]
            pairs = [(g, g["rules"][i : i + 2], i // 2) for g in groups for i in range(0, len(g["rules"]), 2)]
            for level, (group, rules, i) in enumerate(pairs):
                levels.setdefault(level, []).append({**group, "name": f"{group['name']}:{i}", "rules": rules})
        paths = []
        for level, groups in sorted(levels.items()):
            path = self.workdir / f"rules-level{level}.yaml"
            path.write_text(yaml.safe_dump({"groups": groups}, allow_unicode=True))
            paths.append(path)
        self.backfill_rules(paths, start, end)

    def backfill_rules(self, levels: list[Path], start: float, end: float) -> None:
        """Evaluate recording rules over [start, end] into blocks (`promtool tsdb create-blocks-from
        rules`), one rule file per level in order: a level reads the one before it, so Prometheus
        restarts on the new blocks between levels."""
        for level in levels:
            out = self.workdir / "backfill"
            done = subprocess.run(
                [
                    PROMTOOL,
                    "tsdb",
                    "create-blocks-from",
                    "rules",
                    f"--url={self.url}",
                    f"--start={start:.0f}",
                    f"--end={end:.0f}",
                    f"--output-dir={out}",
                    "--quiet",
                    str(level),
                ],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"promtool backfill of {level.name} failed: {done.stderr[-2000:]}")
            self.stop()
            for block in out.iterdir():
                block.rename(self.workdir / "data" / block.name)
            self.start()

    def start(self) -> None:
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config or {"global": {"scrape_interval": "15s"}, "scrape_configs": []}))
        self.port = self.port or free_port()
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=30d",
                "--query.lookback-delta=5m",
                *([f"--web.config.file={self.web_config}"] if self.web_config else []),
                *self.extra_args,
            ],
            stdout=log,
            stderr=log,
        )
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        wait_http(f"{self.url}/-/ready", headers=self.auth_headers, context=context)

    def stop(self) -> None:
        terminate(self.process)
        self.process = None
