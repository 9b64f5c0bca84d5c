"""Helpers for tests that build real network namespaces (root only)."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess

import pytest

CLONE_NEWNET = 0x40000000

requires_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to create network namespaces",
)


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(list(args), check=check, capture_output=True, text=True).stdout


def ip(ns: str, *args: str, check: bool = True) -> str:
    return sh("ip", "-n", ns, *args, check=check)


def veth(ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
    """A /31 point-to-point veth between two namespaces."""
    sh(
        "ip",
        "link",
        "add",
        if_a,
        "netns",
        ns_a,
        "type",
        "veth",
        "peer",
        "name",
        if_b,
        "netns",
        ns_b,
    )
    ip(ns_a, "addr", "add", f"{addr_a}/31", "dev", if_a)
    ip(ns_b, "addr", "add", f"{addr_b}/31", "dev", if_b)
    ip(ns_a, "link", "set", if_a, "up")
    ip(ns_b, "link", "set", if_b, "up")


def add_ns(name: str, loopback_addr: str | None = None) -> None:
    sh("ip", "netns", "add", name)
    ip(name, "link", "set", "lo", "up")
    sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    if loopback_addr:
        ip(name, "addr", "add", f"{loopback_addr}/32", "dev", "lo")


def del_ns(*names: str) -> None:
    for name in names:
        sh("ip", "netns", "del", name, check=False)


def netlink_socket_in(ns: str) -> socket.socket:
    """A NETLINK_ROUTE socket that lives in namespace *ns* (setns on this thread, then back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.settimeout(1.0)
            s.bind((0, 0))
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)
    return s
