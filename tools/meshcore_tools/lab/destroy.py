"""``labctl destroy``: remove every container, namespace attachment and network the lab made."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from meshcore_tools.lab.state import INVENTORY, LABEL, NETWORK, NS_PREFIX, STATE_DIR, sh


def cmd_destroy(_: argparse.Namespace) -> None:
    ids = sh("podman", "ps", "-aq", "--filter", f"label={LABEL}=1").stdout.split()
    if ids:
        sh("podman", "rm", "-f", "-t", "2", *ids)
    for entry in Path("/run/netns").glob(NS_PREFIX + "*") if Path("/run/netns").exists() else []:
        sh("ip", "netns", "delete", entry.name, check=False)
    if sh("podman", "network", "exists", NETWORK, check=False).returncode == 0:
        sh("podman", "network", "rm", "-f", NETWORK)
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
    INVENTORY.unlink(missing_ok=True)
    print(json.dumps({"removed_containers": len(ids)}))
