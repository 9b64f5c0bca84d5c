#!/usr/bin/python3
"""The lab's alert receiver: Alertmanager's webhook POSTs, appended to a file.

Each POST to /alerts (Alertmanager's webhook JSON: status, receiver, groupLabels,
alerts with their labels, annotations and startsAt) is appended as one JSON line,
with the time it arrived, to --file. A test or an operator reads that file:

    tail -f /var/lib/meshcore-alert-sink/alerts.jsonl | jq -c '.alerts[].labels'

Bounded: when the file passes --max-bytes it is renamed to <file>.1 (the previous
.1 is dropped) and a new one started. Listens on loopback only; stdlib only, so it
runs with the host's python3. Installed by roles/alertmanager (alertmanager_lab_sink).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Lock

MAX_BODY = 1 << 20  # Alertmanager sends up to max_alerts per POST; 1 MiB is plenty


def make_handler(path: Path, max_bytes: int) -> type[BaseHTTPRequestHandler]:
    lock = Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/alerts" or not 0 < length <= MAX_BODY:
                self.send_error(404 if self.path != "/alerts" else 413)
                return
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self.send_error(400, "not JSON")
                return
            line = json.dumps({"received_at": time.time(), **body}, sort_keys=True) + "\n"
            with lock:
                if path.exists() and path.stat().st_size + len(line) > max_bytes:
                    os.replace(path, path.with_name(path.name + ".1"))
                with path.open("a") as f:
                    f.write(line)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            ok = self.path == "/healthz"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # the file is the log

    return Handler


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=9097)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--max-bytes", type=int, default=10 << 20)
    args = p.parse_args(argv)
    args.file.parent.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((args.address, args.port), make_handler(args.file, args.max_bytes))
    server.serve_forever()


if __name__ == "__main__":
    main()
