"""The closed set of operations a fault is made of, each with its undo and its owned tag.

An operation is a JSON object ``{"op": KIND, ...}``. For every kind:

- :func:`prepare` reads what the undo will need (a link's alias, a process's
  start time, its cgroup) without changing anything; the caller journals it
  before :func:`apply`;
- :func:`apply` makes the change;
- :func:`undo` reverts it, and is harmless when the change was never made or
  was already reverted (the reaper and the controller may both call it);
- :func:`present` says whether the change is still in place.

Ownership (what :func:`sweep` finds with no journal at all):

=========  ====================================================  ===========================
kind       injection (this kernel; hardware where it differs)    owned by
=========  ====================================================  ===========================
nft        an nft table (netdev ingress drop / numgen drop)      table ``meshcore_chaos_<id>``
tbf        ``tc qdisc add dev D root handle c4a0: tbf ...``      root qdisc handle ``c4a0:``
link_down  ``ip link set D down``                                link alias ``meshcore_chaos:<id>``
signal     SIGSTOP / SIGKILL of a pid (hardware: ``systemctl     the journal (pid + start time)
           kill -s KILL mesh-agent``; restart ``systemctl
           start mesh-agent``)
cgroup     a cpu cgroup with a CFS quota (hardware, cgroup v2    cgroup
                                                                 ``meshcore_chaos_<ns>_<id>``
           under systemd: ``systemctl set-property --runtime
           mesh-agent.service CPUQuota=N%``)
spawn      a helper process (the rogue node's flooder, a        the tag in its command line
           runaway unit's busy loop); ``ready_s``: it must still
           be running that long after the start, else the
           injection fails with what it wrote
affinity   the CPUs a process (the agent, every thread of it)   the journal (pid + start time
           may run on (``sched_setaffinity``)                    + the CPUs it had)
=========  ====================================================  ===========================
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAG = "meshcore_chaos"
TC_HANDLE = "c4a0:"
CGROUP_ROOT = Path("/sys/fs/cgroup")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
KINDS = ("nft", "tbf", "link_down", "signal", "cgroup", "spawn", "affinity")

Op = dict[str, Any]


class OpError(RuntimeError):
    """An operation could not be applied (the caller undoes the fault)."""


def run(argv: list[str], *, check: bool = True, input: str | None = None) -> str:
    res = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise OpError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")
    return res.stdout


def netns_id() -> str:
    """This process's network namespace inode: scopes cgroups (global) to one lab node."""
    return str(os.stat("/proc/self/ns/net").st_ino)


# --- processes -----------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def same_process(op: Op) -> bool:
    """The op's process is still alive (a zombie, killed and not yet reaped by its parent,
    is not: a crashed agent must be restarted even before its parent waits for it)."""
    st = proc_stat(int(op["pid"]))
    return st is not None and st[0] not in "ZX" and st[1] == op.get("start_time")


def same_netns(pid: int) -> bool:
    """Whether *pid* is in our network namespace. Where its namespace may not be read (a
    process of another user, hardened or non-dumpable, and no CAP_SYS_PTRACE: the agent
    seen by root in a podman container), it is ours when this process tree's init is: a
    container or a node whose processes all share our namespace, not a netns lab's host."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except PermissionError:
        return _init_shares_netns()
    except OSError:
        return False


@functools.cache
def _init_shares_netns() -> bool:
    try:
        return os.stat("/proc/1/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def tagged_pids(tag: str) -> list[int]:
    """Processes in this network namespace whose command line carries ``tag``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(tag.encode() in a for a in argv) and same_netns(int(entry.name)):
            out.append(int(entry.name))
    return out


def find_process(match: str) -> int:
    """The oldest process in this network namespace whose command line contains ``match``
    (the agent: ``mesh_agent run``); on hardware ``systemctl show -p MainPID mesh-agent``."""
    best: tuple[int, int] | None = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        st = proc_stat(int(entry.name))
        if match in cmdline and st is not None and same_netns(int(entry.name)) and (
                best is None or st[1] < best[0]):
            best = (st[1], int(entry.name))
    if best is None:
        raise OpError(f"no process matching {match!r} in this namespace")
    return best[1]


