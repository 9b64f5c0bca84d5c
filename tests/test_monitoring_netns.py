"""The monitoring path on real agents without the podman lab: four agents in
namespaces, node_exporters and a real Prometheus with the role's rules; every
dashboard panel's query, an alert going pending, and `labctl report`.

Slow (about a minute; `make test-full`): root, iproute2, prometheus and
prometheus-node-exporter (requirements/apt.txt) are needed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dashboard_spec import base_title, panels
from meshcore_testkit.marks import requires_root
from meshcore_testkit.monitoring import NODE_EXPORTER, PROMETHEUS, MonitoredMesh, wait_until
from meshcore_tools.lab import prometheus
from test_dashboard_lab import check_panel

pytestmark = [
    pytest.mark.slow,
    requires_root,
    pytest.mark.skipif(not (Path(PROMETHEUS).exists() and Path(NODE_EXPORTER).exists()),
                       reason="needs Debian's prometheus and prometheus-node-exporter"),
]
PANELS = panels()
CUTS = 2


def value(url: str, expr: str) -> float | None:
    return prometheus.instant(url, expr, timeout=5)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitoredMesh]:
    m = MonitoredMesh(tmp_path_factory.mktemp("monitored-mesh"))
    try:
        m.start()

        def routed() -> bool:
            try:
                return value(m.url, "meshcore:reachability:ratio") == 1.0 and \
                    value(m.url, "meshcore:node_up:ratio") == 1.0
            except OSError:
                return False

        assert wait_until(routed, 120), f"mesh not routed/scraped: see {m.base}"
        # Carrier cuts of n0's link to n1: both ends fail over to their backups.
        for _ in range(CUTS):
            m.cut(0, "mesh0", up=False)
            time.sleep(3)
            m.cut(0, "mesh0", up=True)
            time.sleep(5)
        time.sleep(6)  # one more scrape and rule evaluation
        yield m
    finally:
        m.stop()


@pytest.mark.parametrize("panel", PANELS, ids=[base_title(p) for p in PANELS])
def test_panel_returns_data_on_real_agents(mesh: MonitoredMesh, panel: dict[str, Any]) -> None:
    check_panel(mesh.url, panel)


def test_failovers_counted_with_finite_quantiles(mesh: MonitoredMesh) -> None:
    total = value(mesh.url, 'sum(meshcore_failovers_total{job="mesh_agent"})')
    assert total is not None and total >= 2 * CUTS
    p95 = value(mesh.url, 'meshcore:failover_duration_seconds:quantile_rate1h{quantile="0.95"}')
    assert p95 is not None and math.isfinite(p95) and 0 < p95 < 0.5


def test_certificate_alert_pending_only_where_a_renewal_was_missed(
        mesh: MonitoredMesh) -> None:
    """The test CA issues day-long certificates, as SPIRE's default SVIDs: fresh ones
    raise nothing (the 7-day rule alerted on all of them, always). n0's is re-issued
    20 hours into a 24-hour life, a rotation missed: only n0 alerts."""
    pki = mesh.base / "n0" / "pki"
    key = serialization.load_pem_private_key((pki / "node.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    _, cert = mesh.ca.issue("n0", key=key, addresses=[mesh.mesh.nodes[0].address],
                            days=4 / 24, not_before=now - dt.timedelta(hours=20))
    expiry = cert.not_valid_after_utc.timestamp()
    (pki / "node.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def scraped() -> bool:
        got = value(mesh.url, 'meshcore_identity_cert_expiry_timestamp_seconds{node="n0"}')
        return got is not None and abs(got - expiry) < 1

    assert wait_until(scraped, 60), "n0's new certificate never reached Prometheus"

    def alerting() -> list[dict[str, Any]]:
        return list(prometheus.api(
            mesh.url, "query",
            query='ALERTS{alertname="MeshCertificateNearExpiry"}')["result"])

    assert wait_until(lambda: bool(alerting()), 30), "no alert for n0's late certificate"
    time.sleep(6)  # another rule evaluation: nobody else joins
    result = alerting()
    assert [r["metric"]["node"] for r in result] == ["n0"]
    assert result[0]["metric"]["alertstate"] == "pending"


def test_lab_report_writes_snapshot_plot_and_json(mesh: MonitoredMesh, tmp_path: Path) -> None:
    png, out = tmp_path / "report.png", tmp_path / "report.json"
    res = subprocess.run(
        [sys.executable, "-m", "meshcore_tools.lab", "report", "--prometheus",
         mesh.url, "--minutes", "5", "--png", str(png), "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pairs routed" in res.stdout and "100.0%" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = json.loads(out.read_text())
    snapshot = {row["name"]: row["value"] for row in report["snapshot"]}
    assert snapshot["pairs routed"] == 1.0
    assert snapshot["failovers since agent start"] >= 2 * CUTS
    assert len(report["series"]["pairs routed"]) > 3
    assert report["series"]["failovers since agent start"][-1][1] >= 2 * CUTS
