#!/usr/bin/env python3
"""Ping mesh addresses from this node, all at once, and print what came back as JSON.

    mesh_probe.py [--count N] [--interval S] [--timeout S] ADDRESS...

prints ``{"ADDRESS": {"sent": N, "received": M, "error": null | "..."}, ...}`` and exits
0 (the caller judges the loss). Run by playbooks/rollout.yml's data-plane gate through
``ansible.builtin.script`` on any mesh node, whatever release it runs, so it needs only
Python 3 and iputils' ``ping`` (both in the images). An address ping cannot even send
to (a black-hole or unreachable route: "connect: Invalid argument") counts as N sent,
0 received, with ping's message as the error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import subprocess
import sys

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def parse(output: str, count: int, rc: int) -> dict[str, object]:
    """One ping's result from its output and return code."""
    m = _SUMMARY.search(output)
    if m:
        return {"sent": int(m.group(1)), "received": int(m.group(2)), "error": None}
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return {"sent": count, "received": 0,
            "error": (lines[-1] if lines else f"ping exited {rc} with no output")[:200]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for the last reply")
    p.add_argument("addresses", nargs="+")
    args = p.parse_args(argv)
    for a in args.addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            p.error(f"not an IP address: {a!r}")
    if not 1 <= args.count <= 100 or not 0.2 <= args.interval <= 10:
        p.error("--count is 1..100 and --interval 0.2..10 s")
    procs = {}
    for a in dict.fromkeys(args.addresses):
        cmd = ["ping", "-n", "-q", "-c", str(args.count), "-i", str(args.interval),
               "-W", str(max(1, round(args.timeout))), a]
        procs[a] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    limit = args.count * args.interval + args.timeout + 10
    out = {}
    for a, proc in procs.items():
        try:
            text, _ = proc.communicate(timeout=limit)
            out[a] = parse(text, args.count, proc.returncode)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[a] = {"sent": args.count, "received": 0, "error": f"no answer in {limit:g} s"}
    json.dump(out, sys.stdout, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
