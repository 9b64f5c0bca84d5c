"""playbooks/rollout.yml on a 4-node container lab: a good release rolls through every
wave; a broken one (its agent never becomes ready) and a black-holing one (ready, every
path in its table, but each route it installs drops traffic) each fail the canary's
gate, the canary is rolled back, and every other node's release dirs, config and units
are unchanged, byte for byte. Then a node is switched to a release it never confirmed
and cut off from the mesh at once: its own commit-confirm reverts it, with no
controller contact, and the time is measured.

Both releases are the lab's own agent bundle re-packed under a new release id and
version (the broken ones edited by meshcore_testkit.releases.repack), signed with
THROWAWAY keys made for this run, and rolled by meshcore-rollout (ansible-runner),
whose JSON report the assertions read.

Slow (a lab plus two rollouts, several minutes on 2 cores): runs under `make test-full`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshcore_testkit.containerlab import (
    LAB_ROLLOUT_VARS,
    current,
    exec_in,
    install_chaos,
    lab_up,
    on_node,
)
from meshcore_testkit.containerlab import chaos_nodes as lab_chaos_nodes
from meshcore_testkit.releases import (
    _EDITS,
    BROKEN_READINESS,
    fake_bundle,
    keys_json,
    lab_bundle,
    lab_release,
    release_tarball,
    repack,
    throwaway_keys,
)
from meshcore_tools import ROOT, rollout
from meshcore_tools.chaos import faults
from meshcore_tools.chaos import nodes as chaos_nodes
from meshcore_tools.lab.state import INVENTORY, load_state
from meshcore_tools.release import sign as signing

HASHED = ("/opt/mesh-agent", "/etc/mesh-agent", "/etc/systemd/system/mesh-agent.service",
          "/etc/systemd/system/mesh-release-confirm.service")


@pytest.fixture(scope="module")
def lab4() -> Iterator[None]:
    yield from lab_up(4, "grid")


def snapshot(node: str) -> str:
    """Every file's hash and every link's target under the node's release dirs, config
    and units."""
    paths = " ".join(HASHED)
    return on_node(node, f"find {paths} -type f -print0 | sort -z | xargs -0 sha256sum; "
                         f"find {paths} -type l -printf '%p -> %l\\n' | sort")


def test_the_lab_releases_are_whole_and_verify(tmp_path: Path) -> None:
    """Without a lab: the re-packed broken release and its tarball pass the controller's
    verifier, with the venv moved to the new id and readiness broken."""
    from mesh_agent.release.verify import Accept, TrustPolicy, parse_signatures

    old, new = "0" * 16, "b" * 16
    data = repack(fake_bundle(tmp_path, old), old, new, "90.0.2", broken=True)
    keys = throwaway_keys()
    tgz = release_tarball(tmp_path, data, new, "90.0.2", keys)
    trust = TrustPolicy.from_json(keys_json(keys))
    sigs = parse_signatures((tmp_path / "mesh-core-v90.0.2.manifest.json.sigs").read_text())
    verdict = signing.verify_release(
        tgz, sigs, trust, (tmp_path / "mesh-core-v90.0.2.manifest.json").read_bytes())
    assert isinstance(verdict, Accept), verdict
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar if m.isfile()}
    site = f"opt/mesh-agent/releases/{new}/venv/lib/python3.11/site-packages/mesh_agent"
    assert got[f"opt/mesh-agent/releases/{new}/venv/bin/meshctl"].startswith(
        f"#!/opt/mesh-agent/releases/{new}/".encode())
    assert b'__version__ = "90.0.2"' in got[f"{site}/__init__.py"]
    assert BROKEN_READINESS in got[f"{site}/view.py"]
    # the bytecode of the edited sources only is left out
    assert sorted(n.rsplit("/", 1)[1] for n in got if "__pycache__" in n) == [
        "api.cpython-311.opt-2.pyc", "netlink.cpython-311.opt-2.pyc"]
    hole = repack(fake_bundle(tmp_path, old), old, "c" * 16, "90.0.3", blackhole=True)
    with tarfile.open(fileobj=io.BytesIO(hole)) as tar:
        got = {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar if m.isfile()}
    netlink = got[f"{site.replace(new, 'c' * 16)}/routes/netlink.py"]
    assert netlink.count(b"a deliberately black-holing release") == 2
    assert sorted(n.rsplit("/", 1)[1] for n in got if "__pycache__" in n) == [
        "api.cpython-311.opt-2.pyc", "view.cpython-311.opt-2.pyc"]


def test_the_broken_releases_edits_still_match_the_agents_sources() -> None:
    """Each edit that makes a broken release finds its line in today's agent, so a
    refactor fails here, in make test, and not in the slow lab test."""
    site = ROOT / "files/mesh_agent/mesh_agent"
    for kind, files in _EDITS.items():
        for source, changes in files.items():
            text = (site / source).read_bytes()
            for before, _ in changes:
                assert text.count(before) == 1, (kind, source, before)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (podman, netns)")
@pytest.mark.skipif(shutil.which("podman") is None, reason="the lab needs podman")
def test_good_release_rolls_through_and_broken_canary_is_rolled_back(
        lab4: None, tmp_path: Path) -> None:
    inventory = yaml.safe_load(INVENTORY.read_text())
    nodes = list(inventory["all"]["children"]["mesh_nodes"]["hosts"])
    assert len(nodes) == 4
    _, old = lab_bundle()
    keys = throwaway_keys()
    keys_file = tmp_path / "release-keys.json"
    keys_file.write_text(keys_json(keys))
    good_id, bad_id, hole_id = "a" * 16, "b" * 16, "c" * 16
    good = lab_release(tmp_path, good_id, "90.0.1", keys)
    bad = lab_release(tmp_path, bad_id, "90.0.2", keys, broken=True)
    hole = lab_release(tmp_path, hole_id, "90.0.3", keys, blackhole=True)
    extra = LAB_ROLLOUT_VARS

    rc, report = rollout.run(INVENTORY, good, keys_file, extravars=extra, hosts_all=nodes)
    (tmp_path / "good.json").write_text(json.dumps(report, indent=2))
    assert rc == 0 and report["status"] == "completed", json.dumps(report, indent=2)[-4000:]
    assert [len(w["hosts"]) for w in report["waves"]] == [1, 3]
    # the data-plane probes ran and passed in every wave
    assert all(w["gate"]["probes_checked"] > 0 for w in report["waves"]), report["waves"]
    good_waves_s = [w["duration_s"] for w in report["waves"]]
    assert all(current(n) == good_id for n in nodes)
    # Each node confirmed the switch by itself, having reached another gateway (the site
    # config's default reach targets: the lab's gateways but the node itself).
    deadline = time.monotonic() + 130
    for n in nodes:
        while (st := json.loads(on_node(n, "meshctl --json release confirm-status")))["pending"]:
            assert time.monotonic() < deadline, (n, st)
            time.sleep(2)
        assert good_id in st["confirmed"], (n, st)
        assert "controller/gateway reached" in json.dumps(st["last"]), (n, st)
    before = {n: snapshot(n) for n in nodes}

    def canary_rolled_back(tarball: Path, label: str) -> dict[str, Any]:
        """Roll *tarball*: its canary's gate fails, the canary is back on the good
        release, and no other node was reached or changed. The canary's wave."""
        rc, report = rollout.run(INVENTORY, tarball, keys_file, extravars=extra,
                                 hosts_all=nodes)
        (tmp_path / f"{label}.json").write_text(json.dumps(report, indent=2))
        assert rc != 0 and report["status"] == "stopped", json.dumps(report, indent=2)[-4000:]
        (wave,) = report["waves"]
        canary = wave["hosts"][0]
        assert wave["status"] == "rolled_back" and wave["hosts"] == [canary]
        assert report["hosts"][canary]["status"] == "rolled_back"
        assert current(canary) == good_id
        for n in nodes:
            if n != canary:
                assert report["hosts"][n]["status"] == "not_reached"
                assert snapshot(n) == before[n], f"{n} changed outside the canary wave"
        return dict(wave)

    wave = canary_rolled_back(bad, "broken")
    canaries = set(wave["hosts"])
    assert any("not ready" in f for f in wave["gate"]["failures"]), wave["gate"]
    broken_gate_s = wave["gate_after_switch_s"]

    # ready, every path in its table, and dropping all it sends or forwards: only the
    # data-plane probes see it
    wave = canary_rolled_back(hole, "blackhole")
    canaries |= set(wave["hosts"])
    failures = wave["gate"]["failures"]
    assert failures and all(f.startswith("probe ") for f in failures), failures
    assert any(", own via " in f for f in failures), failures
    hole_gate_s = wave["gate_after_switch_s"]

    # an isolated canary reverts by itself: a node still on its first (never confirmed)
    # release beside the good one is switched back to it, which arms the commit-confirm,
    # and is cut off from every neighbour right after; nothing but the node decides
    node = next(n for n in nodes if n not in canaries)
    isolated = isolated_canary_reverts(node, old, good_id)
    print(json.dumps({"good_waves_s": good_waves_s, "canary_gate_after_switch_s": broken_gate_s,
                      "blackhole_gate_after_switch_s": hole_gate_s,
                      "blackhole_failures": failures, "isolated_canary": isolated}))


