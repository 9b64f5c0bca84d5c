"""Yggdrasil across several hops: real daemons in network namespaces.

A 4-node chain (node01 - node02 - node03 - node04) wired by meshcore_tools.netns,
the lab's own mechanism, with the lab's interface names (mesh0, mesh1). Each
node runs Debian's yggdrasil with the multicast settings the yggdrasil role
renders, a fresh key pair of its own and a TUN; node01 must reach node04's
200::/7 address over three Yggdrasil hops, found by link-local beacons alone.
About 10 s.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshcore_testkit.marks import requires_root
from meshcore_tools import netns
from meshcore_tools.lab import topology

YGGDRASIL = "/usr/sbin/yggdrasil"
NODES = ["node01", "node02", "node03", "node04"]
pytestmark = [
    requires_root,
    pytest.mark.skipif(not Path(YGGDRASIL).exists(),
                       reason="needs Debian's yggdrasil (requirements/apt.txt; make setup)"),
    pytest.mark.skipif(not Path("/dev/net/tun").exists(), reason="needs /dev/net/tun"),
]


def role_config(tmp: Path, node: str) -> Path:
    """A config shaped like roles/yggdrasil/templates/yggdrasil.conf.j2 renders it."""
    conf = json.loads(subprocess.run([YGGDRASIL, "-genconf", "-json"], check=True,
                                     capture_output=True, text=True).stdout)
    conf.update({
        "Peers": [], "Listen": [], "AdminListen": f"unix://{tmp}/{node}.sock",
        "MulticastInterfaces": [{"Regex": "^mesh[0-9]+$", "Beacon": True, "Listen": True,
                                 "Port": 0, "Priority": 0}],
        "IfName": "auto", "NodeInfoPrivacy": True, "NodeInfo": None,
    })
    path = tmp / f"{node}.conf"
    path.write_text(json.dumps(conf))
    path.chmod(0o600)
    return path


def ygg_address(ns: str) -> ipaddress.IPv6Address | None:
    out = netns.ip(ns, "-j", "-6", "addr", "show", "scope", "global", check=False)
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            addr = ipaddress.ip_address(a["local"])
            if addr in ipaddress.ip_network("200::/7"):
                return addr
    return None


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[netns.NetnsLab]:
    topo = topology.Topology("ygg-chain", [{"name": n} for n in NODES],
                             [{"a": a, "b": b} for a, b in itertools.pairwise(NODES)])
    # Link-local addresses usable at once: beacons start without waiting for DAD.
    lab = netns.NetnsLab(topology.normalise(topo), "sygt",
                         sysctls={"net.ipv6.conf.default.accept_dad": "0"})
    with lab:
        for node in NODES:
            lab.spawn(node, [YGGDRASIL, "-useconffile", str(role_config(tmp_path, node))],
                      tmp_path / f"{node}.log")
        yield lab


def test_node_reaches_a_node_three_hops_away_over_yggdrasil(
    chain: netns.NetnsLab, tmp_path: Path
) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(ygg_address(chain.ns(n)) for n in NODES):
        time.sleep(0.2)
    addrs = {n: ygg_address(chain.ns(n)) for n in NODES}
    assert all(addrs.values()), addrs
    assert len(set(addrs.values())) == len(NODES)  # one key pair, one address per node
    # node01 and node04 share no link: only multi-hop Yggdrasil routing joins them.
    assert "mesh1" not in netns.links_in(chain.ns("node01"))
    t0 = time.monotonic()
    ok = None
    while time.monotonic() - t0 < 30:
        ok = subprocess.run(netns.exec_argv(chain.ns("node01"), "ping", "-6", "-c", "1",
                                            "-W", "1", str(addrs["node04"])),
                            capture_output=True, text=True)
        if ok.returncode == 0:
            break
    assert ok is not None and ok.returncode == 0, (
        ok.stdout if ok else "", {n: (tmp_path / f"{n}.log").read_text()[-800:] for n in NODES})
    # Each node peers only with its chain neighbours, over the mesh links.
    peers = json.loads(subprocess.run(
        netns.exec_argv(chain.ns("node02"), shutil.which("yggdrasilctl") or "yggdrasilctl",
                        "-json", "-endpoint", f"unix://{tmp_path}/node02.sock", "getPeers"),
        check=True, capture_output=True, text=True).stdout)["peers"]
    assert len(peers) == 2, peers
    for node, proc in zip(NODES, chain.procs, strict=True):
        assert proc.poll() is None, f"{node} exited"
