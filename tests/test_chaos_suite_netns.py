"""A short chaos suite with real agents on a 10-node netns lab (make test-full).

The runner drives real faults (silent cut, link down, node crash with the
node silenced, frozen agent) into ten enforce-mode agents on a random
geometric graph, probes the farthest pair at 10 ms, and must come back with
a valid journal, the steady state holding after, every fault measured, and
nothing left on any node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from meshcore_testkit.marks import requires_root
from meshcore_testkit.pki import CA
from meshcore_testkit.routers import RoutingLab
from meshcore_tools.chaos import experiment, journal, routes
from meshcore_tools.chaos.faults import Options, Topo
from meshcore_tools.chaos.mesh import Mesh, netns_mesh
from meshcore_tools.chaos.nodes import leftovers
from meshcore_tools.chaos.runner import Runner, usable_links
from meshcore_tools.lab import topology

pytestmark = [requires_root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RoutingLab, Mesh]]:
    state = topology.normalise(topology.build("rgg", 10, seed=2))
    lab = RoutingLab(state, tmp_path_factory.mktemp("suite"), prefix="mct")
    mesh = netns_mesh(state, lab.ns, lab.workdir / "journal")
    try:
        lab.up()
        lab.start_agent(CA.create("suite CA"))
        yield lab, mesh
    finally:
        mesh.close()
        lab.down()


def test_short_suite_on_ten_agents(lab: tuple[RoutingLab, Mesh], tmp_path: Path) -> None:
    rl, mesh = lab
    exp = experiment.validate({
        "version": 1, "title": "short suite", "seed": 5,
        "steady_state": {"timeout_s": 90},
        "faults": [
            {"class": "silent_cut", "duration_s": 3, "repetitions": 2, "settle_s": 3},
            {"class": "link_down", "duration_s": 3, "settle_s": 3},
            {"class": "node_crash", "duration_s": 3, "settle_s": 5, "params": {"mode": "node"}},
            {"class": "frozen_agent", "duration_s": 3, "settle_s": 5},
        ],
    })
    opts = Options(restart_by_node=dict(rl.argv), restart_log=str(tmp_path / "restarted.log"))
    doc = Runner(exp, mesh, opts, name="suite").run().journal
    journal.check(doc)
    assert doc["status"] == "completed", doc["steady_states"]["before"]
    assert doc["deviated"] is False, doc["steady_states"]["after"]
    steps = doc["measurements"]["steps"]
    assert len(steps) == 5 and not [s for s in steps if s.get("skipped")], steps
    for s in steps:
        rec = next(iter(s["recover_s"].values()))
        assert rec is not None, s  # the flow came back while the fault held
        if s["class"] in ("silent_cut", "link_down"):
            # Seen in the agents' own event logs (how fast is a benchmark's question).
            assert s["detect_s"] is not None, s
    assert leftovers(mesh.nodes, list(rl.state["nodes"])) == {}
    t = Topo(rl.state)
    assert routes.picture(mesh.hops(), t.graph, usable_links(t, None)).converged
