"""``labctl destroy``: remove every container, namespace attachment and network the lab made."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from meshcore_tools.lab.state import INVENTORY, LABEL, NETWORK, NS_PREFIX, STATE_DIR, sh


def remove_containers(ids: list[str], attempts: int = 5) -> None:
    """podman rm -f, retried: a container caught between stop and kill ("container
    state improper: stopped") refuses once and goes on the next try."""
    left = list(ids)
    for attempt in range(attempts):
        if not left:
            return
        sh("podman", "rm", "-f", "-i", "-t", "2", *left, check=False)
        alive = set(sh("podman", "ps", "-aq", "--no-trunc",
                       "--filter", f"label={LABEL}=1").stdout.split())
        left = [i for i in left if any(a.startswith(i) for a in alive)]
        if left:
            time.sleep(1 + attempt)
    if left:
        raise SystemExit(f"labctl: could not remove lab containers {' '.join(left)} "
                         f"after {attempts} attempts; see podman ps -a")


def cmd_destroy(_: argparse.Namespace) -> None:
    ids = sh("podman", "ps", "-aq", "--filter", f"label={LABEL}=1").stdout.split()
    remove_containers(ids)
    for entry in Path("/run/netns").glob(NS_PREFIX + "*") if Path("/run/netns").exists() else []:
        sh("ip", "netns", "delete", entry.name, check=False)
    if sh("podman", "network", "exists", NETWORK, check=False).returncode == 0:
        sh("podman", "network", "rm", "-f", NETWORK)
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
    INVENTORY.unlink(missing_ok=True)
    print(json.dumps({"removed_containers": len(ids)}))
