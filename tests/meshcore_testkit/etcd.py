"""A real etcd cluster of ``n`` members on 127.0.0.1, in a temporary directory.

Or, with ``hosts`` and ``wrap``, each member on its own address inside its own network
namespace (``wrap(i)`` is the argv prefix that runs a command there, ``ip netns exec``),
so a test can cut real links between members and clients
(``files/mesh_agent/tests/test_mapek_etcd_partition.py``).

Debian's ``etcd-server`` (3.4); the members listen on free ports, so parallel runs and a
system etcd do not collide. Used by the MAPE-K lease tests
(``files/mesh_agent/tests/test_mapek_etcd.py``). Members can be stopped, paused and
started again to take the quorum away and give it back.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcore_testkit.monitoring import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@dataclass(frozen=True)
class ClientTls:
    """TLS on the members' client port, as the etcd role runs it: a server certificate
    and client certificates required (``--client-cert-auth``), from the authorities in
    ``client_ca`` only. ``ca`` signed the server certificate; the cluster's own health
    and leader checks present ``check_cert`` (a PEM holding its key and certificate)."""

    cert: Path
    key: Path
    client_ca: Path
    ca: Path
    check_cert: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.check_cert))
        return ctx


@dataclass
class EtcdCluster:
    base: Path
    n: int = 3
    clients: list[int] = field(default_factory=list)
    peers: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)  # each member's address (127.0.0.1)
    wrap: Callable[[int], list[str]] | None = None  # member i's argv prefix (a namespace)
    tls: ClientTls | None = None  # https on the client port (peers stay plain http)

    def __post_init__(self) -> None:
        self.clients = [free_port() for _ in range(self.n)]
        self.peers = [free_port() for _ in range(self.n)]
        self.hosts = self.hosts or ["127.0.0.1"] * self.n

    @property
    def endpoints(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://{h}:{p}" for h, p in zip(self.hosts, self.clients, strict=True)]

    def _urlopen(self, req: urllib.request.Request | str) -> Any:
        return urllib.request.urlopen(req, timeout=1.0,
                                      context=self.tls.context() if self.tls else None)

    def peer_url(self, i: int) -> str:
        return f"http://{self.hosts[i]}:{self.peers[i]}"

    def _argv(self, i: int, state: str) -> list[str]:
        cluster = ",".join(f"m{k}={self.peer_url(k)}" for k in range(self.n))
        return [
            *(self.wrap(i) if self.wrap else []),
            ETCD, "--name", f"m{i}", "--data-dir", str(self.base / f"m{i}"),
            "--listen-client-urls", self.endpoints[i], "--advertise-client-urls",
            self.endpoints[i], "--listen-peer-urls", self.peer_url(i),
            "--initial-advertise-peer-urls", self.peer_url(i),
            "--initial-cluster", cluster, "--initial-cluster-token", self.base.name,
            "--initial-cluster-state", state,
            # Fast elections on loopback; a lost member is noticed within a second.
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--logger", "zap", "--log-level", "error",
            *(["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
               "--client-cert-auth", "--trusted-ca-file", str(self.tls.client_ca)]
              if self.tls else []),
        ]

    def start(self, timeout_s: float = 30.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            self.start_member(i, "new")
        self.wait_healthy(timeout_s)

    def start_member(self, i: int, state: str = "existing") -> None:
        log = (self.base / f"m{i}.log").open("ab")
        self.procs[i] = subprocess.Popen(self._argv(i, state), stdout=log, stderr=log)

    def stop_member(self, i: int) -> None:
        proc = self.procs.pop(i)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pause_member(self, i: int, paused: bool = True) -> None:
        self.procs[i].send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def healthy(self, i: int) -> bool:
        """The member answers ``/health`` with a quorum behind it (asked from inside its
        namespace when it has one: its address may be reachable from nowhere else)."""
        if self.wrap is not None:
            code = ("import json, sys, urllib.request as u; r = u.urlopen(sys.argv[1], "
                    "timeout=1.0); sys.exit(0 if json.load(r).get('health') == 'true' else 1)")
            try:
                return subprocess.run([*self.wrap(i), sys.executable, "-c", code,
                                       f"{self.endpoints[i]}/health"], capture_output=True,
                                      timeout=5).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        try:
            with self._urlopen(f"{self.endpoints[i]}/health") as r:
                return bool(json.load(r).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def leader(self) -> int | None:
        """The member the others follow (``/v3/maintenance/status``), if one answers."""
        ids: dict[int, str] = {}
        leader = None
        for i in self.procs:
            try:
                req = urllib.request.Request(f"{self.endpoints[i]}/v3/maintenance/status",
                                             data=b"{}", method="POST")
                with self._urlopen(req) as r:
                    st = json.load(r)
            except (OSError, ValueError, urllib.error.URLError):
                continue
            ids[i] = str(st["header"]["member_id"])
            leader = str(st.get("leader", "")) or leader
        return next((i for i, m in ids.items() if m == leader), None)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.healthy(i) for i in self.procs):
                return
            time.sleep(0.1)
        logs = {p.name: p.read_text()[-2000:] for p in self.base.glob("m*.log")}
        raise RuntimeError(f"etcd not healthy within {timeout_s} s: {logs}")

    def close(self) -> None:
        for i in list(self.procs):
            if self.procs[i].poll() is None:
                self.procs[i].send_signal(signal.SIGCONT)
            self.stop_member(i)
