"""Network namespaces and veth links: the one helper for the lab, the benchmarks and the tests.

One mechanism serves every caller:

- the container lab wires a topology between namespaces it does not own (the
  podman containers', attached under /run/netns): :func:`wire`;
- benchmarks and tests build a topology out of plain namespaces they create,
  run processes inside, and remove everything afterwards: :class:`NetnsLab`;
- tests that need one particular link or namespace: :func:`add`,
  :func:`delete`, :func:`veth`, :func:`host_veth`.

Each link is a veth pair whose ends are created directly inside the two
namespaces (so no name is ever taken in the host's namespace); links with
``rate`` get a tbf qdisc and links with ``loss`` an nft netdev ``numgen
random`` drop on both ingresses (this kernel has no netem). Names that a test
or benchmark creates carry a per-run tag (:func:`run_tag`), so two runs on one
machine never touch each other's namespaces.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
# What a mesh node's namespace needs to route: forwarding on.
ROUTER_SYSCTLS: Mapping[str, str] = {"net.ipv4.ip_forward": "1"}


def run(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; with ``check``, a failure raises RuntimeError naming it and its stderr."""
    res = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
    return res


def ip(ns: str, *args: str, check: bool = True) -> str:
    """``ip -n NS ARGS...``; its stdout."""
    return run("ip", "-n", ns, *args, check=check).stdout


def exec_argv(ns: str, *argv: str) -> list[str]:
    """The argv that runs ``argv`` inside namespace ``ns`` (``ip netns exec`` execs in place)."""
    return ["ip", "netns", "exec", ns, *argv]


def run_tag(prefix: str) -> str:
    """A name prefix unique to this process: ``prefix`` plus the pid."""
    return f"{prefix}{os.getpid() % 100000}"


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def add(
    name: str, *, loopback: str | None = None, sysctls: Mapping[str, str] = ROUTER_SYSCTLS
) -> None:
    """A fresh namespace ``name`` (a stale one of that name is removed first), lo up.

    ``loopback`` is an address for ``lo`` (a node address, /32 unless a prefix is
    given); ``sysctls`` are set inside (forwarding by default).
    """
    run("ip", "netns", "delete", name, check=False)
    run("ip", "netns", "add", name)
    batch = ["link set lo up"]
    if loopback:
        batch.append(f"address replace {loopback if '/' in loopback else loopback + '/32'} dev lo")
    run("ip", "-n", name, "-batch", "-", input="\n".join(batch) + "\n")
    if sysctls:
        run(*exec_argv(name, "sysctl", "-qw", *(f"{k}={v}" for k, v in sysctls.items())))


def delete(*names: str) -> None:
    """Remove namespaces (their veths go with them); absent ones are fine."""
    for name in names:
        run("ip", "netns", "delete", name, check=False)


def kill_inside(ns: str) -> None:
    """SIGKILL every process whose network namespace is ``ns`` (``ip netns pids``)."""
    for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def links_in(ns: str) -> set[str]:
    out = ip(ns, "-j", "link", "show")
    return {link["ifname"] for link in json.loads(out or "[]")}


def veth(
    ns_a: str,
    if_a: str,
    ns_b: str,
    if_b: str,
    addr_a: str | None = None,
    addr_b: str | None = None,
) -> None:
    """A veth pair ``if_a`` in ``ns_a`` to ``if_b`` in ``ns_b``, addressed (``a.b.c.d/n``), up."""
    run("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
        "netns", ns_b)
    for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
        batch = [f"address replace {addr} dev {ifname}"] if addr else []
        batch.append(f"link set {ifname} up")
        run("ip", "-n", ns, "-batch", "-", input="\n".join(batch) + "\n")


def host_veth(ns: str, inner: str, host_if: str, inner_addr: str, host_addr: str) -> None:
    """A veth from the host's namespace (``host_if``) into ``ns`` (``inner``), both up.

    The management link of a test node: what the host (Prometheus, a test) uses
    to reach a process in the namespace without touching its mesh links.
    """
    run("ip", "link", "add", host_if, "type", "veth", "peer", "name", inner, "netns", ns)
    run("ip", "addr", "replace", host_addr, "dev", host_if)
    run("ip", "link", "set", host_if, "up")
    ip(ns, "addr", "replace", inner_addr, "dev", inner)
    ip(ns, "link", "set", inner, "up")


