"""Thanos components (sidecar, query, rule) as loopback processes, from the `thanos` binary that
hack/tools.sh builds (docs/testbed.md)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.promserver import free_port, start_logged, terminate


@dataclass
class ThanosComponent:
    """`thanos COMPONENT --http-address=... --grpc-address=... ARGS...`, its output in WORKDIR/COMPONENT.log."""

    binary: Path
    component: str  # sidecar | query | rule
    workdir: Path
    args: Sequence[str] = ()
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """Its Store API (gRPC), what Thanos Query's --endpoint names."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.component}.log"

    def start(self) -> None:
        cmd = [
            str(self.binary),
            self.component,
            f"--http-address=127.0.0.1:{self.http_port}",
            f"--grpc-address={self.grpc_address}",
            *self.args,
        ]
        self.process = start_logged(cmd, self.log_path, f"{self.url}/-/ready", f"thanos {self.component}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        terminate(self.process)
        self.process = None
