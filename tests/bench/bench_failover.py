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
timestamps) minus the ping interval; ``raw_*`` figures give the gap itself
(as an independent harness reports it). The ping runs at real-time priority
(SCHED_FIFO 20, `chrt`): it is the measuring instrument, and at normal
priority 50 routing daemons on 2 cores could starve it, so that a reply gap
of 50-80 ms showed with no ping lost at all (the path never broke). Each
figure also carries the pings lost (median and max over the cuts). One JSON
line per figure on stdout, each with the 1-minute load average (``load1``);
progress on stderr.

Per implementation the bench also reports (issue 16):

  cold_start_all_pairs_s   from the last daemon's start until every node's
                           kernel routes every other node's address, hop by
                           hop to its end without a loop (``ip route get`` in
                           every namespace, one poll a second, at most
                           180 s)
  start_link_deaths        (the agent) neighbour deaths its logs show from
                           the start to the end of the idle window, before
                           any cut: every one is false
  cpu_share_pct            the daemons' CPU from their start to their stop, as
                           a share of the whole machine (all cores), beside
                           ``machine_busy_pct`` over the same time (/proc/stat)

With ``--pairs K`` the cuts go to K seeded node pairs (at least 3 hops apart,
trials cycling over them) instead of the one farthest pair. Needs root. The namespaces are
named mcb<pid>-<node> (meshcore_tools.netns.NetnsLab) and all are deleted at
the end.
"""

from __future__ import annotations

import json
import math
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
COLD_START_TIMEOUT_S = 180.0


def log(msg: str) -> None:
    print(f"[bench_failover {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(**fields: Any) -> None:
    load1 = float(Path("/proc/loadavg").read_text().split()[0])
    print(json.dumps({"bench": "failover", **fields, "load1": load1}), flush=True)


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


def outage(ping_output: str, cut_at: float) -> tuple[float, int, float]:
    """Longest reply gap spanning the cut, minus one interval (meshcore_tools.chaos.probes,
    Battlemesh's first loss to first success); the lost count; and the raw gap (the interval
    not subtracted, as an independent harness reports it)."""
    trace = probes.parse(ping_output)
    return (probes.recover_s(trace, cut_at, math.inf, PING_INTERVAL), trace.sent - trace.received,
            probes.recover_s(trace, cut_at, math.inf, 0.0))


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
    seconds, lost, raw = outage(out, cut_at)
    after = lab.path(src, dst)
    # restore
    if mode == "silent":
        netns.silent_cut(lab.ns(a), ia, False)
        netns.silent_cut(lab.ns(b), ib, False)
    else:
        netns.ip(lab.ns(a), "link", "set", ia, "up")
    return {"outage_s": seconds, "raw_gap_s": raw, "lost": lost, "path_before": path,
            "cut": [a, b],
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


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


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


def seeded_pairs(state: dict[str, Any], count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` seeded node pairs at least 3 hops apart (a middle link to cut)."""
    import random

    import networkx as nx

    g = nx.Graph()
    for link in state["links"]:
        g.add_edge(link["a"], link["b"])
    rng = random.Random(seed)
    nodes = sorted(g)
    pairs: list[tuple[str, str]] = []
    for _ in range(1000 * count):
        if len(pairs) == count:
            break
        u, v = rng.sample(nodes, 2)
        if nx.shortest_path_length(g, u, v) >= 3 and (u, v) not in pairs:
            pairs.append((u, v))
    return pairs


def run_topology(
    spec: str, impls: list[str], modes: list[str], trials: int, pairs: int = 0
) -> None:
    kind, n = spec.split(":")
    state = topo.normalise(topo.build(kind, int(n), seed=1))
    name = state["name"]
    src, dst = far_pair(state)
    flows = seeded_pairs(state, pairs, seed=1) if pairs else [(src, dst)]
    log(f"{name}: {len(state['nodes'])} nodes, {len(state['links'])} links, flow {src} -> {dst}")
    with bench_workdir("bench-failover-", lambda d: Lab(state, d)) as (workdir, lab):
        lab.up()
        ca = CA.create("bench CA")
        for impl in impls:
            t_start, busy0 = time.monotonic(), machine_ticks()
            if impl == "mesh_agent":
                lab.start_agent(ca)
                hold, stable = 2.0, 1.0
            else:
                lab.start_babeld(BABELD[impl])
                hold = 8.0 if impl == "babeld-h1.0" else 4.0
                stable = 5.0
            t_last = time.monotonic()
            cold = None
            # A poll starts an `ip` per namespace: one a second, so the poll itself
            # does not starve the daemons it waits for (a continuous poll did).
            while time.monotonic() - t_last < COLD_START_TIMEOUT_S:
                if lab.all_pairs_routed():
                    cold = time.monotonic() - t_last
                    break
                time.sleep(1.0)
            emit(topology=name, impl=impl, figure="cold_start_all_pairs_s",
                 value=None if cold is None else round(cold, 2), unit="s",
                 spawn_s=round(t_last - t_start, 2), nodes=len(state["nodes"]))
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
            if impl == "mesh_agent":  # false deaths: no link was cut yet
                deaths = lab.agent_link_deaths()
                emit(topology=name, impl=impl, figure="start_link_deaths",
                     value=sum(deaths.values()), by_reason=deaths,
                     seconds=round(time.monotonic() - t_start, 1))
            for mode in filter(None, modes):
                outs, losts, raws = [], [], []
                for i in range(trials):
                    fsrc, fdst = flows[i % len(flows)]
                    if wait_converged(lab, fsrc, fdst, 90, stable=stable) is None:
                        log(f"{impl} {mode}: no route {fsrc} -> {fdst} before trial {i}")
                        continue
                    r = trial(lab, fsrc, fdst, mode, hold)
                    if r is None:
                        continue
                    outs.append(r["outage_s"])
                    raws.append(r["raw_gap_s"])
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
                         trials=len(outs), unit="ms", pairs=len(flows),
                         lost_median=statistics.median(losts), lost_max=max(losts))
                    rs = sorted(raws)
                    emit(topology=name, impl=impl, figure=f"raw_gap_{mode}_ms",
                         median=round(1000 * statistics.median(rs), 1),
                         p95=round(1000 * rs[min(len(rs) - 1, round(0.95 * (len(rs) - 1)))], 1),
                         max=round(1000 * max(rs), 1), trials=len(rs), unit="ms")
            elapsed = time.monotonic() - t_start
            busy1 = machine_ticks()
            cpu = cpu_seconds(daemon_pids(lab))
            emit(topology=name, impl=impl, figure="cpu_share_pct",
                 value=round(100 * cpu / (elapsed * (os.cpu_count() or 1)), 2),
                 machine_busy_pct=round(100 * (busy1[0] - busy0[0])
                                        / max(1, busy1[1] - busy0[1]), 2),
                 seconds=round(elapsed, 1), cpus=os.cpu_count())
            lab.stop()


def main() -> None:
    p = bench_parser(__doc__, topologies="ladder:8,rgg:50",
                     impls="mesh_agent,babeld-h1.0,babeld-h0.2")
    p.add_argument("--modes", default="silent,admin")
    p.add_argument("--pairs", type=int, default=0,
                   help="cut on this many seeded node pairs (0: the farthest pair only)")
    a = p.parse_args()
    if not bench_preflight("bench_failover", emit):
        return
    for spec in a.topologies.split(","):
        run_topology(spec, a.impls.split(","), a.modes.split(","), a.trials, a.pairs)


if __name__ == "__main__":
    main()
