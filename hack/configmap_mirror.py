#!/usr/bin/env python3
"""Mirrors one ConfigMap into a directory exactly as the kubelet mounts a ConfigMap volume
(standard library only). kwok runs no kubelet, so the test bed's ratelimit service reads its
runtime config from this mirror, with the layout it meets in a real Pod:

    DIR/..2026_12_02_11_57_00.123456789/KEY   the data of one version (a timestamped directory)
    DIR/..data -> ..2026_12_02_11_57_00.123456789
    DIR/KEY -> ..data/KEY                     one link per key

An update writes a new timestamped directory, points a temporary link at it and renames that link
over `..data` (the one atomic step, as the kubelet's AtomicWriter does), then adds and removes the
per-key links and deletes the old directory. A missing ConfigMap mirrors as empty (an `optional`
volume). The ConfigMap is watched (list, then watch from its resourceVersion; re-listed on any
error or expiry).

    python3 hack/configmap_mirror.py --server https://127.0.0.1:6443 --token-file T --ca-file CA \\
        --config-map NAMESPACE/NAME --dir DIR
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("configmap-mirror")
DATA = "..data"
WATCH_SECONDS = 60


def write_atomically(target: Path, data: Mapping[str, str]) -> bool:
    """Make `target` hold exactly `data` in the kubelet's layout; False when it already did."""
    target.mkdir(parents=True, exist_ok=True)
    current = target / DATA
    old = current.resolve() if current.is_symlink() else None
    if old is not None and _read_dir(old) == dict(data):
        return False
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    new = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    new.chmod(0o755)
    for key, value in data.items():
        (new / key).write_text(value, encoding="utf-8")
        (new / key).chmod(0o644)
    tmp_link = target / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(new.name)
    os.replace(tmp_link, current)
    for key in data:
        link = target / key
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{key}")
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in data:
            entry.unlink()
    if old is not None and old.parent == target:
        shutil.rmtree(old, ignore_errors=True)
    return True


def _read_dir(path: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in path.iterdir() if p.is_file()}


class Api:
    def __init__(self, server: str, token: str, ca_file: str) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_file)

    def get(self, path: str, timeout: float) -> Any:
        with self._open(path, timeout) as response:
            return json.load(response)

    def stream(self, path: str, timeout: float) -> Iterator[dict[str, Any]]:
        """The events of a watch, one JSON object per line."""
        with self._open(path, timeout) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)

    def _open(self, path: str, timeout: float) -> Any:
        request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        return urllib.request.urlopen(request, timeout=timeout, context=self.context)


def mirror(api: Api, namespace: str, name: str, target: Path) -> None:
    """List, mirror, watch; returns when the watch ends (expiry or error) so the caller lists again."""
    base = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/configmaps"
    selector = f"metadata.name={name}"
    listed = api.get(f"{base}?{urllib.parse.urlencode({'fieldSelector': selector})}", timeout=10)
    apply(target, listed["items"][0] if listed["items"] else None)
    query = urllib.parse.urlencode(
        {
            "watch": "1",
            "fieldSelector": selector,
            "resourceVersion": listed["metadata"]["resourceVersion"],
            "timeoutSeconds": str(WATCH_SECONDS),
        }
    )
    for event in api.stream(f"{base}?{query}", timeout=WATCH_SECONDS + 10):
        kind = event.get("type")
        if kind in ("ADDED", "MODIFIED"):
            apply(target, event["object"])
        elif kind == "DELETED":
            apply(target, None)
        elif kind == "ERROR":
            log.info("watch ended: %s", event.get("object", {}).get("message"))
            return


def apply(target: Path, obj: Mapping[str, Any] | None) -> None:
    data = dict((obj or {}).get("data") or {})
    if write_atomically(target, data):
        version = (obj or {}).get("metadata", {}).get("resourceVersion", "-")
        log.info("mirrored resourceVersion %s: keys %s", version, sorted(data) or "none")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--token-file", required=True, help="a bearer token, or a --token-auth-file")
    p.add_argument("--ca-file", required=True)
    p.add_argument("--config-map", required=True, help="NAMESPACE/NAME")
    p.add_argument("--dir", required=True, type=Path, help="the mount point to mirror into")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespace, sep, name = args.config_map.partition("/")
    if not sep or not namespace or not name:
        raise SystemExit(f"error: --config-map must be NAMESPACE/NAME, got {args.config_map!r}")
    # A bare token, or the API server's --token-auth-file (TOKEN,user,uid,groups: its first field).
    token = Path(args.token_file).read_text(encoding="utf-8").splitlines()[0].split(",")[0].strip()
    api = Api(args.server, token, args.ca_file)
    log.info("mirroring ConfigMap %s/%s into %s", namespace, name, args.dir)
    while True:
        try:
            mirror(api, namespace, name, args.dir)
        except (OSError, ValueError, KeyError, http.client.HTTPException) as err:  # e.g. the API server restarted
            log.warning("%s; listing again in 1 s", err)
            time.sleep(1)
        except Exception:  # a mirror that dies leaves the service on stale limits: log it and go on
            log.exception("unexpected error; listing again in 1 s")
            time.sleep(1)


if __name__ == "__main__":
    main()
