"""The lab's alert receiver (roles/alertmanager/files/alert-sink.py), run as its unit runs it:
Alertmanager's webhook POSTs appended to a file as JSON lines, anything else refused."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SINK = ROOT / "roles" / "alertmanager" / "files" / "alert-sink.py"

# What Alertmanager 0.25 POSTs to a webhook_config (version 4), trimmed.
NOTIFICATION = {
    "version": "4", "status": "firing", "receiver": "meshcore",
    "groupLabels": {"alertname": "MeshPartitioned", "node": "node03"},
    "commonLabels": {"alertname": "MeshPartitioned", "node": "node03", "severity": "critical"},
    "alerts": [{"status": "firing",
                "labels": {"alertname": "MeshPartitioned", "node": "node03",
                           "severity": "critical"},
                "annotations": {"summary": "node03 cannot reach the whole mesh"},
                "startsAt": "2026-12-04T10:00:00Z"}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Sink:
    def __init__(self, port: int, file: Path) -> None:
        self.url, self.file = f"http://127.0.0.1:{port}", file

    def post(self, path: str, body: bytes) -> int:
        req = urllib.request.Request(self.url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.file.read_text().splitlines()]


def start(tmp_path: Path, *extra: str) -> Iterator[Sink]:
    port, file = free_port(), tmp_path / "state" / "alerts.jsonl"
    proc = subprocess.Popen([sys.executable, str(SINK), "--port", str(port), "--file", str(file),
                             *extra])
    sink = Sink(port, file)
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(sink.url + "/healthz", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the sink did not start")
            time.sleep(0.05)
    try:
        yield sink
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    yield from start(tmp_path)


def test_a_notification_becomes_one_json_line(sink: Sink) -> None:
    assert sink.post("/alerts", json.dumps(NOTIFICATION).encode()) == 200
    assert sink.post("/alerts", json.dumps({**NOTIFICATION, "status": "resolved"}).encode()) == 200
    first, second = sink.lines()
    assert first["alerts"][0]["labels"]["node"] == "node03" and first["status"] == "firing"
    assert second["status"] == "resolved"
    assert abs(first["received_at"] - time.time()) < 60


def test_anything_else_is_refused_and_not_written(sink: Sink) -> None:
    assert sink.post("/other", b"{}") == 404
    assert sink.post("/alerts", b"not json") == 400
    assert not sink.file.exists()


def test_the_file_is_bounded(tmp_path: Path) -> None:
    for s in start(tmp_path, "--max-bytes", "2000"):
        for _ in range(12):
            assert s.post("/alerts", json.dumps(NOTIFICATION).encode()) == 200
        rotated = s.file.with_name(s.file.name + ".1")
        assert rotated.exists() and s.file.stat().st_size <= 2000
        assert rotated.stat().st_size <= 2000
        assert len(s.lines()) + len(rotated.read_text().splitlines()) < 12  # oldest dropped
