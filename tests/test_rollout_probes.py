"""The rollout gate's data-plane probes: the plan (plugins/filter/meshcore_rollout.py),
the gate's judgement of their results, and playbooks/files/mesh_probe.py itself, run
in a network namespace against a black-hole route and against the namespace's own
address.

A release can be ready and fill its path table while it drops the traffic it should
forward (a black hole); only packets tell. The lab test (tests/test_rollout_lab.py)
rolls such a release and sees its canary rolled back."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from meshcore_testkit.loader import load_path
from meshcore_testkit.marks import requires_root
from meshcore_tools import ROOT, netns

gate_mod = load_path("meshcore_rollout", ROOT / "plugins/filter/meshcore_rollout.py")
plan = gate_mod.meshcore_rollout_probe_plan
gate = gate_mod.meshcore_rollout_gate

PROBE = ROOT / "playbooks/files/mesh_probe.py"
LINE = ["a", "b", "c", "d", "e"]
ADDR = {h: f"10.77.0.{i + 1}" for i, h in enumerate(LINE)}


def line_paths(hosts: list[str]) -> dict[str, Any]:
    """Each host's /v1/paths on a line: the primary next hop is the neighbour towards
    the destination."""
    out = {}
    for i, h in enumerate(hosts):
        out[h] = {"destinations": {
            d: {"primary_next_hop": hosts[i + 1] if j > i else hosts[i - 1]}
            for j, d in enumerate(hosts) if d != h}}
    return out


def test_the_plan_probes_a_wave_nodes_own_output_and_the_traffic_it_forwards() -> None:
    p = plan(line_paths(LINE), ["c"], LINE, {}, ADDR, 3, 8)
    own = [x for x in p["pairs"] if x["kind"] == "own"]
    transit = [x for x in p["pairs"] if x["kind"] == "transit"]
    assert len(own) == 3 and {x["src"] for x in own} == {"c"}
    assert all(x["dst"] != "c" and x["addr"] == ADDR[x["dst"]] for x in own)
    # traffic c forwards on a line: from b to d or e, from d to a or b
    assert len(transit) == 3
    for x in transit:
        assert x["via"] == "c" and x["src"] in ("b", "d")
        assert (x["src"], x["dst"]) in {("b", "d"), ("b", "e"), ("d", "a"), ("d", "b")}
    assert p["by_source"]["c"] == [x["addr"] for x in own]
    assert p == plan(line_paths(LINE), ["c"], LINE, {}, ADDR, 3, 8)  # deterministic


def test_a_leaf_forwards_nothing_and_hosts_without_an_address_are_never_targets() -> None:
    addresses = {**ADDR, "b": None, "d": ""}
    p = plan(line_paths(LINE), ["a"], LINE, {}, addresses, 3, 8)
    assert {x["kind"] for x in p["pairs"]} == {"own"}
    assert sorted(x["dst"] for x in p["pairs"]) == ["c", "e"]
    assert plan(line_paths(LINE), ["c"], LINE, {}, ADDR, 0, 8)["pairs"] == []


def test_transit_sources_are_capped_and_shared_between_wave_nodes() -> None:
    ring = [f"r{i}" for i in range(12)]
    paths = {h: {"destinations": {
        d: {"primary_next_hop": ring[(i + 1) % 12] if (ring.index(d) - i) % 12 <= 6
            else ring[(i - 1) % 12]} for d in ring if d != h}} for i, h in enumerate(ring)}
    addresses = {h: f"10.0.0.{i + 1}" for i, h in enumerate(ring)}
    wave = ["r0", "r3", "r6", "r9"]
    p = plan(paths, wave, ring, {}, addresses, 3, 2)
    sources = {x["src"] for x in p["pairs"] if x["kind"] == "transit"}
    assert 0 < len(sources) <= 2 and not sources & set(wave)
    for x in p["pairs"]:
        if x["kind"] == "transit":
            assert paths[x["src"]]["destinations"][x["dst"]]["primary_next_hop"] == x["via"]
    uncapped = plan(paths, wave, ring, {}, addresses, 3, 100)
    assert {x["via"] for x in uncapped["pairs"] if x["kind"] == "transit"} == set(wave)


def test_node_names_that_are_not_inventory_names() -> None:
    names = {h: f"node-{h}" for h in LINE}
    paths = {h: {"destinations": {names[d]: {"primary_next_hop": names[c["primary_next_hop"]]}
                                  for d, c in t["destinations"].items()}}
             for h, t in line_paths(LINE).items()}
    p = plan(paths, ["c"], LINE, names, ADDR, 3, 8)
    assert {x["kind"] for x in p["pairs"]} == {"own", "transit"}
    assert all(x["src"] in LINE and x["dst"] in LINE for x in p["pairs"])


def ok_sample() -> dict[str, Any]:
    return {"readyz": {"status": 200, "json": {"ready": True}}, "release": "r2",
            "target": "r2", "confirm": {"last": None}, "metrics_before": "",
            "metrics_after": ""}


def registered(result: dict[str, Any]) -> dict[str, Any]:
    return {"rc": 0, "stdout": json.dumps(result), "changed": False}


def judge(p: dict[str, Any], own: dict[str, Any], transit: dict[str, Any],
          bound: float = 0.5) -> dict[str, Any]:
    results = [{"item": {"key": src, "value": []}, **registered(r)} if "error" not in r
               else {"item": {"key": src, "value": []}, "msg": r["error"],
                     "unreachable": True} for src, r in transit.items()]
    probes = {"pairs": p["pairs"], "results": results,
              "own": {h: registered(r) for h, r in own.items()}}
    names = {h: h for h in LINE}
    v: dict[str, Any] = gate({"c": ok_sample()}, ["c"], ["c"], LINE, {"probe_loss": bound},
                             names, line_paths(LINE), None, probes)
    return v


def answers(p: dict[str, Any], src: str, received: int = 10,
            error: str | None = None) -> dict[str, Any]:
    return {x["addr"]: {"sent": 10, "received": received, "error": error}
            for x in p["pairs"] if x["src"] == src}


def test_the_gate_fails_a_black_hole_and_passes_a_lossy_link() -> None:
    p = plan(line_paths(LINE), ["c"], LINE, {}, ADDR, 2, 8)
    sources = {x["src"] for x in p["pairs"] if x["kind"] == "transit"}
    healthy = judge(p, {"c": answers(p, "c")}, {s: answers(p, s) for s in sources})
    assert healthy["ok"] and healthy["probes_checked"] == len(p["pairs"]) == 4
    lossy = judge(p, {"c": answers(p, "c", received=6)}, {s: answers(p, s) for s in sources})
    assert lossy["ok"]  # 40 % lost, bound 50 %
    hole = judge(p, {"c": answers(p, "c", 0, "ping: connect: Invalid argument")},
                 {s: answers(p, s, 0) for s in sources})
    assert not hole["ok"] and len(hole["failures"]) == 4
    own = [f for f in hole["failures"] if ", own via c" in f]
    assert len(own) == 2 and all("lost 10 of 10: ping: connect: Invalid argument" in f
                                 for f in own)
    assert any(", transit via c: lost 10 of 10 (bound 50%)" in f for f in hole["failures"])


def test_a_probe_that_did_not_run_fails_the_gate() -> None:
    p = plan(line_paths(LINE), ["c"], LINE, {}, ADDR, 1, 8)
    (src,) = {x["src"] for x in p["pairs"] if x["kind"] == "transit"}
    v = judge(p, {"c": answers(p, "c")}, {src: {"error": "Failed to connect"}})
    assert v["failures"] == [f"probe {x['src']} -> {x['dst']} ({x['addr']}), transit via c: "
                             "did not run (unreachable: Failed to connect)"
                             for x in p["pairs"] if x["kind"] == "transit"]
    v = judge(p, {}, {src: answers(p, src)})
    assert [f.split(":", 1)[1] for f in v["failures"]] == [" did not run (no result)"]


def test_no_probes_planned_checks_none() -> None:
    v = judge({"pairs": [], "by_source": {}}, {}, {})
    assert v["ok"] and v["probes_checked"] == 0


def probe(ns: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(netns.exec_argv(ns, sys.executable, str(PROBE), *args),
                         capture_output=True, text=True, check=True, timeout=60).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


@requires_root
def test_mesh_probe_against_a_black_hole_and_an_answering_address() -> None:
    ns = netns.run_tag("mcprobe")
    netns.add(ns, loopback="10.77.0.9")
    try:
        netns.ip(ns, "route", "add", "blackhole", "10.77.0.66/32")
        got = probe(ns, "--count", "3", "--interval", "0.2", "10.77.0.9", "10.77.0.66",
                    "10.77.0.77")
    finally:
        netns.delete(ns)
    assert got["10.77.0.9"] == {"sent": 3, "received": 3, "error": None}
    assert got["10.77.0.66"] == {"sent": 3, "received": 0,
                                 "error": "ping: connect: Invalid argument"}
    # no route at all in a namespace with only lo
    assert got["10.77.0.77"]["received"] == 0 and "unreachable" in got["10.77.0.77"]["error"]


def test_mesh_probe_refuses_what_is_not_an_address() -> None:
    res = subprocess.run([sys.executable, str(PROBE), "--count", "1", "10.0.0.1; reboot"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "not an IP address" in res.stderr
    res = subprocess.run([sys.executable, str(PROBE), "--interval", "0.01", "127.0.0.1"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "--interval" in res.stderr


def test_mesh_probe_parses_ping_summaries() -> None:
    mod = load_path("mesh_probe", PROBE)
    text = ("PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\n--- 10.0.0.2 ping statistics ---\n"
            "10 packets transmitted, 7 received, 30% packet loss, time 1804ms\n")
    assert mod.parse(text, 10, 1) == {"sent": 10, "received": 7, "error": None}
    busybox = "4 packets transmitted, 4 packets received, 0% packet loss\n"
    assert mod.parse(busybox, 4, 0) == {"sent": 4, "received": 4, "error": None}
    assert mod.parse("", 5, 2) == {"sent": 5, "received": 0,
                                   "error": "ping exited 2 with no output"}
