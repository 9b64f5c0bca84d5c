"""restart_unit on the running lab: a node starved by a runaway unit restarts it under
systemd, under a lease from the gateways' etcd over the mesh.

One node (the first that is neither a gateway nor the monitor) gets, through site.yml as
an operator would (``--limit``), the loop in ``enforce`` with the ``learned`` policy and
``mesh_agent_mapek_restart_units`` naming an application unit (a runtime unit running
``sleep`` as the agent's user: on this host's cgroup v1 the agent reads a unit's CPU from
the processes it can see; cgroup v2, as on Raspberry Pi OS, reads any unit's); the role
installs polkitd and the rule that lets the agent's user restart exactly that unit. Its
Knowledge is seeded as a node that has learned that ``restart_unit`` ends a starved node
(what a fleet's shared statistics would give it; ``bench_mapek_runaway.py`` measures the
learning itself), so the learned policy picks it. The starvation is the chaos
``runaway_unit`` fault through the node's own chaos CLI: a real-time busy loop that joins
the unit and the agent's CPU (``labctl realtime`` grants the container real-time
runtime), held at most 150 s, its deadline kept by the node's reaper. Expected: the busy
loop ended by the unit's restart before the hold, a ``starved_node`` incident decided
``restart_unit``, ``applied`` under a lease with a fencing token, and a remediation event
``done`` that names the unit, whose systemd invocation changed. Afterwards the real-time
grant is taken back and site.yml puts the node back to the lab's settings.

Slow (the lab): runs under ``make test-full``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshcore_testkit.containerlab import (
    agent_ready,
    arm_mapek,
    exec_in,
    install_chaos,
    labctl,
    runaway,
    start_app_unit,
    stop_app_unit,
    with_agent_stopped,
)
from meshcore_testkit.containerlab import site_run as lab_site_run
from meshcore_tools.lab.plan import pick_gateways
from meshcore_tools.lab.state import MONITOR, load_state

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (podman, netns)"),
]
HOG = "meshcore-lab-app.service"
STATE_DIR = "/var/lib/mesh-agent"
# A node that learned restart_unit ends a starved node, and the rule's lengthen_hello not.
SEED = ("from pathlib import Path; from mesh_agent.mapek.knowledge import Knowledge; "
        "from mesh_agent.mapek.plan import ActionStats; "
        f"k = Knowledge.in_state_dir(Path({STATE_DIR!r})); "
        "k.stats_changed('starved_node', 'restart_unit', ActionStats(40, 40, 400.0)); "
        "k.stats_changed('starved_node', 'lengthen_hello', ActionStats(40, 0, 4000.0)); "
        "k.stats_changed('starved_node', 'none', ActionStats(40, 0, 4000.0)); k.close()")
HOLD_S = 150.0
RT_US = 450_000  # the busy loop's real-time runtime per second; the rest is the agent's


def site_run(node: str, extravars: dict[str, Any], tmp: Path) -> tuple[int, list[str]]:
    """site.yml limited to *node* (and the controller's checks): rc and its last output."""
    rc, events = lab_site_run(extravars, tmp, limit=f"{node},localhost")
    return rc, [str(e.get("stdout", "")) for e in events][-30:]


def invocation(node: str) -> str:
    return exec_in(node, "systemctl", "show", "-p", "InvocationID", "--value", HOG).stdout.strip()


@pytest.fixture(scope="module")
def armed(lab: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = load_state()
    gateways = set(pick_gateways(state))
    node = next(n for n in sorted(state["nodes"]) if n not in gateways and n != MONITOR)
    tmp = tmp_path_factory.mktemp("restart-unit")
    start_app_unit(node, HOG, "an application for tests/test_lab_restart_unit.py", 900)
    try:
        arm_mapek(node, "learned", [HOG], tmp / "arm")
        seeded = with_agent_stopped(node, SEED)
        assert seeded.returncode == 0, seeded.stderr
        labctl("realtime", f"{node}={RT_US}")
        install_chaos([node])
        yield node
    finally:
        with contextlib.suppress(RuntimeError):  # every grant taken back, at best
            labctl("realtime")
        stop_app_unit(node, HOG)
        rc, out = site_run(node, {}, tmp / "disarm")  # the lab's own settings back
        assert rc == 0, out


def test_a_starved_node_restarts_the_hogging_unit_under_a_lease(armed: str) -> None:
    node = armed
    agent_ready(node, 120)
    time.sleep(25)  # the loop arms 15 s after readiness
    before = invocation(node)
    spun = runaway(node, HOG, HOLD_S, f"rt{int(time.time())}", "test_lab_restart_unit")
    assert "error" not in spun and "remove_errors" not in spun, spun
    print(json.dumps({"bench": "lab_restart_unit", "figure": "runaway_s",
                      "value": spun["runaway_s"], "hold_s": HOLD_S}))
    assert spun["ended_by"] == "restart", "the runaway was not ended by the unit's restart"
    incidents = json.loads(exec_in(node, "meshctl", "--json", "incidents").stdout)["incidents"]
    starved = [i for i in incidents if i["class"] == "starved_node"]
    assert starved, incidents
    decided = [i for i in starved if (i["action"] or {}).get("kind") == "restart_unit"]
    assert decided, starved
    assert decided[0]["action"]["outcome"] == "applied", decided
    lines = exec_in(node, "meshctl", "--json", "events", "--kind", "remediation",
                    "--limit", "50").stdout.splitlines()
    events = [json.loads(x) for x in lines if x.strip()]
    done = [e for e in events if e["reason"] == "apply:restart_unit"]
    assert done, events
    detail = done[-1]["detail"]
    print(json.dumps({"bench": "lab_restart_unit", "figure": "remediation", **{
        k: detail.get(k) for k in ("result", "unit", "why", "lease_token")}}))
    assert detail["result"] == "done" and detail["unit"] == HOG, detail
    assert isinstance(detail["lease_token"], int) and detail["lease_token"] > 0, detail
    # systemd ran the restart (its stop ends at the unit's TimeoutStopSec in the lab)
    end = time.monotonic() + 60
    while invocation(node) == before and time.monotonic() < end:
        time.sleep(1.0)
    assert invocation(node) != before
