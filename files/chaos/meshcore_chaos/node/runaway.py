"""A runaway process inside a running systemd unit: a SCHED_FIFO busy loop on one CPU.

The ``runaway_unit`` fault's helper (``python3 -m meshcore_chaos.node.runaway --tag
meshcore_chaos:<id> --unit U --cpu N --seconds S``). It joins the unit's cgroup (so the
unit's CPU accounting counts it and ``systemctl restart U`` ends it with the rest of the
unit: what a unit stuck in a busy loop looks like), takes one CPU, becomes a real-time
task (CFS does not share the CPU with it), drops to the unit's user and spins until
*seconds* pass. The fault pins the agent to the same CPU (the ``affinity`` op), so on a
machine with CPUs to spare the agent is starved as it would be by a runaway on every
core. Started by the ``spawn`` op with ``ready_s``: whatever stops it from running (no
such unit, no real-time runtime) is said at once and the injection fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def unit_cgroups(unit: str, root: Path = CGROUP_ROOT, proc: Path = Path("/proc")
                 ) -> tuple[list[Path], list[int]]:
    """The directories of the unit's cgroup in the hierarchies systemd tracks processes
    with (v1 ``name=systemd``, the unified one of a hybrid or v2 system), and the unit's
    processes: found, as the agent finds a unit's CPU, by a process whose cgroup path
    ends in the unit's name. Controller hierarchies (cpu, ...) are left alone: a
    real-time task may not join a cpu cgroup with no real-time runtime."""
    dirs: list[Path] = []
    pids: list[int] = []
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            lines = (d / "cgroup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            _, hierarchy, path = line.split(":", 2)
            if not path.endswith("/" + unit):
                continue
            pids.append(int(d.name))
            mounts = ([root / "systemd"] if hierarchy == "name=systemd"
                      else [root / "unified", root] if hierarchy == "" else [])
            for m in mounts:
                if (m / path.lstrip("/") / "cgroup.procs").is_file():
                    dirs.append(m / path.lstrip("/"))
                    break
    if not pids:
        raise SystemExit(f"runaway: {unit} has no process (is it running, on a node with "
                         "systemd?)")
    return sorted(set(dirs)), sorted(set(pids))


def owner(pid: int) -> tuple[int, int]:
    """The real uid and gid of a process."""
    uid = gid = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        elif line.startswith("Gid:"):
            gid = int(line.split()[1])
    return uid, gid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="meshcore_chaos.node.runaway")
    ap.add_argument("--tag", required=True, help="meshcore_chaos:<fault id> (the sweep's)")
    ap.add_argument("--unit", required=True, help="a running service, e.g. app.service")
    ap.add_argument("--cpu", default="last", help="the CPU to spin on (last: the highest)")
    ap.add_argument("--seconds", type=float, required=True, help="spin at most this long")
    ap.add_argument("--priority", type=int, default=1, help="SCHED_FIFO priority")
    a = ap.parse_args(argv)
    end = time.monotonic() + a.seconds
    dirs, pids = unit_cgroups(a.unit)
    if not dirs:
        raise SystemExit(f"runaway: no cgroup directory for {a.unit} under {CGROUP_ROOT}")
    uid, gid = owner(pids[0])
    for d in dirs:
        (d / "cgroup.procs").write_text(f"{os.getpid()}\n")
    cpu = max(os.sched_getaffinity(0)) if a.cpu == "last" else int(a.cpu)
    os.sched_setaffinity(0, {cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(a.priority))
    except PermissionError:
        raise SystemExit("runaway: SCHED_FIFO refused: no real-time runtime for this cgroup "
                         "(cgroup v1 RT group scheduling: cpu.rt_runtime_us is 0 for it or "
                         "a parent)") from None
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    print(f"runaway: in {a.unit} as uid {uid}, SCHED_FIFO {a.priority} on CPU {cpu} for "
          f"{a.seconds:g} s", flush=True)
    sys.stdout.close()
    n = 0
    while True:  # the busy loop; the clock read only now and then
        n += 1
        if n % 100_000 == 0 and time.monotonic() >= end:
            return 0


if __name__ == "__main__":
    sys.exit(main())
