"""Where the lab keeps its state, and how the objects it creates are named.

Every object the lab creates carries the ``meshcore-lab`` name prefix or the
``io.meshcore.lab`` label, and ``labctl destroy`` removes only those.
"""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from meshcore_tools import ROOT, netns

STATE_DIR = ROOT / "build" / "lab"
STATE = STATE_DIR / "state.yml"
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
PREFIX = "meshcore-lab"
NETWORK = f"{PREFIX}-mgmt"
LABEL = "io.meshcore.lab"
# Which plan (topology + checkout) a container was started for: a lab left up by
# another checkout or another plan must not be taken for this one.
PLAN_LABEL = f"{LABEL}.plan"
NS_PREFIX = "mclab-"
MONITOR = "monitor01"


def sh(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """netns.run, with a failure turned into a one-line labctl error."""
    try:
        return netns.run(*argv, check=check, input=input)
    except RuntimeError as exc:
        raise SystemExit(f"labctl: {exc}") from exc


def load_state() -> dict[str, Any]:
    if not STATE.exists():
        raise SystemExit("labctl: no lab planned yet; run `make lab` first")
    data: dict[str, Any] = yaml.safe_load(STATE.read_text())
    return data


def container(node: str) -> str:
    return f"{PREFIX}-{node}"


def ns(name: str) -> str:
    """The name under /run/netns of a node container's network namespace."""
    return NS_PREFIX + name


def pid_of(name: str) -> int:
    out = sh("podman", "inspect", "-f", "{{.State.Pid}}", container(name)).stdout.strip()
    if not out.isdigit() or out == "0":
        raise SystemExit(f"labctl: container {container(name)} is not running")
    return int(out)


def pids_of(names: list[str]) -> dict[str, int]:
    """Host PIDs of the containers' systemd, in one podman call (running ones only)."""
    out = sh("podman", "inspect", "-f", "{{.Name}} {{.State.Pid}}",
             *[container(n) for n in names], check=False).stdout
    by_container = dict(line.split() for line in out.splitlines() if line.count(" ") == 1)
    return {n: int(by_container[container(n)]) for n in names
            if by_container.get(container(n), "0") not in ("0", "")}
