"""Real mesh agents in network namespaces, for the integration tests and the benchmarks.

The namespaces and links come from :class:`meshcore_tools.netns.NetnsLab` with
the lab's own address plan (:func:`meshcore_tools.lab.topology.normalise`):
node ``n<i>`` has 10.77.0.<i+1>/32 on ``lo``, links are /31s from
10.78.0.0/16 on ``mesh0``, ``mesh1``... in edge order. Each agent runs as its
systemd unit runs it (``python -OO -X no_debug_ranges -m mesh_agent run``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcore_tools import netns
from meshcore_tools.lab import topology

from meshcore_testkit.pki import CA

PROTO = 77
API_PORT = 9105


def agent_config(
    name: str, address: str, pki: dict[str, str], state_dir: Path, **overrides: Any
) -> dict[str, Any]:
    """An agent.yml for a test or benchmark node (enforce mode, API on loopback)."""
    cfg: dict[str, Any] = {
        "node_name": name,
        "node_address": address,
        "mode": "enforce",
        "hello_interval_ms": 50,
        "dead_multiplier": 3,
        "api_listen": f"127.0.0.1:{API_PORT}",
        "identity": pki,
        "state_dir": str(state_dir),
        "route_protocol": PROTO,
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def agent_argv(config: Path) -> list[str]:
    """How the unit starts the agent: PYTHONOPTIMIZE=2, PYTHONNODEBUGRANGES=1."""
    return [sys.executable, "-OO", "-X", "no_debug_ranges", "-m", "mesh_agent", "run",
            "--config", str(config)]


def unit_limits() -> None:
    """As the systemd unit runs the agent: LimitNOFILE=1024 (a Popen preexec_fn)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def agent_env() -> dict[str, str]:
    """The agent's environment. MESHCORE_AGENT_PYTHONPATH runs another build of the
    agent (an older tree's files/mesh_agent) under the same tests and benchmarks."""
    env = dict(os.environ)
    if os.environ.get("MESHCORE_AGENT_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["MESHCORE_AGENT_PYTHONPATH"]
    return env


@dataclass
class Node:
    index: int
    name: str
    ns: str
    address: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class AgentMesh:
    """Agents ``n0``..``n{n-1}`` on the links ``edges`` (pairs of node indices).

    ``with AgentMesh(...) as mesh:`` builds it (namespaces, links, one agent
    each, a CA of its own unless one is given) and removes all of it afterwards.
    """

    n: int
    edges: list[tuple[int, int]]
    base: Path
    prefix: str = "mai"
    hello_interval_ms: int = 50
    dead_multiplier: int = 3
    echo: bool = True  # kernel echo probes (link.echo)
    idle: frozenset[int] = frozenset()  # nodes without an agent (an attacker's namespace)
    ca: CA | None = None
    nodes: list[Node] = field(default_factory=list)
    ifname: dict[tuple[int, int], str] = field(default_factory=dict)  # (node, peer) -> ifname

    def __post_init__(self) -> None:
        names = [f"n{i}" for i in range(self.n)]
        topo = topology.Topology(
            f"agents-{self.n}",
            [{"name": name} for name in names],
            [{"a": names[a], "b": names[b]} for a, b in self.edges],
        )
        self.state = topology.normalise(topo, connected=False)
        self.lab = netns.NetnsLab(self.state, self.prefix)
        for i, name in enumerate(names):
            node = self.state["nodes"][name]
            self.nodes.append(Node(i, name, self.lab.ns(name), node["node_address"],
                                   self.base / name / "agent.log"))
            for end in node["links"]:
                self.ifname[(i, names.index(end["peer"]))] = end["ifname"]

    @property
    def namespaces(self) -> list[str]:
        return [n.ns for n in self.nodes]

    def link_address(self, i: int, j: int) -> str:
        """Node i's address on its link to node j (no prefix length)."""
        node = self.state["nodes"][self.nodes[i].name]
        end = next(e for e in node["links"] if e["peer"] == self.nodes[j].name)
        return str(end["address"]).split("/")[0]

    @property
    def agents(self) -> list[Node]:
        return [n for n in self.nodes if n.index not in self.idle]

    def build(self, ca: CA | None = None) -> None:
        self.lab.up()
        self.start_agents(ca)

    def start_agents(
        self, ca: CA | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        """One agent per node but the idle ones; ``overrides``: config keys per node name."""
        ca = ca or self.ca or CA.create()
        for node in self.agents:
            d = self.base / node.name
            # The certificate binds the node address (IP SAN), as the agent requires.
            pki = ca.write(d / "pki", node.name, node.address)
            cfg = agent_config(node.name, node.address, pki, d,
                               hello_interval_ms=self.hello_interval_ms,
                               dead_multiplier=self.dead_multiplier, link={"echo": self.echo},
                               **(overrides or {}).get(node.name, {}))
            node.proc = self.lab.spawn(node.name, agent_argv(write_config(d / "agent.yml", cfg)),
                                       node.log, preexec_fn=unit_limits, env=agent_env())

    def restart(self, i: int, overrides: Mapping[str, Any] | None = None) -> None:
        """SIGTERM node i's agent, wait for it to exit, start it again (its config with
        *overrides* merged in). The old log is kept as ``agent.log.<n>``."""
        node = self.nodes[i]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=10) == 0
        path = self.base / node.name / "agent.yml"
        if overrides:
            write_config(path, {**json.loads(path.read_text()), **overrides})
        n = 1
        while node.log.with_name(f"{node.log.name}.{n}").exists():
            n += 1
        node.log.rename(node.log.with_name(f"{node.log.name}.{n}"))
        node.proc = self.lab.spawn(node.name, agent_argv(path), node.log,
                                   preexec_fn=unit_limits, env=agent_env())

    def stop(self) -> list[int | None]:
        """SIGTERM every process; the agents' exit codes (None: had to be killed)."""
        return self.lab.stop()

    def destroy(self) -> None:
        self.lab.down()

    def __enter__(self) -> AgentMesh:
        try:
            self.build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.destroy()

    # -- observation ------------------------------------------------------
    def _own_routes(self, i: int) -> list[str]:
        return netns.ip(self.nodes[i].ns, "route", "show", "proto", str(PROTO)).strip().splitlines()

    def routes(self, i: int) -> list[str]:
        """The agent's primary routes (metric 0) on node i."""
        return [r for r in self._own_routes(i) if " metric " not in r]

    def standby(self, i: int) -> list[str]:
        """The agent's standby routes (through a backup, at a higher metric) on node i."""
        return [r for r in self._own_routes(i) if " metric " in r]

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


def api(ns: str, path: str, port: int = API_PORT) -> tuple[int, str]:
    """GET an agent's API from inside its namespace: (HTTP status or 0, body)."""
    out = subprocess.run(
        netns.exec_argv(ns, "curl", "-s", "-m", "1", "-w", "\n%{http_code}",
                        f"http://127.0.0.1:{port}{path}"),
        capture_output=True, text=True,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def api_json(ns: str, path: str, port: int = API_PORT) -> Any:
    """GET an agent's JSON API from inside its namespace; anything but 200 raises."""
    code, body = api(ns, path, port)
    if code != 200:
        raise RuntimeError(f"GET {path} in {ns}: {code} {body[:200]}")
    return json.loads(body)


def metric(ns: str, name: str, labels: str = "") -> float:
    """One sample of the agent's /metrics in *ns* (0 when absent)."""
    code, body = api(ns, "/metrics")
    assert code == 200, body
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", body, flags=re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def ping_argv(ns: str, dst: str, *options: str) -> list[str]:
    return netns.exec_argv(ns, "ping", "-n", *options, dst)


def ping(
    ns: str, dst: str, count: int = 3, interval: float = 0.2
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ping_argv(ns, dst, "-c", str(count), "-i", str(interval), "-W", "1"),
                          capture_output=True, text=True)


def outage(
    ns: str, dst: str, fault: Callable[[], object], interval: float = 0.01, count: int = 250
) -> tuple[int, int]:
    """Ping *dst* from *ns* every *interval* s, inject *fault*; return (lost, sent)."""
    pinger = subprocess.Popen(
        ping_argv(ns, dst, "-i", str(interval), "-c", str(count), "-W", "0.5"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(0.5)
    fault()
    out, _ = pinger.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)) - int(m.group(2)), int(m.group(1))