def isolated_canary_reverts(node: str, first: str, good: str) -> dict[str, Any]:
    """Switch *node* to *first* (installed, never confirmed: the switch arms the
    commit-confirm with the role's window), cut every link of the node with the chaos
    tools' partition fault (journalled, with a node-side deadline), and wait, reading only
    the node's own files, until it is back on *good*. The figures: seconds from the switch
    to the revert, the window, and seconds from the links' return to the agent ready."""
    settings = json.loads(on_node(node, "cat /etc/mesh-agent/release-confirm.json"))
    window = float(settings["window_s"])
    state = load_state()
    topo = faults.Topo(state)
    fault = faults.Fault("partition", (node,), "isolate-canary")
    plan = faults.plan(fault, topo)
    chaos = lab_chaos_nodes()
    install_chaos(plan)  # the node side of the chaos tools and its reaper timer
    t0 = time.monotonic()
    switched = json.loads(on_node(node, f"meshctl --json release use {first}"))
    assert switched["confirm_within"] == window, switched
    done = chaos_nodes.inject(chaos, fault, plan, time.time() + window + 120, "rollout-lab")
    isolated_after = time.monotonic() - t0
    try:
        assert all(r.ok for r in done), [r.data for r in done]
        reverted = recorded = None
        status: dict[str, Any] = {}
        while time.monotonic() - t0 < window + 90:
            if reverted is None and current(node) == good:
                reverted = time.monotonic() - t0
            if reverted is not None:
                # the watcher switches first, restarts the agent (Type=notify: until the
                # previous release's READY=1), then records the revert
                status = json.loads(on_node(node, "meshctl --json release confirm-status"))
                if status["pending"] is None:
                    recorded = time.monotonic() - t0
                    break
            time.sleep(1)
    finally:
        chaos_nodes.remove(chaos, fault, plan)
    assert reverted is not None and recorded is not None, status
    assert status["pending"] is None and status["last"]["outcome"] == "reverted", status
    assert status["last"]["release"] == first, status
    assert not chaos_nodes.leftovers(chaos, list(plan)), "the isolation was left behind"
    t1 = time.monotonic()
    ready = None
    while time.monotonic() - t1 < 120:
        if exec_in(node, "meshctl", "status", timeout=60).returncode == 0:
            ready = time.monotonic() - t1
            break
        time.sleep(1)
    assert ready is not None, f"{node} not ready 120 s after its links came back"
    # the node's own figure: when `current` was re-pointed (the link's mtime), from the
    # switch time the watcher recorded; the poll above is ~1 s coarse
    flipped = float(on_node(node, "python3 -c 'import os; "
                                  "print(os.lstat(\"/opt/mesh-agent/current\").st_mtime)'"))
    on_node_s = flipped - float(status["last"]["switched_at"])
    return {"node": node, "window_s": window, "isolated_after_switch_s": round(isolated_after, 1),
            "reverted_after_switch_s": round(reverted, 1),
            "current_repointed_after_switch_s": round(on_node_s, 2),
            "revert_recorded_after_switch_s": round(recorded, 1),
            "reason": status["last"].get("reason"),
            "ready_after_links_back_s": round(ready, 1)}
