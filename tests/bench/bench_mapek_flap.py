#!/usr/bin/env python3
"""bench_mapek_flap: how a held lossy link that flaps is classified, and how soon.

Run: python tests/bench/bench_mapek_flap.py [--runs 3] [--baseline-agent DIR]
(needs root; prints one JSON object per line)

Three agents in namespaces, a triangle n0-n1, n1-n2, n0-n2, with the lab's link
defaults (50 ms hellos, dead after 3, echo probes) and the self-healing loop enforcing
the fixed policy at its default 5 s interval. Once the loop is armed, ``--loss-pct`` %
of what arrives on both ends of n0-n1 is dropped (nft ``numgen``, as the chaos suite's
``lossy`` fault) for ``--hold`` seconds, then ``--after`` seconds are watched.

At 40 % the link times out every second or two and is held down after flaps, so its
ends see it up at only some of the loop's samples. Per run and end (n0, n1), from the
agent's ``/v1/incidents``: when its ``lossy_link`` incident on the link and its
``failover_storm`` were detected (seconds after the fault began; null: never), their
MTTR, its ``flapping_link`` incident on the link (the hold-down) likewise, what was done
about each (the storm's ``cause`` is set when it was attributed to the flapping link),
its ``route_churn`` likewise, and the neighbour downs in its log; the third node's
``route_churn`` (it sees the link's adverts, not its downs); and what the flapping
costs the data plane: ping from n0 to n1 every 0.1 s while the loss holds and while
the ``--after`` seconds are watched, lost in percent (the held link's traffic goes round
by n2). At the end one ``summary`` line per build.
``--baseline-agent`` runs the same trials, interleaved, against another build of the
agent (an older tree's files/mesh_agent, as MESHCORE_AGENT_PYTHONPATH), labelled
``baseline``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mesh_agent.mapek.loop import START_SETTLE_S
from meshcore_testkit.agents import AgentMesh, api_json, ping_argv
from meshcore_testkit.bench import bench_workdir
from meshcore_testkit.pki import CA
from meshcore_tools.chaos import probes
from meshcore_tools.netns import silent_cut

MAPEK = {"mapek": {"enabled": True, "mode": "enforce", "policy": "fixed"}}
NODES = ("n0", "n1", "n2")


RECORDS: list[dict[str, Any]] = []


def emit(figure: str, value: Any, unit: str, **extra: Any) -> None:
    rec = {"bench": "mapek_flap", "figure": figure, **extra, "value": value, "unit": unit}
    RECORDS.append(rec)
    print(json.dumps(rec), flush=True)


def median(xs: list[float]) -> float | None:
    """The median to 0.01 (a mean of two tenths prints 11.850000000000001), or None."""
    return round(statistics.median(xs), 2) if xs else None


def summaries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per label, over its runs and both ends: how many ends opened ``lossy_link`` while
    the loss held (and at all), when (median and worst), and the failover storm's."""
    out = []
    for label in sorted({r["label"] for r in records if r["figure"] != "summary"}):
        mine = [r for r in records if r.get("label") == label]

        def values(fig: str, mine: list[dict[str, Any]] = mine) -> list[float]:
            return sorted(float(r["value"]) for r in mine
                          if r["figure"] == fig and r["value"] is not None)

        lossy = [r for r in mine if r["figure"] == "lossy_link_detect_s"]
        held = [r for r in lossy if r["value"] is not None and r["value"] <= r["hold_s"]]
        detect, storm = values("lossy_link_detect_s"), values("failover_storm_detect_s")
        mttr = values("lossy_link_mttr_s")
        storms = [r for r in mine if r["figure"] == "failover_storm_detect_s"
                  and r["value"] is not None]
        out.append({
            "bench": "mapek_flap", "figure": "summary", "label": label,
            "loss_pct": lossy[0]["loss_pct"] if lossy else None,
            "hold_s": lossy[0]["hold_s"] if lossy else None,
            "ends": len(lossy), "lossy_ends": len(detect), "lossy_in_fault_ends": len(held),
            "lossy_detect_median_s": median(detect),
            "lossy_detect_max_s": detect[-1] if detect else None,
            "lossy_mttr_median_s": median(mttr),
            "storm_detect_median_s": median(storm),
            "storm_ends": len(storm),
            "storm_attributed_ends": sum(1 for r in storms if r.get("cause") is not None),
            "storm_mttr_median_s": median(values("failover_storm_mttr_s")),
            "flapping_ends": len(values("flapping_link_detect_s")),
            "flapping_detect_median_s": median(values("flapping_link_detect_s")),
            "flapping_mttr_median_s": median(values("flapping_link_mttr_s")),
            "downs_median": median(values("neighbour_downs")),
            "downs_max": max(values("neighbour_downs"), default=None),
            "churn_ends": len(values("route_churn_detect_s")),
            "churn_attributed_ends": sum(
                1 for r in mine if r["figure"] == "route_churn_detect_s"
                and r["value"] is not None and r.get("cause") is not None),
            "third_node_churn_total": int(sum(values("third_node_route_churn"))),
            "ping_lost_fault_pct_median": median(values("ping_lost_fault_pct")),
            "ping_lost_fault_pct_max": max(values("ping_lost_fault_pct"), default=None),
            "ping_lost_after_pct_median": median(values("ping_lost_after_pct")),
        })
    return out


PING_INTERVAL_S = 0.1


