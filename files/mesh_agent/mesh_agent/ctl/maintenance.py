"""``meshctl maintenance``: open, show or close this node's maintenance window.

While a window is open the self-healing loop records the incidents it detects but does
not act on them; one still open when the window ends is decided then
(:mod:`mesh_agent.mapek.maintenance`). Open one on every node a change will disturb
before making it: ``site.yml`` and ``rollout.yml`` do, on every node they touch, and close
it at the end. A window ends by itself at its end, and at most 4 h after it was opened,
so a run that dies in the middle cannot leave the loop passive.

Run on the node, as root (the window is a file in the agent's state directory)::

    meshctl maintenance start --for 30m --reason "kernel upgrade"
    meshctl maintenance            # what is open, and until when
    meshctl maintenance end
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TextIO

from mesh_agent.config import ConfigError, load_config
from mesh_agent.ctl.render import parse_duration, timestamp
from mesh_agent.mapek import maintenance

OK, BAD, USAGE = 0, 1, 2


def add_parser(sub: Any) -> None:
    mp = sub.add_parser(
        "maintenance", help="open or close a window in which the loop records, not acts",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ms = mp.add_subparsers(dest="maintenance_command")
    st = ms.add_parser("start", help="open a window now (replaces an open one)")
    st.add_argument("--for", dest="duration", required=True, type=parse_duration,
                    metavar="DURATION", help="how long: 90, 30s, 15m, 1h (at most 4h)")
    st.add_argument("--reason", default="", help="what the change is (shown and logged)")
    ms.add_parser("end", help="close the window now")
    ms.add_parser("show", help="the window open now, if any (the default)")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        state_dir = load_config(Path(args.config)).state_dir
    except ConfigError as exc:
        print(f"meshctl: {exc}", file=err)
        return USAGE
    command = args.maintenance_command or "show"
    now = time.time()
    try:
        if command == "start":
            w = maintenance.window(float(args.duration), args.reason, now)
            maintenance.write(state_dir, w)
            report: dict[str, Any] = {"open": True, **w.as_dict(), "changed": True}
        elif command == "end":
            report = {"open": False, "changed": maintenance.clear(state_dir)}
        else:
            found = maintenance.read(state_dir)
            report = ({"open": True, **found.as_dict()} if found is not None
                      and found.open_at(now) else {"open": False})
    except maintenance.WindowError as exc:
        print(f"meshctl: {exc}", file=err)
        return BAD
    except OSError as exc:
        print(f"meshctl: cannot write the window into {state_dir}: {exc} (run as root, "
              "on the node)", file=err)
        return BAD
    if args.json:
        print(json.dumps(report, sort_keys=True), file=out)
    elif report["open"]:
        print(f"maintenance window open until {timestamp(report['until'])} UTC "
              f"({report['until'] - now:.0f} s left)"
              f"{': ' + report['reason'] if report['reason'] else ''}; the loop records "
              "incidents, does not act on them", file=out)
    else:
        print("no maintenance window open" + (" (closed now)" if report.get("changed") else ""),
              file=out)
    return OK
