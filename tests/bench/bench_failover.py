#!/usr/bin/env python3
"""bench_failover: outage when a link of the primary path dies, agent vs babeld.

For each topology (an 8-node ladder and a 50-node random geometric graph by
default) the bench builds a lab of plain network namespaces with the lab's own
topology generator and wiring (meshcore_tools.lab.topology, meshcore_tools.netns),
then, one routing implementation at a time on the same topology in the same run:

  mesh_agent      the bundled agent in enforce mode (50 ms x 3 hellos)
  babeld-h1.0     babeld, hello 1 s / update 4 s (our earlier lab's "default" run)
  babeld-h0.2     babeld, hello 0.2 s / update 1 s (tuned)

It waits for convergence, runs `ping -D -O -i 0.01` from one end of the mesh to
the other, finds the flow's current primary path hop by hop from the kernel's
routes, and cuts the middle link of that path:

  silent   nft netdev drop on both ends (carrier stays up: a fading radio)
  admin    `ip link set down` on one end (the kernel sees it)

The outage is the longest gap between two consecutive echo replies (ping
timestamps) minus the ping interval. The ping runs at real-time priority
(SCHED_FIFO 20, `chrt`): it is the measuring instrument, and at normal
priority 50 routing daemons on 2 cores could starve it, so that a reply gap
of 50-80 ms showed with no ping lost at all (the path never broke). Each
figure also carries the pings lost (median and max over the cuts). One JSON
line per figure on stdout; progress on stderr. Needs root. The namespaces are
named mcb<pid>-<node> (meshcore_tools.netns.NetnsLab) and all are deleted at
the end.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshcore_testkit.bench import bench_parser, bench_preflight, bench_workdir
from meshcore_testkit.pki import CA
from meshcore_testkit.routers import BABELD, RoutingLab
from meshcore_tools import netns
from meshcore_tools.chaos import probes
from meshcore_tools.lab import topology as topo

PING_INTERVAL = probes.INTERVAL_S


def log(msg: str) -> None:
    print(f"[bench_failover {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "failover", **fields}), flush=True)


class Lab(RoutingLab):
    """The shared routing lab (meshcore_testkit.routers), plus the flow's path."""

    # --- measurement -----------------------------------------------------------------
    def reachable(self, src: str, dst_addr: str) -> bool:
        return netns.run(*netns.exec_argv(self.ns(src), "ping", "-n", "-q", "-c", "1",
                                           "-W", "0.3", "-I",
                                           self.state["nodes"][src]["node_address"], dst_addr),
                         check=False).returncode == 0

    def path(self, src: str, dst: str) -> list[str]:
        """The flow's current path, read hop by hop from the kernel's routes."""
        dst_addr = self.state["nodes"][dst]["node_address"]
        hops = [src]
        while hops[-1] != dst and len(hops) <= len(self.state["nodes"]):
            out = netns.ip(self.ns(hops[-1]), "-j", "route", "get", dst_addr, check=False)
            routes = json.loads(out or "[]")
            gw = routes[0].get("gateway") if routes else None
            if gw is None or gw not in self.by_link_addr:
                return hops
            hops.append(self.by_link_addr[gw])
        return hops

    def link_ifnames(self, a: str, b: str) -> tuple[str, str]:
        ia = next(e["ifname"] for e in self.state["nodes"][a]["links"] if e["peer"] == b)
        ib = next(e["ifname"] for e in self.state["nodes"][b]["links"] if e["peer"] == a)
        return ia, ib


def wait_converged(
    lab: Lab, src: str, dst: str, timeout: float, stable: float = 1.0
) -> float | None:
    """Seconds until dst answers and the flow's path has not changed for ``stable`` s."""
    t0 = time.monotonic()
    dst_addr = lab.state["nodes"][dst]["node_address"]
    last: list[str] = []
    since = t0
    while time.monotonic() - t0 < timeout:
        path = lab.path(src, dst)
        now = time.monotonic()
        if path[-1] != dst or path != last or not lab.reachable(src, dst_addr):
            last, since = path, now
        elif now - since >= stable:
            return since - t0
        time.sleep(0.1)
    return None


def outage(ping_output: str, cut_at: float) -> tuple[float, int]:
    """Longest reply gap spanning the cut, minus one interval (meshcore_tools.chaos.probes,
    Battlemesh's first loss to first success); and the lost count."""
    trace = probes.parse(ping_output)
    return probes.recover_s(trace, cut_at, float("inf")), trace.sent - trace.received


