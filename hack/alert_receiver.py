#!/usr/bin/env python3
"""Alertmanager webhook receiver for the local test bed (standard library only).

Every POSTed body (Alertmanager's webhook payload) is appended as one JSON line to the log file.
GET / answers the logged payloads as one JSON array; DELETE / empties the log.

    python3 hack/alert_receiver.py --port 9095 --log .testbed/alerts.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Receiver(BaseHTTPRequestHandler):
    server_version = "patron-alert-receiver/1"
    log_path: Path
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(body)
        except ValueError:
            self._reply(400, {"error": "body is not JSON"})
            return
        with self.lock, self.log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(payload, separators=(",", ":")) + "\n")
        self._reply(200, {"status": "ok"})

    def do_GET(self) -> None:
        with self.lock:
            text = self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""
        self._reply(200, [json.loads(line) for line in text.splitlines() if line.strip()])

    def do_DELETE(self) -> None:
        with self.lock:
            self.log_path.write_text("", encoding="utf-8")
        self._reply(200, {"status": "ok"})

    def _reply(self, code: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="JSON-lines file to append to")
    args = parser.parse_args()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.touch()
    Receiver.log_path = args.log
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"alert receiver on http://{args.host}:{args.port}/ logging to {args.log}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
