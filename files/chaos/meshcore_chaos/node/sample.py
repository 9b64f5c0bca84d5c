"""The node-local telemetry sampler: per-node and per-link features every second, as JSONL.

    python3 -m meshcore_chaos.node.sample --out FILE [--interval 1] [--seconds S]
        [--api http://127.0.0.1:9105] [--agent-match "mesh_agent run"] [--node NAME]

It runs on the node (one process; in the lab, one per namespace) so the cost
is one cheap loop, not a controller fanning out commands: it reads only the
kernel's own files and the agent's API on loopback.

Each tick writes one ``node`` record and one ``link`` record per neighbour
(format: meshcore_tools/chaos/schemas/dataset.schema.json):

- node: CPU seconds and RSS of the agent (``/proc/<pid>``), routes in the
  kernel (``/proc/net/route``), IP/UDP/ICMP counters (``/proc/net/snmp``:
  in/out packets, discards, UDP receive-buffer errors), the agent's counters
  (failovers, adverts rejected, routes installed, neighbours up);
- link: the neighbour's state, loss, RTT, jitter (mean absolute difference of
  successive RTTs over the last 10 samples), link age (since first seen up),
  hello lateness (time since last heard), and the interface's bytes, packets,
  errors and drops both ways (``/proc/net/dev``).

On exit (SIGTERM or ``--seconds``) it writes one ``recorder`` record with its
own CPU time, so the recorder's cost is measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from meshcore_chaos.node import StopSignals
from meshcore_chaos.node.ops import OpError, find_process

METRICS = {
    "meshcore_failovers_total": "failovers_total",
    "meshcore_adverts_rejected_total": "adverts_rejected_total",
    "meshcore_routes_installed": "routes_installed",
    "meshcore_neighbors_up": "neighbors_up",
}
SNMP = {("Ip", "InReceives"), ("Ip", "OutRequests"), ("Ip", "InDiscards"),
        ("Ip", "OutNoRoutes"), ("Ip", "ForwDatagrams"), ("Udp", "InDatagrams"),
        ("Udp", "RcvbufErrors"), ("Udp", "InErrors"), ("Icmp", "InDestUnreachs")}
TICK = os.sysconf("SC_CLK_TCK")


def net_dev() -> dict[str, dict[str, int]]:
    out = {}
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = [int(x) for x in rest.split()]
        out[name.strip()] = {"rx_bytes": f[0], "rx_packets": f[1], "rx_errors": f[2],
                             "rx_drops": f[3], "tx_bytes": f[8], "tx_packets": f[9],
                             "tx_errors": f[10], "tx_drops": f[11]}
    return out


def snmp() -> dict[str, int]:
    lines = Path("/proc/net/snmp").read_text().splitlines()
    out = {}
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = head.partition(":")
        for name, val in zip(names.split(), vals.split(":", 1)[1].split(), strict=False):
            if (proto, name) in SNMP:
                out[f"{proto.lower()}_{name}"] = int(val)
    return out


def routes() -> int:
    return max(0, len(Path("/proc/net/route").read_text().splitlines()) - 1)


def proc(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, RSS MB) of a process."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text()
                   .splitlines() if x.startswith("VmRSS:"))
    except (OSError, StopIteration, IndexError):
        return None
    return (int(f[11]) + int(f[12])) / TICK, rss / 1024


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return str(r.read().decode())
    except (OSError, ValueError):
        return None


def metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m and m.group(1) in METRICS:
            key = METRICS[m.group(1)]
            out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


class Sampler:
    def __init__(self, node: str, api: str, match: str) -> None:
        self.node = node
        self.api = api
        self.match = match
        self.pid: int | None = None
        self.rtts: dict[str, deque[float]] = {}
        self.up_since: dict[str, float] = {}

    def agent(self) -> tuple[float, float] | None:
        got = proc(self.pid) if self.pid else None
        if got is None:
            try:
                self.pid = find_process(self.match)
            except OpError:
                self.pid = None
                return None
            got = proc(self.pid)
        return got

    def tick(self, t: float) -> list[dict[str, Any]]:
        dev = net_dev()
        rec: dict[str, Any] = {"kind": "node", "t": round(t, 3), "node": self.node,
                               "routes": routes(), **snmp()}
        agent = self.agent()
        rec["agent_up"] = agent is not None
        if agent:
            rec["agent_cpu_s"], rec["agent_rss_mb"] = round(agent[0], 3), round(agent[1], 2)
        text = get(self.api + "/metrics")
        rec.update(metrics(text) if text else {})
        out = [rec]
        body = get(self.api + "/v1/neighbors")
        neighbours = json.loads(body).get("neighbors", []) if body else []
        for nb in neighbours:
            name, ifname = str(nb.get("name")), str(nb.get("interface"))
            rtt = nb.get("rtt_seconds")
            hist = self.rtts.setdefault(name, deque(maxlen=10))
            if isinstance(rtt, int | float):
                hist.append(float(rtt))
            jitter = (sum(abs(b - a) for a, b in zip(hist, list(hist)[1:], strict=False))
                      / (len(hist) - 1)) if len(hist) > 1 else None
            up = nb.get("state") == "up"
            if up:
                self.up_since.setdefault(name, t)
            else:
                self.up_since.pop(name, None)
            out.append({"kind": "link", "t": round(t, 3), "node": self.node, "peer": name,
                        "ifname": ifname, "state": nb.get("state"), "loss": nb.get("loss"),
                        "rtt_s": rtt, "jitter_s": jitter,
                        "link_age_s": round(t - self.up_since[name], 3) if up else 0.0,
                        "hello_lateness_s": nb.get("heard_seconds_ago"), **dev.get(ifname, {})})
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--node", default=os.uname().nodename)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=0.0, help="0: until SIGTERM")
    p.add_argument("--api", default="http://127.0.0.1:9105")
    p.add_argument("--agent-match", default="mesh_agent run")
    a = p.parse_args()
    stop = StopSignals()
    s = Sampler(a.node, a.api, a.agent_match)
    t0, c0 = time.monotonic(), time.process_time()
    n = 0
    with open(a.out, "a") as f:
        nxt = time.monotonic()
        while not stop.requested and (not a.seconds or time.monotonic() - t0 < a.seconds):
            for rec in s.tick(time.time()):
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            f.flush()
            n += 1
            nxt += a.interval
            time.sleep(max(0.0, nxt - time.monotonic()))
        wall = time.monotonic() - t0
        f.write(json.dumps({"kind": "recorder", "t": round(time.time(), 3), "node": a.node,
                            "ticks": n, "wall_s": round(wall, 3),
                            "cpu_s": round(time.process_time() - c0, 3)}) + "\n")


if __name__ == "__main__":
    main()
