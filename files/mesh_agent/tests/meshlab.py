"""A small lab of real agents in network namespaces, for the integration tests."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netns_util import add_ns, del_ns, ip, sh
from pki import CA

PROTO = 77


@dataclass
class Node:
    index: int
    ns: str
    address: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Mesh:
    """Nodes n0..n{N-1}; edge i gets 10.98.i.0/31 (a side) and .1 (b side)."""

    n: int
    edges: list[tuple[int, int]]
    base: Path
    prefix: str = "mai"
    hello_interval_ms: int = 50
    dead_multiplier: int = 3
    echo: bool = True  # kernel echo probes (link.echo)
    idle: frozenset[int] = frozenset()  # nodes without an agent (an attacker's namespace)
    nodes: list[Node] = field(default_factory=list)
    ifname: dict[tuple[int, int], str] = field(default_factory=dict)  # (node, peer) -> ifname

    def __post_init__(self) -> None:
        tag = f"{self.prefix}{os.getpid() % 100000}"
        self.tag = tag
        self.nodes = [
            Node(i, f"{tag}n{i}", f"10.77.0.{i + 1}", self.base / f"n{i}" / "agent.log")
            for i in range(self.n)
        ]

    @property
    def namespaces(self) -> list[str]:
        return [n.ns for n in self.nodes]

    def build(self, ca: CA) -> None:
        del_ns(*self.namespaces)
        for node in self.nodes:
            add_ns(node.ns, node.address)
        count = [0] * self.n
        for link, (a, b) in enumerate(self.edges):
            ia, ib = f"mesh{count[a]}", f"mesh{count[b]}"
            count[a] += 1
            count[b] += 1
            self.ifname[(a, b)], self.ifname[(b, a)] = ia, ib
            ta, tb = f"t{self.tag}a{link}"[-15:], f"t{self.tag}b{link}"[-15:]
            ns_a, ns_b = self.nodes[a].ns, self.nodes[b].ns
            sh(
                "ip",
                "link",
                "add",
                ta,
                "netns",
                ns_a,
                "type",
                "veth",
                "peer",
                "name",
                tb,
                "netns",
                ns_b,
            )
            ip(ns_a, "link", "set", ta, "name", ia)
            ip(ns_b, "link", "set", tb, "name", ib)
            ip(ns_a, "addr", "add", f"10.98.{link}.0/31", "dev", ia)
            ip(ns_b, "addr", "add", f"10.98.{link}.1/31", "dev", ib)
            ip(ns_a, "link", "set", ia, "up")
            ip(ns_b, "link", "set", ib, "up")
        for node in self.nodes:
            if node.index in self.idle:
                continue
            d = self.base / f"n{node.index}"
            pki = ca.write(d / "pki", f"n{node.index}", node.address)
            cfg = d / "agent.yml"
            cfg.write_text(
                json.dumps(
                    {
                        "node_name": f"n{node.index}",
                        "node_address": node.address,
                        "mode": "enforce",
                        "hello_interval_ms": self.hello_interval_ms,
                        "dead_multiplier": self.dead_multiplier,
                        "api_listen": "127.0.0.1:9105",
                        "identity": pki,
                        "state_dir": str(d),
                        "route_protocol": PROTO,
                        "link": {"echo": self.echo},
                    }
                )
            )
            # MESHCORE_AGENT_PYTHONPATH runs another build of the agent (an
            # older tree's files/mesh_agent) under the same tests.
            env = dict(os.environ)
            if os.environ.get("MESHCORE_AGENT_PYTHONPATH"):
                env["PYTHONPATH"] = os.environ["MESHCORE_AGENT_PYTHONPATH"]
            node.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    node.ns,
                    sys.executable,
                    "-m",
                    "mesh_agent",
                    "run",
                    "--config",
                    str(cfg),
                ],
                stdout=node.log.open("wb"),
                stderr=subprocess.STDOUT,
                preexec_fn=_unit_limits,
                env=env,
            )

    def stop(self) -> list[int | None]:
        codes: list[int | None] = []
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is None:
                codes.append(None)
                continue
            try:
                codes.append(node.proc.wait(timeout=10))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                codes.append(None)
        return codes

    def destroy(self) -> None:
        self.stop()
        del_ns(*self.namespaces)

    # -- observation ------------------------------------------------------
    def _own_routes(self, i: int) -> list[str]:
        return ip(self.nodes[i].ns, "route", "show", "proto", str(PROTO)).strip().splitlines()

    def routes(self, i: int) -> list[str]:
        """The agent's primary routes (metric 0) on node i."""
        return [r for r in self._own_routes(i) if " metric " not in r]

    def standby(self, i: int) -> list[str]:
        """The agent's standby routes (through a backup, at a higher metric) on node i."""
        return [r for r in self._own_routes(i) if " metric " in r]

    @property
    def agents(self) -> list[Node]:
        return [n for n in self.nodes if n.index not in self.idle]

    def converged(self) -> bool:
        agents = self.agents
        return all(api(n.ns, "/readyz")[0] == 200 for n in agents) and all(
            len(self.routes(n.index)) == len(agents) - 1 for n in agents
        )

    def dump(self) -> str:
        return "\n".join(
            f"{n.ns}: ready={api(n.ns, '/readyz')} nbrs={api(n.ns, '/v1/neighbors')[1]}\n"
            + "\n".join(self._own_routes(n.index))
            for n in self.agents
        )

    def wait_for(self, pred: Callable[[], bool], timeout: float, what: str) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred():
                return time.monotonic() - t0
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.dump()}")


def _unit_limits() -> None:
    """As the systemd unit runs the agent: LimitNOFILE=1024."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def api(ns: str, path: str) -> tuple[int, str]:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-m",
            "1",
            "-w",
            "\n%{http_code}",
            f"http://127.0.0.1:9105{path}",
        ],
        capture_output=True,
        text=True,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def metric(ns: str, name: str, labels: str = "") -> float:
    """One sample of the agent's /metrics in *ns* (0 when absent)."""
    code, body = api(ns, "/metrics")
    assert code == 200, body
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", body, flags=re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def ping(
    ns: str, dst: str, count: int = 3, interval: float = 0.2
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "1",
            dst,
        ],
        capture_output=True,
        text=True,
    )


def outage(
    ns: str, dst: str, fault: Callable[[], object], interval: float = 0.01, count: int = 250
) -> tuple[int, int]:
    """Ping *dst* from *ns* every *interval* s, inject *fault*; return (lost, sent)."""
    pinger = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-i",
            str(interval),
            "-c",
            str(count),
            "-W",
            "0.5",
            dst,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)
    fault()
    out, _ = pinger.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)) - int(m.group(2)), int(m.group(1))
