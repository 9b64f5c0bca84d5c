"""The self-healing loop end to end: two real agents in namespaces, a lossy link.

n0 --- n1, both agents in enforce mode with ``mapek`` enforcing. An nft
``numgen`` drop on n1's end of the link (40 % of what arrives, as the chaos
suite's ``lossy`` fault) makes n1's Monitor see the loss; n1 opens a
``lossy_link`` incident on ``link:n0`` and quarantines it (its advert gives
the link the quarantine cost). Once the drop is removed the incident
recovers with an MTTR and, after the damping's hold, the cost is released.

Timers: 40 % loss kills a link after dead_multiplier unanswered echo probes in a
row (0.4^3 per probe at 20 probes/s: a flap every few seconds), so this test
uses dead_multiplier 10 (one death expected in hours).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshcore_testkit.agents import AgentMesh, api, metric
from meshcore_testkit.marks import requires_root
from meshcore_testkit.pki import CA
from meshcore_tools.netns import silent_cut

from mesh_agent.mapek.execute import MAX_HOLD_S, QUARANTINE_COST
from mesh_agent.mapek.loop import START_SETTLE_S

pytestmark = [requires_root, pytest.mark.slow]

MAPEK = {"mapek": {"enabled": True, "mode": "enforce", "policy": "fixed", "interval_s": 1.0}}


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[AgentMesh]:
    mesh = AgentMesh(2, [(0, 1)], tmp_path_factory.mktemp("mapek"), prefix="mak",
                     dead_multiplier=10, ca=ca)
    try:
        mesh.lab.up()
        mesh.start_agents(ca, {"n0": MAPEK, "n1": MAPEK})
        yield mesh
    finally:
        mesh.destroy()


def get(ns: str, path: str) -> dict:
    code, body = api(ns, path)
    assert code == 200, (path, code, body)
    return json.loads(body)


def wait(pred, timeout: float, what: str, every: float = 0.5):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def cost_n1_gives_n0(ns: str) -> float | None:
    nbs = get(ns, "/v1/neighbors")["neighbors"]
    n0 = [n for n in nbs if n["name"] == "n0" and n["state"] == "up"]
    return n0[0]["cost"] + n0[0]["penalty"] if n0 else None


def lossy(ns: str, query: str = "") -> list[dict]:
    """The node's lossy_link incidents."""
    return [i for i in get(ns, "/v1/incidents" + query)["incidents"]
            if i["class"] == "lossy_link"]


def edge_cost(ns: str) -> float | None:
    """The n0-n1 edge in n0's LSDB graph: n1's advert has reached n0."""
    for e in get(ns, "/v1/topology")["edges"]:
        if {e["a"], e["b"]} == {"n0", "n1"}:
            return float(e["cost"])
    return None


def test_a_lossy_link_is_quarantined_then_released_with_an_mttr(pair: AgentMesh) -> None:
    n0, n1 = pair.nodes
    pair.wait_for(pair.converged, 60, "both agents ready with a route to each other")
    # The loops arm once their node has been ready for START_SETTLE_S (15 s).
    for node in pair.nodes:
        wait(lambda ns=node.ns: get(ns, "/v1/incidents")["armed"], START_SETTLE_S + 30,
             f"{node.name}'s loop to arm")
    assert lossy(n1.ns) == []

    ifname = pair.ifname[(1, 0)]
    silent_cut(n1.ns, ifname, True, loss_pct=40)
    inc = wait(lambda: lossy(n1.ns, "?open=true"), 30, "a lossy_link incident on n1")[0]
    assert inc["class"] == "lossy_link" and inc["target"] == "link:n0"
    assert inc["action"] == {"kind": "quarantine_link", "outcome": "applied"}
    assert wait(lambda: (c := cost_n1_gives_n0(n1.ns)) is not None and c >= QUARANTINE_COST,
                10, "n1 to give the link the quarantine cost")
    # Flooded: n0's LSDB holds n1's advert with the raised cost (an edge's cost in the
    # graph is the larger of the two directions', so every node's paths see it).
    wait(lambda: (c := edge_cost(n0.ns)) is not None and c >= QUARANTINE_COST, 10,
         "n1's raised cost in n0's graph")
    events = get(n1.ns, "/v1/events?kind=remediation")["events"]
    assert [(e["subject"], e["reason"]) for e in events] == [("link:n0",
                                                              "apply:quarantine_link")]

    silent_cut(n1.ns, ifname, False)
    t_clean = time.monotonic()
    done = wait(lambda: [i for i in lossy(n1.ns)
                         if i["id"] == inc["id"] and i["state"] == "recovered"], 30,
                "the incident to recover")[0]
    assert done["mttr_seconds"] is not None and done["mttr_seconds"] > 0
    # Released with hysteresis: after the recovery, within the damping's longest hold.
    wait(lambda: cost_n1_gives_n0(n1.ns) is not None and cost_n1_gives_n0(n1.ns) < 10,
         MAX_HOLD_S + 20, "the quarantine to be released")
    assert time.monotonic() - t_clean < MAX_HOLD_S + 20
    events = get(n1.ns, "/v1/events?kind=remediation")["events"]
    assert [e["reason"] for e in events] == ["apply:quarantine_link", "undo:quarantine_link"]
    assert events[1]["detail"]["reason"] == "released"
    metrics = api(n1.ns, "/metrics")[1]
    assert 'meshcore_incidents_total{class="lossy_link"} 1.0' in metrics
    assert 'meshcore_mttr_seconds_count{class="lossy_link"} 1.0' in metrics
    assert ('meshcore_remediation_actions_total{action="quarantine_link",outcome="applied"} 1.0'
            in metrics)
    # n0 saw a clean link the whole time (only n1's ingress drops): no lossy link there.
    # Other classes (a starved node on a loaded test machine) are printed, not failed.
    assert lossy(n0.ns) == []
    print({n.name: [(i["class"], i["target"], i["mttr_seconds"]) for i in
                    get(n.ns, "/v1/incidents")["incidents"]] for n in pair.nodes})
    # Knowledge is in n1's state_dir, next to the event log.
    assert (Path(pair.base) / "n1" / "agent.db").exists()


