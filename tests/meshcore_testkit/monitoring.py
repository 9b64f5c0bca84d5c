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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshcore_tools import ROOT, netns

from meshcore_testkit.agents import API_PORT, AgentMesh
from meshcore_testkit.pki import CA

RULES = ROOT / "roles" / "prometheus" / "files" / "rules"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MonitoredMesh:
    """Agents n0..n{n-1} wired by ``edges``, each scraped over its management link."""

    base: Path
    n: int = 4
    edges: list[tuple[int, int]] = field(default_factory=lambda: [(0, 1), (1, 2), (2, 3),
                                                                   (3, 0), (0, 2)])
    prefix: str = "mcmon"
    url: str = ""
    # The CA that signs the agents' certificates (a fresh one by default), so a test can
    # re-issue a node's certificate while it runs.
    ca: CA = field(default_factory=CA.create)

    def __post_init__(self) -> None:
        self.mesh = AgentMesh(self.n, self.edges, self.base, prefix=self.prefix, ca=self.ca)

    @property
    def namespaces(self) -> list[str]:
        return self.mesh.namespaces

    def start(self) -> None:
        lab = self.mesh.lab
        lab.up()
        jobs: dict[str, list[tuple[str, str]]] = {"mesh_agent": [], "node_exporter": []}
        listen: dict[str, dict[str, object]] = {}
        for node in self.mesh.nodes:
            # Host side <tag>h<i>: the namespace's tag keeps parallel runs apart.
            mgmt = f"10.204.{node.index}"
            netns.host_veth(node.ns, "eth0", f"{lab.tag}h{node.index}"[-15:], f"{mgmt}.1/31",
                            f"{mgmt}.0/31")
            # Loopback and the management address, as the role configures it.
            listen[node.name] = {"api_listen": [f"127.0.0.1:{API_PORT}", f"{mgmt}.1:{API_PORT}"]}
            lab.spawn(node.name, [NODE_EXPORTER, "--web.listen-address=0.0.0.0:9100",
                                  "--collector.disable-defaults", "--collector.loadavg"],
                      self.base / node.name / "node_exporter.log")
            jobs["mesh_agent"].append((node.name, f"{mgmt}.1:{API_PORT}"))
            jobs["node_exporter"].append((node.name, f"{mgmt}.1:9100"))
        self.mesh.start_agents(overrides=listen)
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
        lab.spawn_argv([PROMETHEUS, f"--config.file={self.base / 'prometheus.yml'}",
                        f"--storage.tsdb.path={self.base / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}"],
                       self.base / "prometheus.log")
        self.url = f"http://127.0.0.1:{port}"

    def cut(self, node: int, ifname: str, up: bool) -> None:
        netns.ip(self.namespaces[node], "link", "set", ifname, "up" if up else "down")

    def stop(self) -> None:
        # Deleting a namespace deletes its veths, and with them the host-side peers.
        self.mesh.destroy()


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(1)
    return False