def stopped_pids() -> list[int]:
    """Processes in this network namespace that are stopped (SIGSTOP), as a leftover check."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = proc_stat(int(entry.name))
            if st is not None and st[0] == "T" and same_netns(int(entry.name)):
                out.append(int(entry.name))
    return out


def _spawn_detached(argv: list[str], log: str | None, ready_s: float = 0.0) -> int:
    """Start *argv* in a session of its own; with *ready_s*, it must still be running that
    long after (else :class:`OpError` with the end of what it wrote)."""
    out = open(log, "ab") if log else tempfile.TemporaryFile()  # noqa: SIM115 - the child's
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        if ready_s > 0:
            try:
                rc = proc.wait(timeout=ready_s)
            except subprocess.TimeoutExpired:
                return proc.pid
            out.seek(0)
            said = out.read()[-400:].decode(errors="replace").strip()
            name = argv[2] if argv[1:2] == ["-m"] and len(argv) > 2 else argv[0]
            raise OpError(f"{name} exited ({rc}) at once: {said or 'nothing said'}")
    finally:
        out.close()
    return proc.pid


def threads(pid: int) -> list[int]:
    """The thread ids of a process (affinity is per thread)."""
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if t.name.isdigit()]
    except OSError:
        return []


def cpus_of(spec: Any, allowed: set[int]) -> set[int]:
    """An affinity op's ``cpus``: a list of CPU numbers, or ``"last"`` (the highest of
    *allowed*, the CPUs the process may use now)."""
    if spec == "last":
        return {max(allowed)}
    cpus = {int(c) for c in spec}
    if not cpus or not cpus <= set(range(os.cpu_count() or 1)):
        raise OpError(f"cpus must be CPUs of this node (0..{(os.cpu_count() or 1) - 1}): {spec}")
    return cpus


# --- links and qdiscs ----------------------------------------------------------------
def link(dev: str) -> dict[str, Any] | None:
    out = run(["ip", "-j", "link", "show", "dev", dev], check=False)
    found = json.loads(out or "[]")
    return found[0] if found else None


def root_qdisc_handle(dev: str) -> str | None:
    return root_qdiscs(dev).get(dev)


def root_qdiscs(dev: str | None = None) -> dict[str, str]:
    """Interface -> its root qdisc's handle (one interface, or all of them)."""
    argv = ["tc", "-j", "qdisc", "show", *(["dev", dev] if dev else [])]
    return {str(q.get("dev", dev)): str(q.get("handle"))
            for q in json.loads(run(argv, check=False) or "[]") if q.get("root")}


def cgroup_dir(name: str) -> Path:
    """The cpu controller's directory for ``name``: cgroup v1 ``cpu/`` or the v2 root."""
    v1 = CGROUP_ROOT / "cpu"
    return (v1 if v1.is_dir() else CGROUP_ROOT) / name


