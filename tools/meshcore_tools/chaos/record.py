"""Record a labelled dataset on a netns lab: real agents, every fault class, quiet periods.

    python -m meshcore_tools.chaos dataset --topology rgg:16 --seed 1 --out build/dataset
    python -m meshcore_tools.chaos dataset --topology path/to/topology.yml --seed 7 --out DIR

One run: build the topology's namespaces, start the agents, wait until every
pair routes, start one sampler per node (meshcore_chaos.node.sample, 1 s),
stay quiet for ``quiet_s``, run the seeded experiment (one injection of each
class, ``quiet_s`` of quiet after each), stay quiet again, then collect the
samples, the agents' event logs and the labels (from the run's journal) into
``<out>/<run_id>/`` (meshcore_tools.chaos.dataset). The same topology and seed
give the same schedule. The agents and the lab come from the test kit
(meshcore_testkit.routers), which is installed with the tools.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshcore_tools import netns
from meshcore_tools.chaos import dataset, experiment, routes
from meshcore_tools.chaos.faults import Options, Topo
from meshcore_tools.chaos.mesh import netns_mesh
from meshcore_tools.chaos.nodes import NODE_PACKAGE_ROOT
from meshcore_tools.chaos.runner import Runner, usable_links
from meshcore_tools.lab import topology as topo

CLASSES = ["silent_cut", "link_down", "lossy", "slow", "node_crash", "frozen_agent",
           "partition", "cpu_starvation", "rogue"]
PARAMS: dict[str, dict[str, Any]] = {"lossy": {"loss_pct": 40}, "node_crash": {"mode": "node"},
                                     "slow": {"rate": "64kbit"}, "cpu_starvation": {"quota_pct": 5},
                                     "rogue": {"mode": "replay", "rate": 300, "seconds": 8}}


def log(msg: str) -> None:
    print(f"[dataset {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_topology(spec: str, seed: int) -> dict[str, Any]:
    kind, _, n = spec.partition(":")
    return topo.normalise(topo.build(kind, int(n or 0), seed=seed))


def record(spec: str, seed: int, out: Path, hold: float = 8.0, quiet_s: float = 15.0) -> Path:
    from meshcore_testkit.pki import CA
    from meshcore_testkit.routers import RoutingLab

    state = load_topology(spec, seed)
    work = Path(tempfile.mkdtemp(prefix="meshcore-dataset-"))
    lab = RoutingLab(state, work, prefix="mcd")
    run_id = f"{state['name']}-s{seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    exp = experiment.validate({
        "version": 1, "title": f"dataset {run_id}", "seed": seed,
        "steady_state": {"timeout_s": 90},
        "blast_radius": {"max_nodes": 200, "max_duration_s": 60},
        "faults": [{"class": c, "target": "random", "duration_s": hold, "settle_s": quiet_s,
                    "params": PARAMS.get(c, {})} for c in CLASSES],
    })
    mesh = netns_mesh(state, lab.ns, work / "journal")
    try:
        lab.up()
        t_start = time.time()
        lab.start_agent(CA.create("dataset CA"))
        t = Topo(state)
        while not routes.picture(mesh.hops(), t.graph, usable_links(t, None)).converged:
            if time.time() - t_start > 120:
                raise SystemExit(f"dataset: {state['name']} did not converge in 120 s")
            time.sleep(0.5)
        log(f"{state['name']}: {len(state['nodes'])} nodes routed after "
            f"{time.time() - t_start:.1f} s; sampling")
        cursors = {n: mesh.event_cursor(n) for n in state["nodes"]}
        for n in state["nodes"]:
            lab.spawn_argv(["nsenter", f"--net={netns.NETNS_DIR / lab.ns(n)}", "env",
                            f"PYTHONPATH={NODE_PACKAGE_ROOT}", sys.executable, "-m",
                            "meshcore_chaos.node.sample", "--out", str(work / f"{n}.samples"),
                            "--node", n], work / f"{n}.sampler.log")
        started = time.time()
        time.sleep(quiet_s)
        opts = Options(restart_by_node=dict(lab.argv), restart_log=str(work / "restarted.log"))
        doc = Runner(exp, mesh, opts, name=f"ds{seed}", log=log).run().journal
        time.sleep(quiet_s)
        ended = time.time()
        for p in lab.procs[len(state["nodes"]):]:  # the samplers: stop them, keep the agents
            p.terminate()
        for p in lab.procs[len(state["nodes"]):]:
            p.wait(timeout=10)
        samples = [json.loads(x) for n in state["nodes"]
                   for x in (work / f"{n}.samples").read_text().splitlines() if x]
        events = [{"t": float(e["wall"]), "node": n, "kind": e["kind"],
                   "subject": e.get("subject"), "reason": e.get("reason"),
                   "detail": e.get("detail")}
                  for n, c in cursors.items() for e in mesh.events(n, c, [])]
        steps = doc["measurements"].get("steps", [])
        ds = dataset.Dataset(
            meta={"format": "meshcore-dataset", "version": 1, "run_id": run_id, "seed": seed,
                  "topology": state["name"], "started": started, "ended": ended,
                  "sample_interval_s": 1.0, "implementation": "mesh_agent",
                  "schedule": [s.__dict__ for s in experiment.schedule(exp, t)],
                  "journal_status": doc["status"]},
            topology=state, samples=samples, events=events,
            labels=dataset.labels_from_steps(steps, t, started, ended))
        ds.meta["class_balance"] = dataset.balance(ds)
        where = dataset.write(ds, out / run_id)
        (where / "journal.json").write_text(json.dumps(doc))
        cost = [s["cpu_s"] / s["wall_s"] * 100 for s in samples if s["kind"] == "recorder"]
        log(f"{where}: {len(samples)} samples, {len(events)} events, {len(ds.labels)} labels")
        print(json.dumps({"run": str(where), "class_balance": ds.meta["class_balance"],
                          "recorder_cpu_pct_per_node": {
                              "mean": round(sum(cost) / len(cost), 3) if cost else None,
                              "max": round(max(cost), 3) if cost else None}}), flush=True)
        return where
    finally:
        mesh.close()
        lab.down()
        shutil.rmtree(work, ignore_errors=True)  # the samples are in the dataset now