def trial(lab: Lab, src: str, dst: str, mode: str, hold: float) -> dict[str, Any] | None:
    dst_addr = lab.state["nodes"][dst]["node_address"]
    count = int((2.0 + hold) / 0.016) + 50
    ping = subprocess.Popen(
        netns.exec_argv(lab.ns(src), "chrt", "-f", "20",
                        "ping", "-D", "-O", "-n", "-i", str(PING_INTERVAL),
                        "-c", str(count), "-W", "1", "-I", lab.state["nodes"][src]["node_address"],
                        dst_addr),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2.0)
    # The path as it is now, right before the cut: the middle link of it.
    path = lab.path(src, dst)
    if path[-1] != dst:  # the route went away after convergence: not a cut to measure
        ping.kill()
        ping.wait()
        log(f"no route {src} -> {dst} at cut time (path {path}); trial skipped")
        return None
    mid = (len(path) - 1) // 2
    a, b = path[mid], path[mid + 1]
    ia, ib = lab.link_ifnames(a, b)
    cut_at = time.time()
    if mode == "silent":
        netns.silent_cut(lab.ns(a), ia, True)
        netns.silent_cut(lab.ns(b), ib, True)
    else:
        netns.ip(lab.ns(a), "link", "set", ia, "down")
    time.sleep(hold)
    ping.send_signal(signal.SIGINT)
    out, _ = ping.communicate(timeout=10)
    seconds, lost = outage(out, cut_at)
    after = lab.path(src, dst)
    # restore
    if mode == "silent":
        netns.silent_cut(lab.ns(a), ia, False)
        netns.silent_cut(lab.ns(b), ib, False)
    else:
        netns.ip(lab.ns(a), "link", "set", ia, "up")
    return {"outage_s": seconds, "lost": lost, "path_before": path, "cut": [a, b],
            "path_after": after}


def proc_stats(pids: list[int], seconds: float) -> dict[str, float]:
    """Mean RSS (MB) and CPU (% of one core) of the given processes over a window."""
    def cpu(pid: int) -> float:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def rss(pid: int) -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    c0 = {p: cpu(p) for p in pids}
    time.sleep(seconds)
    c1 = {p: cpu(p) for p in pids}
    cpus = [100 * (c1[p] - c0[p]) / seconds for p in pids]
    rsss = [rss(p) for p in pids]
    return {"rss_mb_mean": statistics.mean(rsss), "rss_mb_max": max(rsss),
            "cpu_pct_mean": statistics.mean(cpus), "cpu_pct_max": max(cpus)}


def daemon_pids(lab: Lab) -> list[int]:
    """PIDs of the daemons (children of `ip netns exec`, which execs in place)."""
    return [p.pid for p in lab.procs if p.poll() is None]


def far_pair(state: dict[str, Any]) -> tuple[str, str]:
    import networkx as nx

    g = nx.Graph()
    for link in state["links"]:
        g.add_edge(link["a"], link["b"])
    lengths = dict(nx.all_pairs_shortest_path_length(g))
    src, dst = max(((u, v) for u in lengths for v in lengths[u]),
                   key=lambda p: (lengths[p[0]][p[1]], p))
    return src, dst


def run_topology(spec: str, impls: list[str], modes: list[str], trials: int) -> None:
    kind, n = spec.split(":")
    state = topo.normalise(topo.build(kind, int(n), seed=1))
    name = state["name"]
    src, dst = far_pair(state)
    log(f"{name}: {len(state['nodes'])} nodes, {len(state['links'])} links, flow {src} -> {dst}")
    with bench_workdir("bench-failover-", lambda d: Lab(state, d)) as (workdir, lab):
        lab.up()
        ca = CA.create("bench CA")
        for impl in impls:
            if impl == "mesh_agent":
                lab.start_agent(ca)
                hold, stable = 2.0, 1.0
            else:
                lab.start_babeld(BABELD[impl])
                hold = 8.0 if impl == "babeld-h1.0" else 4.0
                stable = 5.0
            conv = wait_converged(lab, src, dst, 90)
            if conv is None:
                log(f"{impl}: did not converge in 90 s; see {workdir}")
                emit(topology=name, impl=impl, figure="converged", value=False)
                lab.stop()
                continue
            emit(topology=name, impl=impl, figure="initial_convergence_s",
                 value=round(conv, 3), unit="s")
            # Idle cost once converged, every daemon of the run in the same window.
            stats = proc_stats(daemon_pids(lab), 20.0)
            for key, value in stats.items():
                emit(topology=name, impl=impl, figure=key, value=round(value, 2),
                     nodes=len(state["nodes"]))
            for mode in filter(None, modes):
                outs, losts = [], []
                for i in range(trials):
                    if wait_converged(lab, src, dst, 90, stable=stable) is None:
                        log(f"{impl} {mode}: no route before trial {i}")
                        continue
                    r = trial(lab, src, dst, mode, hold)
                    if r is None:
                        continue
                    outs.append(r["outage_s"])
                    losts.append(r["lost"])
                    log(f"{impl} {mode} #{i}: outage {r['outage_s'] * 1000:.0f} ms, "
                        f"lost {r['lost']}, cut {r['cut']}, path {r['path_before']} -> "
                        f"{r['path_after']}")
                if outs:
                    srt = sorted(outs)
                    p95 = srt[min(len(srt) - 1, round(0.95 * (len(srt) - 1)))]
                    emit(topology=name, impl=impl, figure=f"outage_{mode}_ms",
                         median=round(1000 * statistics.median(outs), 1),
                         p95=round(1000 * p95, 1), max=round(1000 * max(outs), 1),
                         trials=len(outs), unit="ms",
                         lost_median=statistics.median(losts), lost_max=max(losts))
            lab.stop()


def main() -> None:
    p = bench_parser(__doc__, topologies="ladder:8,rgg:50",
                     impls="mesh_agent,babeld-h1.0,babeld-h0.2")
    p.add_argument("--modes", default="silent,admin")
    a = p.parse_args()
    if not bench_preflight("bench_failover", emit):
        return
    for spec in a.topologies.split(","):
        run_topology(spec, a.impls.split(","), a.modes.split(","), a.trials)


if __name__ == "__main__":
    main()
