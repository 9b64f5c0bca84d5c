"""``labctl wire``: attach the containers' namespaces and wire the topology's veth links."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from meshcore_tools import netns
from meshcore_tools.lab.plan import write_inventory
from meshcore_tools.lab.state import MONITOR, load_state, ns, pid_of, sh


def cmd_wire(_: argparse.Namespace) -> None:
    state = load_state()
    t0 = time.monotonic()
    pids = {name: pid_of(name) for name in [*state["nodes"], MONITOR]}
    write_inventory(state, pids)
    for name in state["nodes"]:
        # A stale attachment (container recreated) points at a dead namespace.
        if (Path("/run/netns") / ns(name)).exists():
            sh("ip", "netns", "delete", ns(name), check=False)
        sh("ip", "netns", "attach", ns(name), str(pids[name]))
    try:
        created = netns.wire(state, ns)
    except RuntimeError as exc:
        raise SystemExit(f"labctl: {exc}") from exc
    print(json.dumps({"wired_links": len(state["links"]), "created": created,
                      "seconds": round(time.monotonic() - t0, 2)}))