def _cgroup_of(pid: int) -> str:
    """The pid's cpu cgroup path (v1 ``cpu`` line, else the v2 ``0::`` line)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), "/")


# --- the operations --------------------------------------------------------------------
def check(op: Op, fault_id: str) -> None:
    """Refuse an operation outside the closed set, or one that would touch unowned state."""
    kind = op.get("op")
    if kind not in KINDS:
        raise OpError(f"unknown operation {kind!r}")
    families = ("netdev", "inet", "ip", "ip6", "bridge", "arp")
    if kind == "nft" and (str(op.get("table")) != f"{TAG}_{fault_id}"
                          or op.get("family") not in families):
        raise OpError(f"nft table must be {TAG}_{fault_id} in a known family: {op}")
    if kind == "signal" and op.get("signal") not in ("STOP", "KILL"):
        raise OpError(f"signal must be STOP or KILL: {op}")
    if kind == "spawn" and not any(f"{TAG}:{fault_id}" in a for a in op.get("argv", [])):
        raise OpError("a spawned helper carries its fault id in its argv (the sweep finds it)")
    if kind in ("signal", "cgroup", "affinity") and int(op.get("pid", 0)) <= 1 and not op.get(
            "match"):
        raise OpError(f"no pid or match to act on: {op}")


def prepare(op: Op, fault_id: str) -> Op:
    """What the undo needs, read before anything changes."""
    kind = op["op"]
    facts: Op = {}
    if kind == "link_down":
        cur = link(op["dev"])
        if cur is None:
            raise OpError(f"no link {op['dev']}")
        facts["alias"] = cur.get("ifalias", "")
        facts["was_up"] = "UP" in cur.get("flags", [])
        facts["tag"] = f"{TAG}:{fault_id}"
    elif kind in ("signal", "cgroup", "affinity"):
        if not op.get("pid"):
            op["pid"] = find_process(op["match"])
        st = proc_stat(int(op["pid"]))
        if st is None:
            raise OpError(f"no process {op['pid']}")
        facts["start_time"] = st[1]
        if kind == "cgroup":
            facts["name"] = f"{TAG}_{netns_id()}_{fault_id}"
            facts["from"] = _cgroup_of(int(op["pid"]))
        if kind == "affinity":
            was = os.sched_getaffinity(int(op["pid"]))
            facts["was"] = sorted(was)
            facts["cpus"] = sorted(cpus_of(op.get("cpus", "last"), was))
    elif kind == "spawn":
        facts["tag"] = f"{TAG}:{fault_id}"
    return facts


def apply(op: Op) -> Op:
    """Make the change; returns facts only known afterwards (a spawned pid)."""
    kind = op["op"]
    if kind == "nft":
        run(["nft", "-f", "-"], input=f"table {op['family']} {op['table']} {{\n{op['body']}\n}}\n")
    elif kind == "tbf":
        run(["tc", "qdisc", "add", "dev", op["dev"], "root", "handle", TC_HANDLE, "tbf",
             "rate", op["rate"], "burst", op.get("burst", "32kbit"),
             "latency", op.get("latency", "400ms")])
    elif kind == "link_down":
        run(["ip", "link", "set", "dev", op["dev"], "alias", op["tag"]])
        run(["ip", "link", "set", "dev", op["dev"], "down"])
    elif kind == "signal":
        if not same_process(op):
            raise OpError(f"process {op['pid']} is gone")
        os.kill(int(op["pid"]), getattr(signal, "SIG" + op["signal"]))
    elif kind == "cgroup":
        d = cgroup_dir(op["name"])
        d.mkdir(exist_ok=True)
        period = 100_000
        quota = max(1000, int(period * float(op["quota_pct"]) / 100))
        if (d / "cpu.max").exists():
            (d / "cpu.max").write_text(f"{quota} {period}\n")
        else:
            (d / "cpu.cfs_period_us").write_text(f"{period}\n")
            (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (d / "cgroup.procs").write_text(f"{op['pid']}\n")
    elif kind == "spawn":
        pid = _spawn_detached(list(op["argv"]), op.get("log"), float(op.get("ready_s", 0)))
        st = proc_stat(pid)
        return {"pid": pid, "start_time": st[1] if st else None}
    elif kind == "affinity":
        if not same_process(op):
            raise OpError(f"process {op['pid']} is gone")
        _set_affinity(int(op["pid"]), set(op["cpus"]))
    return {}


def _set_affinity(pid: int, cpus: set[int]) -> None:
    for tid in threads(pid):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)


def undo(op: Op) -> None:
    """Revert; harmless when nothing was applied."""
    kind = op["op"]
    if kind == "nft":
        run(["nft", "delete", "table", op["family"], op["table"]], check=False)
    elif kind == "tbf":
        if root_qdisc_handle(op["dev"]) == TC_HANDLE:
            run(["tc", "qdisc", "del", "dev", op["dev"], "root", "handle", TC_HANDLE])
    elif kind == "link_down":
        cur = link(op["dev"])
        if cur is not None and str(cur.get("ifalias", "")).startswith(TAG):
            if op.get("was_up", True):
                run(["ip", "link", "set", "dev", op["dev"], "up"])
            run(["ip", "link", "set", "dev", op["dev"], "alias", op.get("alias") or ""])
    elif kind == "signal":
        if op["signal"] == "STOP" and same_process(op):
            os.kill(int(op["pid"]), signal.SIGCONT)
        elif op["signal"] == "KILL" and op.get("restart") and not same_process(op):
            restarted = op.get("restarted_pid")
            if restarted is None or proc_stat(int(restarted)) is None:
                _spawn_detached(list(op["restart"]), op.get("restart_log"))
    elif kind == "cgroup" and "name" in op:
        _cgroup_remove(cgroup_dir(op["name"]), op.get("from", "/"))
    elif kind == "spawn":
        if op.get("pid") and same_process(op):
            os.kill(int(op["pid"]), signal.SIGKILL)
        for pid in tagged_pids(op["tag"]) if op.get("tag") else []:
            os.kill(pid, signal.SIGKILL)
    elif kind == "affinity" and "was" in op and same_process(op):
        _set_affinity(int(op["pid"]), set(op["was"]))


def _cgroup_remove(d: Path, back_to: str) -> None:
    if not d.is_dir():
        return
    home = d.parent / back_to.lstrip("/")
    if not (home / "cgroup.procs").exists():
        home = d.parent
    for _ in range(50):
        pids = (d / "cgroup.procs").read_text().split()
        for pid in pids:
            with contextlib.suppress(OSError):  # exited meanwhile
                (home / "cgroup.procs").write_text(f"{pid}\n")
        try:
            d.rmdir()
            return
        except OSError:
            time.sleep(0.02)  # a process was still leaving
    d.rmdir()


def present(op: Op) -> bool:
    kind = op["op"]
    if kind == "nft":
        return run(["nft", "list", "table", op["family"], op["table"]], check=False) != ""
    if kind == "tbf":
        return root_qdisc_handle(op["dev"]) == TC_HANDLE
    if kind == "link_down":
        cur = link(op["dev"])
        return cur is not None and str(cur.get("ifalias", "")).startswith(TAG)
    if kind == "signal":
        st = proc_stat(int(op["pid"]))
        return op["signal"] == "STOP" and st is not None and st[0] == "T" and same_process(op)
    if kind == "cgroup":
        return "name" in op and cgroup_dir(op["name"]).is_dir()
    if kind == "spawn":
        return bool(op.get("pid")) and same_process(op)
    if kind == "affinity":
        pinned = set(op.get("cpus", ()))
        return ("was" in op and same_process(op) and pinned != set(op["was"])
                and any(os.sched_getaffinity(t) == pinned for t in threads(int(op["pid"]))))
    return False


# --- what carries the tag, journal or not ------------------------------------------------
def _nft_tables() -> list[tuple[str, str]]:
    out = run(["nft", "-j", "list", "tables"], check=False)
    tables = []
    for item in json.loads(out or '{"nftables": []}').get("nftables", []):
        t = item.get("table")
        if t and str(t.get("name", "")).startswith(TAG):
            tables.append((str(t["family"]), str(t["name"])))
    return tables


def _links() -> list[dict[str, Any]]:
    return list(json.loads(run(["ip", "-j", "link", "show"], check=False) or "[]"))


@dataclass(frozen=True)
class Tagged:
    """Something in this namespace that carries the owned tag."""

    what: str
    owner: str  # the fault id in its name, or "tbf:<dev>" for an owned qdisc
    remove: Callable[[], None]


def owners(ops_on_record: list[Op], fault_id: str) -> set[str]:
    """The owner keys a journal entry accounts for (see :attr:`Tagged.owner`)."""
    return {fault_id} | {f"tbf:{op['dev']}" for op in ops_on_record if op.get("op") == "tbf"}


def tagged() -> list[Tagged]:
    """Everything in this namespace that carries the owned tag, with its remover."""
    found: list[Tagged] = []
    for family, table in _nft_tables():
        nft_op = {"op": "nft", "family": family, "table": table}
        found.append(Tagged(f"nft table {family} {table}", table[len(TAG) + 1:],
                            functools.partial(undo, nft_op)))
    qdiscs = root_qdiscs()
    for ln in _links():
        dev = str(ln["ifname"])
        if qdiscs.get(dev) == TC_HANDLE:
            found.append(Tagged(f"tc qdisc {TC_HANDLE} on {dev}", f"tbf:{dev}",
                                functools.partial(undo, {"op": "tbf", "dev": dev})))
        alias = str(ln.get("ifalias", ""))
        if alias.startswith(TAG):
            state = "up" if "UP" in ln["flags"] else "down"
            up_op = {"op": "link_down", "dev": dev, "alias": ""}
            found.append(Tagged(f"link {dev} alias {alias} ({state})", alias[len(TAG) + 1:],
                                functools.partial(undo, up_op)))
    prefix = f"{TAG}_{netns_id()}_"
    base = cgroup_dir("")
    if base.is_dir():
        for d in sorted(base.iterdir()):
            if d.is_dir() and d.name.startswith(prefix):
                found.append(Tagged(f"cgroup {d.name}", d.name[len(prefix):],
                                    functools.partial(_cgroup_remove, d, "/")))
    for pid in tagged_pids(f"{TAG}:"):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        tag = next((a for a in argv if a.startswith(f"{TAG}:")), f"{TAG}:?")
        found.append(Tagged(f"process {pid} tagged {tag}", tag[len(TAG) + 1:],
                            functools.partial(_kill, pid)))
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
