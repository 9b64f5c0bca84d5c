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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from meshcore_tools import ROOT
from meshcore_tools.lab.state import container, load_state

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
    and every event."""
    import ansible_runner
    from meshcore_tools.rollout import runner_path

    events: list[dict[str, Any]] = []

    def keep(e: dict[str, Any]) -> bool:
        events.append(e)
        return True

    tmp.mkdir(parents=True, exist_ok=True)
    r = ansible_runner.run(
        private_data_dir=str(tmp), project_dir=str(ROOT),
        playbook=str(ROOT / "playbooks/site.yml"), inventory=str(ROOT / "inventories/lab"),
        extravars=extravars, limit=limit,
        envvars={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": runner_path()},
        event_handler=keep, quiet=True)
    return int(r.rc), events


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


def current(node: str) -> str:
    """The release *node* runs (``meshctl --json release list``)."""
    return str(json.loads(on_node(node, "meshctl --json release list"))["current"])