def test_in_a_maintenance_window_a_lossy_link_is_recorded_then_quarantined_after_it(
        pair: AgentMesh) -> None:
    """The same fault, n1's window opened by meshctl as root would (the file in its state
    directory): the incident is recorded, the link keeps its cost; the window closed, the
    loop quarantines it at its next sample."""
    from mesh_agent.mapek import maintenance

    _, n1 = pair.nodes
    pair.wait_for(pair.converged, 60, "both agents ready with a route to each other")
    for node in pair.nodes:
        wait(lambda ns=node.ns: get(ns, "/v1/incidents")["armed"], START_SETTLE_S + 30,
             f"{node.name}'s loop to arm")
    state_dir = Path(pair.base) / "n1"
    window = maintenance.window(600, "netns test", time.time())
    maintenance.write(state_dir, window)
    wait(lambda: get(n1.ns, "/v1/incidents")["maintenance"] is not None, 10,
         "n1's loop to see the window")
    ifname = pair.ifname[(1, 0)]
    silent_cut(n1.ns, ifname, True, loss_pct=40)
    try:
        inc = wait(lambda: lossy(n1.ns, "?open=true"), 30, "a lossy_link incident on n1")[0]
        assert inc["action"] == {"kind": "none", "outcome": "maintenance"}
        time.sleep(5)  # samples in the window: still nothing done
        assert (c := cost_n1_gives_n0(n1.ns)) is not None and c < QUARANTINE_COST
        assert get(n1.ns, "/v1/events?kind=remediation")["events"] == []
        maintenance.clear(state_dir)
        wait(lambda: (c := cost_n1_gives_n0(n1.ns)) is not None and c >= QUARANTINE_COST, 10,
             "n1 to quarantine the link once the window closed")
        [after] = [i for i in lossy(n1.ns) if i["id"] == inc["id"]]
        assert after["action"] == {"kind": "quarantine_link", "outcome": "applied"}
        kinds = [e["reason"] for e in get(n1.ns, "/v1/events?kind=maintenance")["events"]]
        assert kinds == ["open", "closed"]
    finally:
        silent_cut(n1.ns, ifname, False)


def test_a_remote_link_that_flaps_opens_no_route_churn_away_from_it(
        tmp_path_factory: pytest.TempPathFactory, ca: CA) -> None:
    """n0 - n1 - n2 - n3: n2-n3 flaps (both ends cut 1 s in every 2.5 s, for 60 s). Every
    node's graph changes with it, past the churn threshold read raw; n0 and n1 see only the
    adverts and have nothing to do about it, so they open no route_churn (the changes of
    one noisy edge are left out of the reading, session 52). The link's ends (observing,
    so the hold-down does not stop the flapping) have it as their flapping_link."""
    from mesh_agent.mapek.monitor import DEFAULT_BOUNDS, Signal

    observe = {"mapek": {**MAPEK["mapek"], "mode": "observe"}}
    mesh = AgentMesh(4, [(0, 1), (1, 2), (2, 3)], tmp_path_factory.mktemp("churn"),
                     prefix="mach", ca=ca)
    try:
        mesh.lab.up()
        mesh.start_agents(ca, {"n0": MAPEK, "n1": MAPEK, "n2": observe, "n3": observe})
        mesh.wait_for(mesh.converged, 90, "every agent ready with a route to every other")
        for node in mesh.nodes:
            wait(lambda ns=node.ns: get(ns, "/v1/incidents")["armed"], START_SETTLE_S + 60,
                 f"{node.name}'s loop armed")
        ends = [(mesh.nodes[2].ns, mesh.ifname[(2, 3)]), (mesh.nodes[3].ns, mesh.ifname[(3, 2)])]
        changes0, t0 = metric(mesh.nodes[0].ns, "meshcore_topology_changes_total"), time.time()
        try:
            while time.time() - t0 < 60.0:
                for ns, ifname in ends:
                    silent_cut(ns, ifname, True)
                time.sleep(1.0)
                for ns, ifname in ends:
                    silent_cut(ns, ifname, False)
                time.sleep(1.5)
        finally:
            for ns, ifname in ends:
                silent_cut(ns, ifname, False)
        raw = (metric(mesh.nodes[0].ns, "meshcore_topology_changes_total") - changes0) / (
            time.time() - t0) * 60.0
        assert raw > DEFAULT_BOUNDS[Signal.CHURN].default, (
            f"the flapping changed n0's graph {raw:.1f} times a minute: too few to test")
        time.sleep(10.0)  # two more samples of the rate window
        for node in mesh.nodes[:2]:
            churn = [i for i in get(node.ns, "/v1/incidents")["incidents"]
                     if i["class"] == "route_churn" and i["detected_wall"] >= t0]
            assert churn == [], (node.name, churn, f"raw churn {raw:.1f}/min")
        flapping = [i for node in mesh.nodes[2:] for i in get(node.ns, "/v1/incidents")["incidents"]
                    if i["class"] == "flapping_link" and i["detected_wall"] >= t0]
        assert flapping, "neither end of n2-n3 saw it flap"
    finally:
        mesh.destroy()
