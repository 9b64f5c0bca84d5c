"""The dataset format: the writer round-trips, labels follow the journal, sampler records fit."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from meshcore_testkit.chaoslab import ChaosLab
from meshcore_testkit.marks import requires_root
from meshcore_tools import netns
from meshcore_tools.chaos import dataset
from meshcore_tools.chaos.faults import Topo
from meshcore_tools.chaos.nodes import NODE_PACKAGE_ROOT
from meshcore_tools.lab import topology


def small() -> dataset.Dataset:
    state = topology.normalise(topology.build("ladder", 4))
    t = Topo(state)
    a, b = sorted(t.graph.edges)[0]
    steps = [{"step": 0, "class": "silent_cut", "target": [a, b], "fault_id": "x-0",
              "params": {}, "injected_at": 110.0, "removed_at": 116.0},
             {"step": 1, "class": "frozen_agent", "target": [a], "fault_id": "x-1",
              "params": {}, "injected_at": 130.0, "removed_at": 135.0},
             {"step": 2, "class": "slow", "skipped": "no path"}]
    labels = dataset.labels_from_steps(steps, t, 100.0, 150.0)
    samples = [{"kind": "node", "t": 100.0 + i, "node": n, "routes": 3, "agent_up": True,
                "agent_cpu_s": 0.1 * i, "ip_InReceives": 10 * i}
               for i in range(50) for n in state["nodes"]]
    samples += [{"kind": "link", "t": 100.0 + i, "node": a, "peer": b, "ifname": "mesh0",
                 "state": "up", "loss": 0.0, "rtt_s": 0.0002, "jitter_s": None,
                 "link_age_s": float(i), "hello_lateness_s": 0.03, "rx_bytes": 100 * i}
                for i in range(50)]
    events = [{"t": 110.2, "node": a, "kind": "link_down", "subject": b, "reason": "echo",
               "detail": {}}]
    meta = {"format": "meshcore-dataset", "version": 1, "run_id": "r1", "seed": 1,
            "topology": state["name"], "started": 100.0, "ended": 150.0,
            "sample_interval_s": 1.0, "schedule": []}
    return dataset.Dataset(meta, state, samples, events, labels)


def test_the_writer_round_trips(tmp_path: Path) -> None:
    ds = small()
    back = dataset.read(dataset.write(copy.deepcopy(ds), tmp_path / "r1"))
    assert back.meta == ds.meta and back.topology == json.loads(json.dumps(ds.topology))
    key = lambda r: (r["t"], r["node"], r["kind"], r.get("peer", ""))  # noqa: E731
    assert sorted(back.samples, key=key) == sorted(ds.samples, key=key)
    assert back.events == ds.events and back.labels == ds.labels
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == sorted(dataset.FILES)


def test_labels_cover_the_run_with_faults_and_quiet_periods() -> None:
    ds = small()
    assert [(x["class"], x["start"], x["end"]) for x in ds.labels] == [
        ("none", 100.0, 110.0), ("silent_cut", 110.0, 116.0), ("none", 116.0, 130.0),
        ("frozen_agent", 130.0, 135.0), ("none", 135.0, 150.0)]
    cut = ds.labels[1]
    assert len(cut["nodes"]) == 2 and len(cut["links"]) == 1
    bal = dataset.balance(ds)
    assert bal["seconds"] == {"frozen_agent": 5.0, "none": 39.0, "silent_cut": 6.0}
    # a's samples at 110..115 and 130..134, b's at 110..115
    assert bal["node_samples"]["silent_cut"] == 12 and bal["node_samples"]["frozen_agent"] == 5


def test_records_outside_the_format_are_refused(tmp_path: Path) -> None:
    for mutate in (lambda d: d.samples.append({"kind": "node", "t": 1.0}),
                   lambda d: d.labels.append({"class": "x", "start": 1}),
                   lambda d: d.meta.update(version=2),
                   lambda d: d.samples.append({"kind": "link", "t": 1.0, "node": "a", "peer": "b",
                                               "ifname": "m", "state": "up", "loss": 3})):
        ds = small()
        mutate(ds)
        with pytest.raises(jsonschema.ValidationError):
            dataset.write(ds, tmp_path / "bad")


@requires_root
def test_the_node_sampler_writes_records_of_the_format(tmp_path: Path) -> None:
    with ChaosLab(["a", "b"], [("a", "b")], tmp_path, prefix="mcs", reapers=False) as lab:
        out = tmp_path / "a.samples"
        subprocess.run(["nsenter", f"--net={netns.NETNS_DIR / lab.ns('a')}", "env",
                        f"PYTHONPATH={NODE_PACKAGE_ROOT}", sys.executable, "-m",
                        "meshcore_chaos.node.sample", "--out", str(out), "--node", "a",
                        "--seconds", "2.5", "--interval", "0.5"], check=True, timeout=120)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    nodes = [r for r in recs if r["kind"] == "node"]
    # One node record per tick, however many ticks a loaded host fitted in 2.5 s (5 idle).
    assert len(nodes) == recs[-1]["ticks"] >= 2, recs[-1]
    assert all(r["agent_up"] for r in nodes)  # the stand-in agent
    assert nodes[-1]["agent_cpu_s"] >= 0 and "ip_InReceives" in nodes[-1]
    assert recs[-1]["kind"] == "recorder" and recs[-1]["cpu_s"] < recs[-1]["wall_s"]
    ds = small()
    ds.samples = recs
    dataset.check(ds)
