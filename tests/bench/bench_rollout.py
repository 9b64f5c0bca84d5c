#!/usr/bin/env python3
"""bench_rollout: what a rollout costs on the container lab, and how fast a bad canary is caught.

The figures issue 20 asks for, on a lab of ``--nodes`` podman nodes (``make lab``):

  tarball_bytes            the signed release tarball the rollout installs
  rollout_wall_s           playbooks/rollout.yml (meshcore-rollout, ansible-runner) from
                           start to end for a good release, with the playbook's default
                           waves (``playbooks/vars/rollout.yml``) unless ``--serial``;
                           one ``wave`` line per wave (hosts, seconds, gate verdict)
  probe                    10 ms pings (the chaos probes, RT priority) between the two
                           farthest nodes and from the first canary to the farthest node,
                           for the whole good rollout: the longest reply gap and the loss;
                           the 3 longest gaps placed in the rollout (wave, phase, hosts
                           switched then) and the pair's shortest path in the lab graph;
  watchdog_kills           agents systemd's watchdog killed during the good rollout (an
                           agent starved of CPU misses its WatchdogSec= pings)
                           a release switch restarts every agent on the way
  canary_detect_s          a release whose agent never becomes ready: seconds from the
                           canary's switch to its gate's failed verdict, and the
                           rollout's wall time to the rollback

Both releases are the lab's own agent bundle re-packed under new release ids and
versions (``meshcore_testkit.releases``, the lab test's), signed with THROWAWAY keys made
for this run. One JSON line per figure on stdout, each with the 1-minute load average;
progress on stderr. The lab is built at the start (``make lab NODES=N TOPOLOGY=T``; an
existing lab is refused unless ``--reuse-lab``, which rolls onto it and leaves it up) and
destroyed at the end unless ``--keep-lab``.

Needs root and podman.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from meshcore_testkit.releases import keys_json, release_tarball, repack, throwaway_keys
from meshcore_tools import ROOT, netns, rollout
from meshcore_tools.chaos import probes
from meshcore_tools.chaos.faults import Topo
from meshcore_tools.lab import state as lab


def log(msg: str) -> None:
    print(f"[bench_rollout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "rollout", **fields, "load1": round(os.getloadavg()[0], 2)}),
          flush=True)


def make(*args: str) -> float:
    t0 = time.monotonic()
    res = subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True,
                         env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"})
    if res.returncode != 0:
        raise SystemExit(f"bench_rollout: make {' '.join(args)} failed:\n"
                         f"{res.stdout[-3000:]}{res.stderr[-2000:]}")
    return time.monotonic() - t0


def longest_gaps(trace: probes.Trace, report: dict[str, Any], top: int = 3,
                 near_s: float = 10.0) -> list[dict[str, Any]]:
    """The *top* longest reply gaps, each placed in the rollout: when it began (seconds
    after the probe started), the wave and its phase then (stage: the release staged on
    every node before the first wave; install: from the wave's start
    to its first switch; switch: to its last; soak: to the gate's verdict; gate: after),
    and the hosts whose switch began within *near_s* before the gap or during it."""
    times = [t for t, _, _ in trace.replies]
    gaps = sorted(((b - a, a) for a, b in itertools.pairwise(times)), reverse=True)[:top]
    switches = sorted((h["switch"]["at"], name) for name, h in report.get("hosts", {}).items()
                      if (h.get("switch") or {}).get("at"))
    stage = report.get("stage") or {}
    out = []
    for gap, at in gaps:
        wave, phase = None, None
        if stage.get("started") is not None and stage["started"] <= at <= stage["ended"]:
            phase = "stage"
        for w in report.get("waves", []):
            if not (w.get("started") or 0) <= at <= (w.get("ended") or 0):
                continue
            wave = w.get("index")
            ats = [t for t, n in switches if n in w.get("hosts", [])]
            phase = ("install" if not ats or at < min(ats) else "switch" if at <= max(ats)
                     else "soak" if at < (w.get("gate_at") or at + 1) else "gate")
        out.append({"gap_ms": round(1000 * gap, 1), "after_start_s": round(at - trace.started, 1),
                    "wave": wave, "phase": phase,
                    "switched": [n for t, n in switches if at - near_s <= t <= at + gap]})
    return out


def watchdog_kills(hosts: list[str], since: float) -> dict[str, int]:
    """Per node, how often systemd's watchdog killed its agent since *since* (wall time):
    an agent starved of CPU misses its WatchdogSec= pings."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since))
    kills = {}
    for h in hosts:
        out = subprocess.run(["podman", "exec", lab.container(h), "journalctl", "-q", "--utc",
                              "--no-pager", "-u", "mesh-agent", "--since", stamp, "-g",
                              "Watchdog timeout"], capture_output=True, text=True).stdout
        if n := len(out.splitlines()):
            kills[h] = n
    return kills


def probe_pairs(state: dict[str, Any], canary: str) -> list[tuple[str, str]]:
    g = Topo(state).graph
    ecc = nx.eccentricity(g)
    far = max(sorted(g), key=lambda n: ecc[n])
    other = max(sorted(g), key=lambda n: nx.shortest_path_length(g, far, n))
    pairs = [(far, other)]
    target = max(sorted(g), key=lambda n: nx.shortest_path_length(g, canary, n))
    if (canary, target) not in pairs and canary != target:
        pairs.append((canary, target))
    return pairs


def start_probe(state: dict[str, Any], src: str, dst: str) -> probes.Probe:
    prefix = ["nsenter", f"--net={netns.NETNS_DIR / lab.ns(src)}"]
    address = Topo(state).address
    return probes.Probe(prefix, address(src).split("/")[0], address(dst).split("/")[0])


def keep_report(report: dict[str, Any], where: Path, name: str) -> str:
    """Write a rollout's whole report to *where*/*name*.json; a short account of what went
    wrong (each wave's hosts, status and first gate failures; every host that failed or
    was unreachable) for the log, where only the tail of the report used to go."""
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{name}.json").write_text(json.dumps(report, indent=2))
    waves = [{"wave": w.get("index"), "hosts": len(w.get("hosts", [])), "status": w.get("status"),
              "duration_s": w.get("duration_s"), "rounds": w.get("rounds"),
              "failures": ((w.get("gate") or {}).get("failures") or [])[:5]}
             for w in report.get("waves", [])]
    bad = {h: {"status": v.get("status"), "wave": v.get("wave"),
               "failed_tasks": v.get("failed_tasks", [])[:3]}
           for h, v in report.get("hosts", {}).items()
           if v.get("status") not in ("upgraded", "rolled_back")}
    controller = {h: v for h, v in report.get("controller", {}).items()
                  if v.get("status") != "ok"}
    return json.dumps({"status": report.get("status"), "report": str(where / f"{name}.json"),
                       "waves": waves, "hosts": bad, "controller": controller}, indent=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--topology", default="grid", help="make lab TOPOLOGY= (kind or file)")
    p.add_argument("--serial", help="waves as JSON (default: playbooks/vars/rollout.yml)")
    p.add_argument("--soak", type=float, help="rollout_soak_s (default: the playbook's)")
    p.add_argument("--no-broken", action="store_true", help="skip the broken canary")
    p.add_argument("--controller-nice", type=int, default=0, metavar="N",
                   help="run the rollout's controller (ansible-runner and what it starts, "
                        "module runs in the nodes included) at nice N: on a real mesh the "
                        "controller has CPUs of its own, here it shares the nodes' (0: off)")
    p.add_argument("--keep-lab", action="store_true", help="leave the lab up at the end")
    p.add_argument("--report-dir", type=Path, default=ROOT / "build" / "bench-rollout",
                   help="where each rollout's whole JSON report is written")
    p.add_argument("--reuse-lab", action="store_true",
                   help="roll onto the lab that is up (make lab ...) and leave it up")
    a = p.parse_args()
    if os.geteuid() != 0 or shutil.which("podman") is None:
        emit(figure="skipped", reason="needs root and podman for the container lab")
        return 0
    if lab.STATE.exists() and not a.reuse_lab:
        raise SystemExit("bench_rollout: a lab is already planned (make lab-destroy first, "
                         "or --reuse-lab)")
    if a.reuse_lab and not lab.STATE.exists():
        raise SystemExit("bench_rollout: --reuse-lab, but no lab is up (make lab)")
    extra: dict[str, Any] = {}
    if a.serial:
        extra["mesh_rollout_serial"] = json.loads(a.serial)
    if a.soak is not None:
        extra["rollout_soak_s"] = a.soak
    defaults = yaml.safe_load((ROOT / "playbooks/vars/rollout.yml").read_text())
    play_vars = next(play.get("vars", {}) for play in
                     yaml.safe_load((ROOT / rollout.PLAYBOOK).read_text())
                     if "rollout_soak_s" in play.get("vars", {}))
    try:
        if not a.reuse_lab:
            log(f"make lab NODES={a.nodes} TOPOLOGY={a.topology}")
            emit(figure="lab_up_s", nodes=a.nodes, topology=a.topology,
                 value=round(make("lab", f"NODES={a.nodes}", f"TOPOLOGY={a.topology}"), 1))
        state = lab.load_state()
        hosts = rollout.inventory_hosts(lab.INVENTORY)
        info = json.loads((ROOT / "build/agent/bundle.json").read_text())
        src, old = ROOT / "build/agent" / info["bundle"], info["release"]
        with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
            work = Path(tmp)
            keys = throwaway_keys()
            keys_file = work / "release-keys.json"
            keys_file.write_text(keys_json(keys))
            good_id, bad_id = "a" * 16, "b" * 16
            good = release_tarball(work, repack(src, old, good_id, "90.0.1"), good_id,
                                   "90.0.1", keys)
            emit(figure="tarball_bytes", value=good.stat().st_size, unit="B",
                 note="the lab's agent bundle re-packed (amd64 only; no SBOM, no roles)")
            serial = extra.get("mesh_rollout_serial", defaults.get("mesh_rollout_serial"))
            canary = hosts[0]
            pairs = probe_pairs(state, canary)
            running = [(s, d, start_probe(state, s, d)) for s, d in pairs]
            time.sleep(2)
            log(f"rolling {good.name} to {len(hosts)} nodes, waves {serial}; probes {pairs}")
            if a.controller_nice:
                os.nice(a.controller_nice)  # the probes above already run, at RT priority
            t0, wall0 = time.monotonic(), time.time()
            rc, report = rollout.run(lab.INVENTORY, good, keys_file, extravars=extra,
                                     hosts_all=hosts)
            wall = time.monotonic() - t0
            kills = watchdog_kills(hosts, wall0)
            traces = [(s, d, pr.stop()) for s, d, pr in running]
            account = keep_report(report, a.report_dir, "good")
            completed = rc == 0 and report["status"] == "completed"
            # What happened, also (above all) when the rollout stopped.
            emit(figure="watchdog_kills", value=sum(kills.values()), nodes=kills,
                 note="agents systemd's watchdog killed during the good rollout")
            stage = report.get("stage") or {}
            emit(figure="stage", hosts=stage.get("hosts"), duration_s=stage.get("duration_s"),
                 serial=extra.get("rollout_stage_serial", defaults["rollout_stage_serial"]),
                 note="the release staged on every node before the first wave")
            for i, w in enumerate(report["waves"]):
                emit(figure="wave", index=i, hosts=len(w["hosts"]), duration_s=w["duration_s"],
                     status=w["status"], probes_checked=w["gate"].get("probes_checked"),
                     rounds=len(w.get("rounds") or []),
                     storms_explained=len((w["gate"].get("alerts") or {}).get("explained") or []),
                     failures=(w["gate"].get("failures") or [])[:5])
            for s, d, tr in traces:
                lv = probes.service_levels(tr)
                gaps = longest_gaps(tr, report)
                emit(figure="probe", src=s, dst=d,
                     longest_gap_ms=gaps[0]["gap_ms"] if gaps else None,
                     sent=tr.sent, received=tr.received, loss_pct=round(lv.loss_pct, 3),
                     availability_pct=round(lv.availability_pct, 1),
                     path=nx.shortest_path(Topo(state).graph, s, d),
                     gaps=gaps)
            if not completed:
                print(account, file=sys.stderr)
                raise SystemExit("bench_rollout: the good release did not complete")
            emit(figure="rollout_wall_s", nodes=len(hosts), value=round(wall, 1), unit="s",
                 waves=len(report["waves"]), serial=serial,
                 soak_s=extra.get("rollout_soak_s", play_vars["rollout_soak_s"]),
                 controller_nice=a.controller_nice)
            if not a.no_broken:
                bad = release_tarball(work, repack(src, old, bad_id, "90.0.2", broken=True),
                                      bad_id, "90.0.2", keys)
                log("rolling a release whose agent never becomes ready")
                t0 = time.monotonic()
                rc, report = rollout.run(lab.INVENTORY, bad, keys_file, extravars=extra,
                                         hosts_all=hosts)
                wall = time.monotonic() - t0
                (wave,) = report["waves"]
                account = keep_report(report, a.report_dir, "broken-canary")
                if rc == 0 or wave["status"] != "rolled_back":
                    print(account, file=sys.stderr)
                    raise SystemExit("bench_rollout: the broken canary was not rolled back")
                emit(figure="canary_detect_s", value=wave["gate_after_switch_s"], unit="s",
                     rollout_wall_s=round(wall, 1), canary=wave["hosts"],
                     failures=wave["gate"]["failures"][:3])
    finally:
        if not (a.keep_lab or a.reuse_lab):
            log("make lab-destroy")
            subprocess.run(["make", "-C", str(ROOT), "lab-destroy"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
