"""The container lab (`make lab`) for the slow tests that run on it: up and down, a
shell script in a node's container, a node's current release.

Shared by the lab tests (tests/test_rollout_*.py, test_lab_*.py); the containers are
named by :func:`meshcore_tools.lab.state.container`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from meshcore_tools import ROOT
from meshcore_tools.chaos import faults
from meshcore_tools.chaos.faults import Fault, Options, Topo
from meshcore_tools.chaos.nodes import Nodes, inject, remove, wrapper_nodes
from meshcore_tools.lab.state import container, load_state

# The agent as the chaos faults find it on a lab node (systemd's mesh-agent.service).
LAB_AGENT = Options(agent_match=faults.UNIT_AGENT_MATCH)
AGENT_PYTHON = "/opt/mesh-agent/current/bin/python"

# meshcore-rollout's extra variables for a 4-node lab: a canary, then the rest; a short
# soak and readiness wait.
LAB_ROLLOUT_VARS = {"mesh_rollout_serial": [1, "100%"], "rollout_soak_s": 15,
                    "rollout_ready_timeout_s": 60}


def make(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess[str]:
    """``make -C <checkout> ARGS`` without colours, its output captured."""
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}
    return subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def lab_up(nodes: int, topology: str = "grid") -> Iterator[None]:
    """For a fixture (``yield from``): ``make lab NODES=nodes TOPOLOGY=topology``, then
    ``make lab-destroy`` at teardown."""
    res = make("lab", f"NODES={nodes}", f"TOPOLOGY={topology}")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    yield
    make("lab-destroy")


def install_chaos(nodes: Iterable[str]) -> None:
    """The node side of the chaos tools and its reaper timer on *nodes*, as ``make chaos``
    installs them (``playbooks/chaos.yml --tags install``); a failure says what it said."""
    res = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i",
         str(ROOT / "inventories" / "lab"), "playbooks/chaos.yml", "--tags", "install", "-e",
         f"chaos_hosts={','.join(nodes)}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"})
    if res.returncode != 0:
        raise RuntimeError("installing the chaos node side: "
                           + res.stdout[-3000:] + res.stderr[-2000:])


def chaos_nodes() -> Nodes:
    """The lab nodes' chaos CLI (the chaos_reaper role's wrapper, through podman exec)."""
    return wrapper_nodes(lambda n: ["podman", "exec", "-i", container(n)])


def labctl(*args: str) -> str:
    """``labctl ARGS`` from this venv; its stdout (a failure raises with what it said)."""
    res = subprocess.run([sys.executable, "-m", "meshcore_tools.lab", *args],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"labctl {' '.join(args)}: "
                           f"{res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def start_app_unit(node: str, unit: str, description: str, runtime_max_s: int) -> None:
    """An application stand-in on *node*: a runtime unit running ``sleep`` as the agent's
    user (on cgroup v1 the agent reads a unit's CPU from the processes it can see),
    (re)started; bounded by ``RuntimeMaxSec=``. systemd in a podman container on cgroup
    v1 does not see the cgroup empty when a process that is not the main one (the
    runaway_unit fault's busy loop) dies, so a restart's stop ends at ``TimeoutStopSec``."""
    text = (f"[Unit]\nDescription={description}\n[Service]\nUser=meshcore\n"
            f"ExecStart=/bin/sleep infinity\nRuntimeMaxSec={runtime_max_s}\n"
            "TimeoutStopSec=5\n")
    res = exec_in(node, "sh", "-c", f"printf %s \"$0\" > /run/systemd/system/{unit} && "
                  f"systemctl daemon-reload && systemctl restart {unit}", text)
    if res.returncode != 0:
        raise RuntimeError(f"{node}: starting {unit}: {res.stderr}")


def stop_app_unit(node: str, unit: str) -> None:
    exec_in(node, "sh", "-c", f"systemctl stop {unit}; rm -f /run/systemd/system/{unit}; "
            "systemctl daemon-reload")


def arm_mapek(node: str, policy: str, restart_units: list[str], tmp: Path) -> None:
    """site.yml ``--limit`` *node*: the loop enforcing with *policy* and *restart_units*
    allowlisted, as an operator would (a failure raises with site.yml's last output)."""
    rc, events = site_run({"mesh_agent_mapek_enabled": True, "mesh_agent_mapek_mode": "enforce",
                           "mesh_agent_mapek_policy": policy,
                           "mesh_agent_mapek_restart_units": restart_units},
                          tmp, limit=f"{node},localhost")
    if rc != 0:
        raise RuntimeError(f"arming {node}: site.yml rc {rc}: "
                           f"{[str(e.get('stdout', '')) for e in events][-30:]}")


def with_agent_stopped(node: str, code: str) -> subprocess.CompletedProcess[str]:
    """*code* run by the agent's Python as its user (its Knowledge, say), the agent stopped
    meanwhile and started again; the caller reads the return code."""
    exec_in(node, "systemctl", "stop", "mesh-agent.service")
    try:
        return exec_in(node, "setpriv", "--reuid=meshcore", "--regid=meshcore",
                       "--init-groups", AGENT_PYTHON, "-c", code)
    finally:
        exec_in(node, "systemctl", "start", "mesh-agent.service")


def agent_ready(node: str, timeout: float = 120) -> None:
    """Until *node*'s agent answers its API again (``meshctl incidents``), else raise."""
    end = time.monotonic() + timeout
    while exec_in(node, "meshctl", "--json", "incidents").returncode != 0:
        if time.monotonic() > end:
            raise RuntimeError(f"{node}: the agent's API did not come back")
        time.sleep(2)


def runaway(node: str, unit: str, hold_s: float, fault_id: str, experiment: str,
            cpu: int | str = "last", nodes: Nodes | None = None) -> dict[str, Any]:
    """The chaos ``runaway_unit`` fault on *node*'s *unit*, watched once a second until the
    busy loop ends (the unit restarted) or *hold_s* passes, then removed. Returns
    ``injected_wall``, ``runaway_s`` and ``ended_by`` (restart | removal), or ``error``
    (the injection refused); ``remove_errors`` if the removal said so."""
    nodes = nodes or chaos_nodes()
    fault = Fault("runaway_unit", (node,), fault_id,
                  {"unit": unit, "cpu": cpu, "seconds": hold_s + 30})
    plan = faults.plan(fault, Topo(load_state()), LAB_AGENT)
    t0 = time.time()
    res = inject(nodes, fault, plan, t0 + hold_s + 60, experiment)
    out: dict[str, Any] = {"injected_wall": t0}
    if not all(r.ok for r in res):
        out["error"] = [r.data for r in res]
        return out
    try:
        while time.time() - t0 < hold_s:
            if exec_in(node, "pgrep", "-f", f"meshcore_chaos:{fault.id}").returncode != 0:
                out["runaway_s"], out["ended_by"] = round(time.time() - t0, 1), "restart"
                return out
            time.sleep(1.0)
        out["runaway_s"], out["ended_by"] = round(time.time() - t0, 1), "removal"
        return out
    finally:
        removed = remove(nodes, fault, plan)
        if not all(r.data.get("ok") for r in removed):
            out["remove_errors"] = [r.data for r in removed]


def running_lab_state() -> dict[str, Any]:
    """The plan of the lab ``make lab`` built (build/lab/state.yml), once every node's
    container is running (a failure names those that are not)."""
    state = load_state()
    running = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True,
                             text=True, check=True).stdout.split()
    missing = [n for n in state["nodes"] if container(n) not in running]
    assert not missing, f"lab containers not running: {missing}"
    return state


def site_run(extravars: dict[str, Any], tmp: Path, limit: str = "mesh_nodes,localhost"
             ) -> tuple[int, list[dict[str, Any]]]:
    """site.yml on the running lab (inventories/lab, *limit*), with ansible-runner: its rc
    and every event. Ctrl-C stops ansible-playbook first, then reaches the caller as it
    would have without the run (KeyboardInterrupt, or the caller's own handler)."""
    from meshcore_tools.playbook import run_playbook

    events: list[dict[str, Any]] = []

    def keep(e: dict[str, Any]) -> bool:
        events.append(e)
        return True

    r = run_playbook("playbooks/site.yml", ROOT / "inventories/lab", tmp, extravars=extravars,
                     limit=limit, event_handler=keep)
    r.deliver()
    return r.rc, events


def exec_in(node: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """*argv* run in *node*'s container (podman exec), its output captured; the caller
    reads the return code."""
    return subprocess.run(["podman", "exec", container(node), *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def on_node(node: str, script: str) -> str:
    """*script* run by ``sh -c`` in *node*'s container; its stdout (a failure raises)."""
    res = exec_in(node, "sh", "-c", script, timeout=300)
    res.check_returncode()
    return res.stdout


def loop_view(node: str, limit: int = 1000) -> dict[str, Any]:
    """*node*'s self-healing loop as ``meshctl --json incidents`` shows it: the newest
    *limit* incidents, ``action_stats`` (what it learned), thresholds; empty when its
    agent does not answer."""
    res = exec_in(node, "meshctl", "--json", "incidents", "--limit", str(limit))
    return dict(json.loads(res.stdout)) if res.returncode == 0 else {}


def incidents(node: str, limit: int = 1000) -> list[dict[str, Any]]:
    """*node*'s newest *limit* incidents (:func:`loop_view`); none when its agent does not
    answer."""
    return list(loop_view(node, limit).get("incidents", []))


def charges(node: str, limit: int = 200) -> list[dict[str, Any]]:
    """The collateral charges *node*'s loop made (``remediation`` events whose reason is
    ``charge:<action>``), newest *limit* remediation events searched, each its detail with
    the event's wall time."""
    res = exec_in(node, "meshctl", "--json", "events", "--kind", "remediation",
                  "--limit", str(limit))
    if res.returncode != 0:
        return []
    events = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return [{**e["detail"], "wall": e["wall"]} for e in events
            if str(e.get("reason", "")).startswith("charge:")]


def current(node: str) -> str:
    """The release *node* runs (``meshctl --json release list``)."""
    return str(json.loads(on_node(node, "meshctl --json release list"))["current"])