def wire(state: dict[str, Any], ns_of: Callable[[str], str]) -> int:
    """Create every link of a normalised topology ``state`` between the namespaces ``ns_of(node)``.

    ``state`` is what :func:`meshcore_tools.lab.topology.normalise` returns. Each
    node's address goes on its ``lo``. Idempotent: links whose two ends exist
    are left alone. Returns how many veth pairs were created.
    """
    present = {name: links_in(ns_of(name)) for name in state["nodes"]}
    created = 0
    by_end: dict[tuple[str, str], dict[str, Any]] = {}
    for link in state["links"]:
        a, b = link["a"], link["b"]
        by_end[(a, link["a_ifname"])] = link
        by_end[(b, link["b_ifname"])] = link
        if link["a_ifname"] in present[a] and link["b_ifname"] in present[b]:
            continue
        run("ip", "link", "add", link["a_ifname"], "netns", ns_of(a), "type", "veth",
            "peer", "name", link["b_ifname"], "netns", ns_of(b))
        created += 1
    for name, node in state["nodes"].items():
        batch = ["link set lo up", f"address replace {node['node_address']}/32 dev lo"]
        qdiscs = []  # tc's own batch: `ip -batch` has no qdisc object
        nft = []
        for end in node["links"]:
            link = by_end[(name, end["ifname"])]
            batch.append(f"address replace {end['address']} dev {end['ifname']}")
            batch.append(f"link set {end['ifname']} up")
            if link.get("rate"):
                qdiscs.append(f"qdisc replace dev {end['ifname']} root tbf rate {link['rate']} "
                              "burst 32kbit latency 50ms")
            if link.get("loss"):
                nft.append(f"  chain in_{end['ifname']} {{\n"
                           f"    type filter hook ingress device \"{end['ifname']}\" priority 0;\n"
                           f"    numgen random mod 100 < {int(link['loss'])} drop\n  }}")
        run("ip", "-n", ns_of(name), "-batch", "-", input="\n".join(batch) + "\n")
        if qdiscs:
            run("tc", "-n", ns_of(name), "-batch", "-", input="\n".join(qdiscs) + "\n")
        if nft:
            rules = ("table netdev meshcore_lab\ndelete table netdev meshcore_lab\n"
                     "table netdev meshcore_lab {\n" + "\n".join(nft) + "\n}\n")
            run(*exec_argv(ns_of(name), "nft", "-f", "-"), input=rules)
    return created


def silent_cut(ns: str, ifname: str, on: bool, loss_pct: int | None = None) -> None:
    """Drop every frame arriving on ``ifname`` (carrier stays up: a fading radio), or,
    with ``loss_pct``, that share of them at random (nft ``numgen``, as the chaos
    suite's ``lossy`` fault does: a marginal radio)."""
    table = f"meshcore_cut_{ifname}"
    if on:
        if loss_pct is not None and not 1 <= loss_pct <= 99:
            raise ValueError(f"loss_pct must be 1..99, got {loss_pct}")
        rule = "drop" if loss_pct is None else f"numgen random mod 100 < {loss_pct} drop"
        rules = (f"table netdev {table} {{\n  chain in {{\n"
                 f"    type filter hook ingress device \"{ifname}\" priority -10;\n"
                 f"    {rule}\n  }}\n}}\n")
        run(*exec_argv(ns, "nft", "-f", "-"), input=rules)
    else:
        run(*exec_argv(ns, "nft", "delete", "table", "netdev", table), check=False)


@contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the body with this thread in namespace ``ns`` (setns), then go back.

    Sockets created inside stay in ``ns``. Only this thread moves.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / ns, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def netlink_socket_in(ns: str) -> socket.socket:
    """A NETLINK_ROUTE socket that lives in namespace ``ns``."""
    with entered(ns):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.settimeout(1.0)
        s.bind((0, 0))
    return s


class NetnsLab:
    """A normalised topology built from plain namespaces, with processes inside.

    Namespace names are ``<tag>-<node>`` with a per-run ``tag`` (prefix + pid);
    :meth:`down` (or leaving the ``with`` block) stops the processes and
    deletes the namespaces, which removes every veth with them.
    """

    def __init__(
        self,
        state: dict[str, Any],
        prefix: str,
        sysctls: Mapping[str, str] = ROUTER_SYSCTLS,
    ) -> None:
        self.state = state
        self.tag = run_tag(prefix)
        self.sysctls = sysctls
        self.procs: list[subprocess.Popen[bytes]] = []

    def ns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    @property
    def namespaces(self) -> list[str]:
        return [self.ns(node) for node in self.state["nodes"]]

    def up(self) -> None:
        for node in self.state["nodes"]:
            add(self.ns(node), sysctls=self.sysctls)
        wire(self.state, self.ns)

    def spawn(
        self, node: str, argv: list[str], log: Path, **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``node``'s namespace, output to ``log``."""
        return self.spawn_argv(exec_argv(self.ns(node), *argv), log, **popen)

    def spawn_argv(self, argv: list[str], log: Path, **popen: Any) -> subprocess.Popen[bytes]:
        """Start a process (host namespace unless ``argv`` enters one), output to ``log``.

        ``popen`` goes to subprocess.Popen (``env``, ``preexec_fn``). The lab
        owns the process: :meth:`stop` ends it.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        out: IO[bytes] = log.open("wb")
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **popen)
        finally:
            out.close()  # the child has its own copy
        self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 10.0) -> list[int | None]:
        """SIGTERM every process, SIGKILL what is still there after ``timeout``.

        Returns the exit codes in start order (None for a process that had to be killed).
        """
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes.append(None)
        self.procs.clear()
        return codes

    def down(self) -> None:
        self.stop()
        for ns in self.namespaces:  # what a test started in there that the lab never owned
            kill_inside(ns)
        delete(*self.namespaces)

    def __enter__(self) -> NetnsLab:
        self.up()
        return self

    def __exit__(self, *_: object) -> None:
        self.down()
