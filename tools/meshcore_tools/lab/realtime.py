"""``labctl realtime``: real-time CPU runtime for lab containers, where the host rations it.

On a cgroup v1 host whose kernel has RT group scheduling (``cpu.rt_runtime_us`` in the
cpu hierarchy, as on the machine the lab was built on), a cgroup may run real-time tasks
only for the runtime it is given, and podman's groups get none: a SCHED_FIFO task in a
lab container is refused (EPERM), even as root with CAP_SYS_NICE. The ``runaway_unit``
chaos fault needs one (the runaway is a real-time busy loop), so this grants runtime to
the named nodes' containers and takes it from every other lab container; the groups
between them and the root get the sum. The kernel keeps the sum of a group's children
within the group's own runtime, so each grant is a share of the host's (the root's
``sched_rt_runtime_us``, 95 % of a period by default): two nodes at 450 ms a second fit,
eight at 800 ms do not. On a cgroup v2 host, or a kernel without RT group scheduling, a
real-time task needs no grant and nothing is written.

    labctl realtime node02=450000 node03=450000   grant those (us per rt period), zero the rest
    labctl realtime                               zero every lab container's grant
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from meshcore_tools.lab.state import LABEL, container, sh

CPU_V1 = Path("/sys/fs/cgroup/cpu")
RUNTIME = "cpu.rt_runtime_us"


class RealtimeError(RuntimeError):
    pass


def parse_grants(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        node, sep, raw = item.partition("=")
        if not (sep and node and raw.isdigit()):
            raise RealtimeError(f"{item!r}: expected node=microseconds (e.g. node02=450000)")
        out[node] = int(raw)
    return out


def lab_cgroups() -> dict[str, str]:
    """Container name -> its cgroup path (as in /proc/PID/cgroup), running lab containers."""
    ids = sh("podman", "ps", "-q", "--filter", f"label={LABEL}=1").stdout.split()
    if not ids:
        return {}
    out = sh("podman", "inspect", "-f", "{{.Name}} {{.State.CgroupPath}}", *ids).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def plan_writes(grants: Mapping[str, int], cgroups: Mapping[str, str]) -> list[tuple[str, int]]:
    """(cgroup path, runtime) writes in an order the kernel accepts: every lowered group
    first (children before their parents), then every raised one (parents first). A
    group between the root and the containers gets the sum of its containers' grants."""
    want: dict[str, int] = {}
    for name, path in cgroups.items():
        want[path] = grants.get(name, 0)
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            want[parent] = want.get(parent, 0) + grants.get(name, 0)
    depth = sorted(want, key=lambda p: p.count("/"))
    return ([(p, 0) for p in reversed(depth)] +  # lower all, deepest first
            [(p, want[p]) for p in depth if want[p] > 0])  # then raise, shallowest first


def apply(grants: Mapping[str, int], root: Path = CPU_V1) -> dict[str, object]:
    if not (root / RUNTIME).is_file():
        return {"needed": False, "why": "no cgroup v1 RT group scheduling here: a real-time "
                "task needs no grant"}
    cgroups = lab_cgroups()
    by_node = {name.removeprefix(container("")): path for name, path in cgroups.items()}
    unknown = sorted(set(grants) - set(by_node))
    if unknown:
        raise RealtimeError(f"no running lab container for {', '.join(unknown)}")
    host = int((root / RUNTIME).read_text())
    if sum(grants.values()) > host:
        raise RealtimeError(f"the grants add up to {sum(grants.values())} us, more than the "
                            f"host's real-time runtime ({host} us per period)")
    for path, runtime in plan_writes(grants, by_node):
        f = root / path.strip("/") / RUNTIME
        try:
            f.write_text(f"{runtime}\n")
        except OSError as exc:
            raise RealtimeError(f"{f}: {runtime}: {exc} (other groups of this host may hold "
                                "real-time runtime)") from None
    return {"needed": True, "granted": dict(grants)}


def cmd_realtime(args: argparse.Namespace) -> None:
    try:
        print(json.dumps(apply(parse_grants(args.grants))))
    except RealtimeError as exc:
        raise SystemExit(f"labctl realtime: {exc}") from None
