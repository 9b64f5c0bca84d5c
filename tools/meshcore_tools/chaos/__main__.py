"""``python -m meshcore_tools.chaos``: the controller side of the chaos experiments.

    stress    random faults in a loop (the reaper test's controller, SIGKILLed at random)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshcore_tools.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stress", help="random faults in a loop on a netns lab")
    s.add_argument("--state", type=Path, required=True, help="the lab's normalised topology (JSON)")
    s.add_argument("--netns-tag", required=True, help="namespaces are <tag>-<node>")
    s.add_argument("--journal-root", type=Path, required=True)
    s.add_argument("--count", type=int, default=100)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--restart-argv", default="[]", help="JSON argv that restarts a crashed agent")
    s.add_argument("--restart-log")
    a = p.parse_args(argv)
    if a.cmd == "stress":
        from meshcore_tools.chaos import stress

        stress.run(a.state, a.netns_tag, a.journal_root, a.count, a.seed,
                   json.loads(a.restart_argv), a.restart_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
