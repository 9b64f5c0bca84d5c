"""The alertmanager role's config, as the role renders it, run by a real Alertmanager on the
controller: amtool accepts it, and an alert posted to Alertmanager reaches the lab sink's file.

Needs Debian's prometheus-alertmanager on the controller (not in requirements/apt.txt: the
package starts a daemon on install); molecule's `alertmanager` scenario and the lab's e2e
test run the same path on a monitor container.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "alertmanager"
ALERTMANAGER = shutil.which("prometheus-alertmanager")
AMTOOL = shutil.which("amtool")
pytestmark = pytest.mark.skipif(
    not (ALERTMANAGER and AMTOOL),
    reason="prometheus-alertmanager and amtool not on PATH (apt install prometheus-alertmanager)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def render(tmp_path: Path, **extra: object) -> Path:
    """roles/alertmanager/templates/alertmanager.yml.j2 through Ansible's own template module."""
    dest = tmp_path / "alertmanager.yml"
    defaults = (ROLE / "defaults" / "main.yml").read_text()
    role_vars = (ROLE / "vars" / "main.yml").read_text()
    (tmp_path / "vars.yml").write_text(defaults + role_vars.replace("---\n", "", 1))
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    res = subprocess.run(
        [str(Path(sys.executable).with_name("ansible")), "localhost", "-c", "local",
         "-m", "ansible.builtin.template",
         "-a", f"src={ROLE / 'templates' / 'alertmanager.yml.j2'} dest={dest}",
         "-e", f"@{tmp_path / 'vars.yml'}", "-e", f"@{tmp_path / 'extra.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    assert res.returncode == 0, res.stdout + res.stderr
    return dest


def test_without_a_receiver_the_config_is_valid_and_routes_nowhere(tmp_path: Path) -> None:
    config = render(tmp_path)
    res = subprocess.run([str(AMTOOL), "check-config", str(config)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "webhook_configs" not in config.read_text()


def test_an_alert_reaches_the_operator_webhook_and_the_lab_sink(tmp_path: Path) -> None:
    sink_port, op_port, am_port = free_port(), free_port(), free_port()
    config = render(tmp_path, alertmanager_lab_sink=True, alertmanager_lab_sink_port=sink_port,
                    alertmanager_webhook_url=f"http://127.0.0.1:{op_port}/alerts",
                    alertmanager_group_wait="1s", alertmanager_group_interval="5s")
    res = subprocess.run([str(AMTOOL), "check-config", str(config)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    sink_file, op_file = tmp_path / "lab" / "alerts.jsonl", tmp_path / "op" / "alerts.jsonl"
    sink = ROLE / "files" / "alert-sink.py"
    procs = [
        subprocess.Popen([sys.executable, str(sink), "--port", str(sink_port), "--file",
                          str(sink_file)]),
        # The operator's receiver, played by a second sink.
        subprocess.Popen([sys.executable, str(sink), "--port", str(op_port), "--file",
                          str(op_file)]),
        subprocess.Popen([str(ALERTMANAGER), f"--config.file={config}",
                          f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
                          f"--storage.path={tmp_path / 'data'}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        base = f"http://127.0.0.1:{am_port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "alertmanager did not start"
                time.sleep(0.2)
        alert = [{"labels": {"alertname": "MeshPartitioned", "node": "node03",
                             "severity": "critical"},
                  "annotations": {"summary": "node03 cannot reach the whole mesh"}}]
        req = urllib.request.Request(f"{base}/api/v2/alerts", data=json.dumps(alert).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).close()
        deadline = time.monotonic() + 30
        while not (sink_file.exists() and op_file.exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for f in (sink_file, op_file):
            (note,) = [json.loads(line) for line in f.read_text().splitlines()]
            assert note["receiver"] == "meshcore" and note["status"] == "firing"
            assert note["groupLabels"] == {"alertname": "MeshPartitioned", "node": "node03"}
            summary = note["alerts"][0]["annotations"]["summary"]
            assert summary == "node03 cannot reach the whole mesh"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
