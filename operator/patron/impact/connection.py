"""How Patron connects to Prometheus and Alertmanager: CA file, bearer-token file, basic auth from a
file, extra headers (e.g. X-Scope-OrgID for Mimir or Cortex). Secrets live in files (mounted
Secrets), never in a CustomerSLO; files are read at every request, so a rotated token is used at once.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from pathlib import Path


class ConnectionOptionError(ValueError):
    """A connection option that cannot be used; the message names the flag."""


def parse_header(text: str) -> tuple[str, str]:
    """'Name: value' -> (Name, value)."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n") or "\n" in value or "\r" in value:
        raise ConnectionOptionError(f"header {text!r} must be 'Name: value' (one line, no spaces in the name)")
    return name.strip(), value.strip()


@dataclass(frozen=True)
class Connection:
    """`flag` names the option family in messages (`--prometheus`, `--alertmanager`)."""

    flag: str = "--prometheus"
    ca_file: str | None = None
    bearer_token_file: str | None = None
    basic_auth_file: str | None = None  # one line "user:password"
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.bearer_token_file and self.basic_auth_file:
            raise ConnectionOptionError(
                f"{self.flag}-bearer-token-file and {self.flag}-basic-auth-file exclude each other"
            )
        for option, path in (("ca-file", self.ca_file), *self._secret_files()):
            if path and not Path(path).is_file():
                raise ConnectionOptionError(f"{self.flag}-{option}: {path} is not a readable file")
        self.request_headers()  # fail at start-up, not at the first query

    def _secret_files(self) -> tuple[tuple[str, str | None], ...]:
        return (("bearer-token-file", self.bearer_token_file), ("basic-auth-file", self.basic_auth_file))

    def request_headers(self) -> dict[str, str]:
        """The extra headers plus Authorization, read from the files now."""
        out = dict(self.headers)
        if self.bearer_token_file:
            token = Path(self.bearer_token_file).read_text().strip()
            if not token:
                raise ConnectionOptionError(f"{self.flag}-bearer-token-file: {self.bearer_token_file} is empty")
            out["Authorization"] = f"Bearer {token}"
        if self.basic_auth_file:
            user, sep, password = Path(self.basic_auth_file).read_text().strip().partition(":")
            if not sep or not user:
                raise ConnectionOptionError(
                    f"{self.flag}-basic-auth-file: {self.basic_auth_file} must hold user:password"
                )
            out["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return out

    def verify(self) -> str | bool:
        """For requests: the CA bundle, else the system's."""
        return self.ca_file or True

    def ssl_context(self) -> ssl.SSLContext:
        """For aiohttp: the system's trust store, or only the CA file."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
