"""Reading a running mesh from the controller: routes, readiness, the agents' event logs.

Every read is a command run *on the node* through a prefix (``nsenter --net``
for a netns lab, ``podman exec`` for the container lab, ``ssh`` for a fleet),
so the same runner measures all three. Route dumps of all nodes run a few at
a time (threads), because global reconvergence is sampled from all of them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from meshcore_tools import netns
from meshcore_tools.chaos import routes
from meshcore_tools.chaos.nodes import Nodes, netns_nodes
from meshcore_tools.lab import prometheus as promapi


class Mesh:
    def __init__(self, state: Mapping[str, Any], prefix_of: Callable[[str], Sequence[str]],
                 nodes: Nodes, *, api: str | None = "http://127.0.0.1:9105",
                 route_proto: str | None = "77", prometheus: str | None = None) -> None:
        self.state = state
        self.prefix_of = prefix_of
        self.nodes = nodes
        self.api = api  # None: no agent API (babeld)
        self.route_proto = route_proto
        self.prometheus = prometheus  # None: no Prometheus to ask for alerts
        self.names = list(state["nodes"])
        self.pool = ThreadPoolExecutor(max_workers=6)

    def sh(self, node: str, *argv: str, timeout: float = 10) -> str:
        try:
            return subprocess.run([*self.prefix_of(node), *argv], capture_output=True, text=True,
                                  timeout=timeout).stdout
        except subprocess.TimeoutExpired:
            return ""

    def address(self, node: str) -> str:
        return str(self.state["nodes"][node]["node_address"])

    # -- forwarding state ----------------------------------------------------------
    def dump(self, node: str) -> list[dict[str, Any]]:
        argv = ["ip", "-j", "route", "show"]
        if self.route_proto:
            argv += ["proto", self.route_proto]
        return list(json.loads(self.sh(node, *argv) or "[]"))

    def hops(self) -> routes.NextHops:
        dumps = dict(zip(self.names, self.pool.map(self.dump, self.names), strict=True))
        return routes.next_hops(self.state, dumps)

    def path(self, hops: routes.NextHops, src: str, dst: str) -> list[str]:
        """The nodes a packet passes from *src* toward *dst* (up to a hole, or up to the
        node where it would loop)."""
        out, end = routes.walk(hops, src, dst)
        return out[:-1] if end == "loop" else out

    # -- the agents -------------------------------------------------------------------
    def get(self, node: str, path: str) -> tuple[int, str]:
        if self.api is None:
            return 0, ""
        out = self.sh(node, "curl", "-s", "-m", "2", "-w", "\n%{http_code}", self.api + path)
        body, _, code = out.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def readiness(self) -> dict[str, dict[str, Any]]:
        """Per node: ``ready``, and for a node that is not, ``why`` (see :func:`not_ready_why`)."""
        if self.api is None:
            return {}
        answers = self.pool.map(lambda n: self.get(n, "/readyz"), self.names)
        out = {}
        for n, (code, body) in zip(self.names, answers, strict=True):
            out[n] = {"ready": code == 200} if code == 200 else {
                "ready": False, "why": not_ready_why(code, body)}
        return out

    def ready(self) -> dict[str, bool]:
        return {n: r["ready"] for n, r in self.readiness().items()}

    def maintenance(self) -> dict[str, dict[str, Any]]:
        """The nodes whose self-healing loop has a maintenance window open, each with its
        window (``since``, ``until``, ``reason``) as its ``/v1/incidents`` serves it. A node
        that does not answer, or whose agent predates windows, has none here (the
        agents-ready probe answers for it)."""
        if self.api is None:
            return {}
        answers = self.pool.map(lambda n: self.get(n, "/v1/incidents?limit=1"), self.names)
        out = {}
        for n, (code, body) in zip(self.names, answers, strict=True):
            if code != 200:
                continue
            try:
                window = json.loads(body).get("maintenance")
            except ValueError:
                continue
            if window:
                out[n] = dict(window)
        return out

    def event_cursor(self, node: str) -> int:
        code, body = self.get(node, "/v1/events?limit=1")
        return int(json.loads(body).get("newest_id", 0)) if code == 200 else 0

    def events(self, node: str, after: int, kinds: Sequence[str]) -> list[dict[str, Any]]:
        q = "&".join([f"after={after}", "limit=500", *(f"kind={k}" for k in kinds)])
        code, body = self.get(node, f"/v1/events?{q}")
        return list(json.loads(body).get("events", [])) if code == 200 else []

    def alerts(self) -> dict[str, Any]:
        """The mesh Prometheus's ``/api/v1/alerts`` data (OSError when it does not answer;
        :func:`meshcore_tools.lab.prometheus.firing` reads it)."""
        if self.prometheus is None:
            raise ValueError("no Prometheus configured")
        return dict(promapi.api(self.prometheus, "alerts", timeout=10))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def not_ready_why(code: int, body: str) -> dict[str, Any]:
    """Why one ``/readyz`` answer is not 200: no answer within the 2 s (code 0, the agent's
    API too slow or down) is told apart from a 503 and the checks it names as failing."""
    if code == 0:
        return {"code": 0, "failing": ["no answer within 2 s"]}
    try:
        doc = json.loads(body)
    except ValueError:
        return {"code": code, "failing": ["unreadable body"]}
    checks = doc.get("checks") or {}
    failing = doc.get("failing") or [k for k, ok in checks.items() if not ok]
    return {"code": code, "failing": failing, "detail": doc.get("detail", {})}


def netns_mesh(state: Mapping[str, Any], ns_of: Callable[[str], str], journal_root: Any,
               **kw: Any) -> Mesh:
    """A Mesh over a netns lab whose node ``n`` lives in namespace ``ns_of(n)``."""
    def prefix(node: str) -> list[str]:
        return ["nsenter", f"--net={netns.NETNS_DIR / ns_of(node)}"]

    return Mesh(state, prefix, netns_nodes(ns_of, journal_root), **kw)
