"""A small monitored mesh in network namespaces: real agents, node_exporters and a
real Prometheus loaded with the prometheus role's rule files.

The lab (podman, 10+ nodes) is the reference; this is the same monitoring path on
four agents, cheap enough to run where the full lab is not up. Each namespace
gets a management veth to the host (``eth0`` inside, which the agent never
uses as a mesh interface); Prometheus runs on the host and scrapes through it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "files" / "mesh_agent" / "tests"))
from netns_util import add_ns, del_ns, ip, sh  # noqa: E402
from pki import CA  # noqa: E402

RULES = ROOT / "roles" / "prometheus" / "files" / "rules"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MonitoredMesh:
    """Nodes n0..n{N-1} wired by ``edges``; ``prefix`` names every namespace and veth."""

    base: Path
    n: int = 4
    edges: list[tuple[int, int]] = field(default_factory=lambda: [(0, 1), (1, 2), (2, 3),
                                                                   (3, 0), (0, 2)])
    prefix: str = "mcmon"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""

    @property
    def namespaces(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.n)]

    def start(self) -> None:
        del_ns(*self.namespaces)
        for i, ns in enumerate(self.namespaces):
            add_ns(ns, f"10.77.200.{i + 1}")
        count = [0] * self.n
        for link, (a, b) in enumerate(self.edges):
            ia, ib = f"mesh{count[a]}", f"mesh{count[b]}"
            count[a] += 1
            count[b] += 1
            na, nb = self.namespaces[a], self.namespaces[b]
            ta, tb = f"{self.prefix}a{link}", f"{self.prefix}b{link}"
            sh("ip", "link", "add", ta, "netns", na, "type", "veth", "peer", "name", tb,
               "netns", nb)
            ip(na, "link", "set", ta, "name", ia)
            ip(nb, "link", "set", tb, "name", ib)
            ip(na, "addr", "add", f"10.96.{link}.0/31", "dev", ia)
            ip(nb, "addr", "add", f"10.96.{link}.1/31", "dev", ib)
            ip(na, "link", "set", ia, "up")
            ip(nb, "link", "set", ib, "up")
        ca = CA.create()
        jobs: dict[str, list[tuple[str, str]]] = {"mesh_agent": [], "node_exporter": []}
        for i, ns in enumerate(self.namespaces):
            host_if, mgmt = f"{self.prefix}h{i}", f"10.204.{i}"
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", f"{self.prefix}x{i}",
               "netns", ns)
            ip(ns, "link", "set", f"{self.prefix}x{i}", "name", "eth0")
            sh("ip", "addr", "add", f"{mgmt}.0/31", "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
            ip(ns, "addr", "add", f"{mgmt}.1/31", "dev", "eth0")
            ip(ns, "link", "set", "eth0", "up")
            d = self.base / f"n{i}"
            cfg = d / "agent.yml"
            pki = ca.write(d / "pki", f"n{i}", f"10.77.200.{i + 1}")
            cfg.write_text(json.dumps({
                "node_name": f"n{i}", "node_address": f"10.77.200.{i + 1}", "mode": "enforce",
                "hello_interval_ms": 50, "dead_multiplier": 3,
                # Loopback and the management address, as the role configures it.
                "api_listen": ["127.0.0.1:9105", f"{mgmt}.1:9105"],
                "identity": pki, "state_dir": str(d), "route_protocol": 77,
            }))
            self._spawn(d / "agent.log", "ip", "netns", "exec", ns, sys.executable, "-m",
                        "mesh_agent", "run", "--config", str(cfg))
            self._spawn(d / "node_exporter.log", "ip", "netns", "exec", ns, NODE_EXPORTER,
                        "--web.listen-address=0.0.0.0:9100", "--collector.disable-defaults",
                        "--collector.loadavg")
            jobs["mesh_agent"].append((f"n{i}", f"{mgmt}.1:9105"))
            jobs["node_exporter"].append((f"n{i}", f"{mgmt}.1:9100"))
        # The same shape as the prometheus role's template: node=<name> on every target.
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [str(RULES / "*.yml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [
                    {"targets": [addr], "labels": {"node": node}} for node, addr in targets]}
                for job, targets in jobs.items()
            ],
        }
        (self.base / "prometheus.yml").write_text(json.dumps(config))
        port = free_port()
        self._spawn(self.base / "prometheus.log", PROMETHEUS,
                    f"--config.file={self.base / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.base / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}")
        self.url = f"http://127.0.0.1:{port}"

    def _spawn(self, log: Path, *argv: str) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.procs.append(subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT))

    def cut(self, node: int, ifname: str, up: bool) -> None:
        ip(self.namespaces[node], "link", "set", ifname, "up" if up else "down")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        # Deleting a namespace deletes its veths, and with them the host-side peers.
        del_ns(*self.namespaces)


def wait_until(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(pred) and pred():
            return True
        time.sleep(1)
    return False
