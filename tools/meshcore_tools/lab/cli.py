"""labctl, the mesh-core lab controller: the plumbing under playbooks/lab.yml.

    labctl plan    --topology grid --nodes 10    write build/lab/state.yml + inventory
    labctl wire                                  veth links between the node containers
    labctl status  [--json FILE] [--wait S]      neighbours, services, scrape status
    labctl report  [--minutes M]                 key series snapshot, report.png + report.json
    labctl destroy                               remove everything the lab created
    labctl realtime [node=us ...]                real-time runtime for containers (cgroup v1)

(also ``python -m meshcore_tools.lab``). The containers themselves are created
by lab.yml (containers.podman). Every object the lab creates carries the
``meshcore-lab`` name prefix or label, and ``destroy`` removes only those.
"""

from __future__ import annotations

import argparse
import os

from meshcore_tools.lab.destroy import cmd_destroy
from meshcore_tools.lab.plan import cmd_plan
from meshcore_tools.lab.realtime import cmd_realtime
from meshcore_tools.lab.report import cmd_report
from meshcore_tools.lab.state import STATE_DIR
from meshcore_tools.lab.status import cmd_status
from meshcore_tools.lab.wire import cmd_wire

COMMANDS = {"plan": cmd_plan, "wire": cmd_wire, "status": cmd_status, "report": cmd_report,
            "destroy": cmd_destroy, "realtime": cmd_realtime}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labctl", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("plan")
    pl.add_argument("--topology", default="grid")
    pl.add_argument("--nodes", type=int, default=10)
    pl.add_argument("--seed", type=int, default=1)
    sub.add_parser("wire")
    st = sub.add_parser("status")
    st.add_argument("--json")
    st.add_argument("--wait", type=float, default=0.0)
    rp = sub.add_parser("report")
    rp.add_argument("--minutes", type=float, default=30.0, help="window of the plot")
    rp.add_argument("--prometheus", help="base URL (default: the lab monitor's, port 9090)")
    rp.add_argument("--png", default=str(STATE_DIR / "report.png"))
    rp.add_argument("--json", default=str(STATE_DIR / "report.json"))
    sub.add_parser("destroy")
    rt = sub.add_parser("realtime", help="real-time CPU runtime for lab containers (runaway_unit)")
    rt.add_argument("grants", nargs="*", help="node=microseconds per period; the rest get 0")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # A report reads a Prometheus over HTTP; everything else changes the host.
    if args.cmd != "report" and os.geteuid() != 0:
        raise SystemExit("labctl: the lab needs root (podman systemd containers, netns, veth)")
    COMMANDS[args.cmd](args)


if __name__ == "__main__":
    main()