def pinger(ns: str, dst: str, seconds: float) -> subprocess.Popen[str]:
    count = max(1, round(seconds / PING_INTERVAL_S))
    return subprocess.Popen(ping_argv(ns, dst, "-q", "-i", str(PING_INTERVAL_S), "-c",
                                      str(count), "-W", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lost_pct(p: subprocess.Popen[str]) -> tuple[float, int]:
    """(percent lost, sent) of a pinger that ran its course (its summary line, read by the
    chaos probes' parser)."""
    out, _ = p.communicate(timeout=60)
    trace = probes.parse(out)
    if trace.sent == 0:
        raise RuntimeError(f"ping printed no summary: {out[-300:]}")
    return round(100.0 * (trace.sent - trace.received) / trace.sent, 1), trace.sent


def incidents(ns: str) -> list[dict[str, Any]]:
    return list(api_json(ns, "/v1/incidents?limit=1000")["incidents"])


def trial(args: argparse.Namespace, ca: CA, label: str, run: int) -> None:
    mesh_box: list[AgentMesh] = []

    def make(workdir: Path):  # type: ignore[no-untyped-def]
        mesh_box.append(AgentMesh(3, [(0, 1), (1, 2), (0, 2)], workdir, prefix="bfl", ca=ca))
        return mesh_box[0].lab

    with bench_workdir("bench-mapek-flap-", make) as (_workdir, _lab):
        mesh = mesh_box[0]
        mesh.lab.up()
        mesh.start_agents(ca, {n: MAPEK for n in NODES})
        mesh.wait_for(mesh.converged, 60, "the triangle converged")
        time.sleep(START_SETTLE_S + 10)  # the loop arms once ready this long
        ends = [(mesh.nodes[0], mesh.ifname[(0, 1)], "n1"),
                (mesh.nodes[1], mesh.ifname[(1, 0)], "n0")]
        src, dst = mesh.nodes[0], mesh.nodes[1]
        wall0 = time.time()
        for node, ifname, _ in ends:
            silent_cut(node.ns, ifname, True, loss_pct=args.loss_pct)
        try:
            during = pinger(src.ns, dst.address, args.hold)
            time.sleep(args.hold)
        finally:
            for node, ifname, _ in ends:
                silent_cut(node.ns, ifname, False)
        after = pinger(src.ns, dst.address, args.after)
        time.sleep(args.after)
        tags = {"label": label, "run": run, "loss_pct": args.loss_pct, "hold_s": args.hold}
        for phase, p in (("fault", during), ("after", after)):
            pct, sent = lost_pct(p)
            emit(f"ping_lost_{phase}_pct", pct, "%", **tags, src=src.name, dst=dst.name,
                 sent=sent)
        third = [i for i in incidents(mesh.nodes[2].ns) if i["class"] == "route_churn"]
        emit("third_node_route_churn", len(third), "count", **tags, node=mesh.nodes[2].name,
             outcomes=[(i["action"] or {}).get("outcome") for i in third])
        for node, _, peer in ends:
            got = incidents(node.ns)
            end_tags = {**tags, "node": node.name}
            for cls, target in (("lossy_link", f"link:{peer}"), ("failover_storm", "self:"),
                                ("flapping_link", f"link:{peer}"), ("route_churn", "self:")):
                mine = [i for i in got if i["class"] == cls and i["target"] == target]
                first = mine[0] if mine else None
                action = first["action"] if first else None
                emit(f"{cls}_detect_s",
                     round(first["detected_wall"] - wall0, 1) if first else None, "s", **end_tags,
                     incidents=len(mine), action=action["kind"] if action else None,
                     outcome=action["outcome"] if action else None,
                     cause=first.get("cause") if first else None)
                emit(f"{cls}_mttr_s", round(first["mttr_seconds"], 1)
                     if first and first["mttr_seconds"] is not None else None, "s", **end_tags,
                     state=first["state"] if first else None)
            emit("neighbour_downs", node.log.read_text().count(" down on "), "count", **end_tags)
        mesh.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--loss-pct", type=int, default=40)
    p.add_argument("--hold", type=float, default=45.0, help="seconds the loss holds")
    p.add_argument("--after", type=float, default=90.0, help="seconds watched after it")
    p.add_argument("--baseline-agent", type=Path,
                   help="another build's files/mesh_agent, run the same trials as baseline")
    p.add_argument("--summary-of", type=Path,
                   help="print the summary lines of an earlier run's lines and exit")
    args = p.parse_args()
    if args.summary_of is not None:
        lines = [json.loads(x) for x in args.summary_of.read_text().splitlines() if x.strip()]
        for rec in summaries(lines):
            print(json.dumps(rec))
        return 0
    if os.geteuid() != 0:
        print("bench_mapek_flap needs root (network namespaces)", file=sys.stderr)
        return 2
    ca = CA.create()
    builds: list[tuple[str, str | None]] = [("candidate", None)]
    if args.baseline_agent is not None:
        builds.append(("baseline", str(args.baseline_agent.resolve())))
    for run in range(1, args.runs + 1):
        for label, path in builds:
            if path is None:
                os.environ.pop("MESHCORE_AGENT_PYTHONPATH", None)
            else:
                os.environ["MESHCORE_AGENT_PYTHONPATH"] = path
            print(f"run {run}/{args.runs} {label}", file=sys.stderr, flush=True)
            trial(args, ca, label, run)
    for rec in summaries(RECORDS):
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
