"""``labctl destroy``: remove every container, namespace attachment and network the lab made."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from meshcore_tools.lab.state import INVENTORY, LABEL, NETWORK, NS_PREFIX, STATE_DIR, sh


def lab_container_ids() -> list[str]:
    """Full ids of every container carrying the lab label."""
    return sh("podman", "ps", "-aq", "--no-trunc", "--filter", f"label={LABEL}=1").stdout.split()


def remove_containers(ids: list[str], attempts: int = 5) -> None:
    """podman rm -f, retried: a container caught between stop and kill ("container
    state improper: stopped") refuses once and goes on the next try."""
    left = list(ids)
    for attempt in range(attempts):
        if not left:
            return
        if attempt:
            time.sleep(attempt)
        sh("podman", "rm", "-f", "-i", "-t", "2", *left, check=False)
        alive = set(lab_container_ids())
        left = [i for i in left if i in alive]
    if left:
        raise SystemExit(f"labctl: could not remove lab containers {' '.join(left)} "
                         f"after {attempts} attempts; see podman ps -a")


def cmd_destroy(_: argparse.Namespace) -> None:
    ids = lab_container_ids()
    remove_containers(ids)
    for entry in Path("/run/netns").glob(NS_PREFIX + "*") if Path("/run/netns").exists() else []:
        sh("ip", "netns", "delete", entry.name, check=False)
    if sh("podman", "network", "exists", NETWORK, check=False).returncode == 0:
        sh("podman", "network", "rm", "-f", NETWORK)
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
    INVENTORY.unlink(missing_ok=True)
    print(json.dumps({"removed_containers": len(ids)}))
