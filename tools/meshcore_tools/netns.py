"""Wire a normalised lab topology into network namespaces.

One mechanism for every caller: the container lab (labctl.py, namespaces of the
podman containers attached under /run/netns) and the benchmarks (plain namespaces
they create and delete themselves). Each link is a veth pair whose ends are
created directly inside the two namespaces; links with ``rate`` get a tbf qdisc
and links with ``loss`` an nft netdev ``numgen random`` drop on both ingresses
(this kernel has no netem).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any


def run(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
    return res


def links_in(ns: str) -> set[str]:
    out = run("ip", "-n", ns, "-j", "link", "show").stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def wire(state: dict[str, Any], ns_of: Callable[[str], str]) -> int:
    """Create every link of ``state`` between the namespaces ``ns_of(node)``.

    Idempotent: links whose two ends exist are left alone. Returns how many
    veth pairs were created.
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
        nft = []
        for end in node["links"]:
            link = by_end[(name, end["ifname"])]
            batch.append(f"address replace {end['address']} dev {end['ifname']}")
            batch.append(f"link set {end['ifname']} up")
            if link.get("rate"):
                batch.append(f"qdisc replace dev {end['ifname']} root tbf rate {link['rate']} "
                             "burst 32kbit latency 50ms")
            if link.get("loss"):
                nft.append(f"  chain in_{end['ifname']} {{\n"
                           f"    type filter hook ingress device \"{end['ifname']}\" priority 0;\n"
                           f"    numgen random mod 100 < {int(link['loss'])} drop\n  }}")
        run("ip", "-n", ns_of(name), "-batch", "-", input="\n".join(batch) + "\n")
        if nft:
            rules = ("table netdev meshcore_lab\ndelete table netdev meshcore_lab\n"
                     "table netdev meshcore_lab {\n" + "\n".join(nft) + "\n}\n")
            run("ip", "netns", "exec", ns_of(name), "nft", "-f", "-", input=rules)
    return created


def silent_cut(ns: str, ifname: str, on: bool) -> None:
    """Drop every frame arriving on ``ifname`` (carrier stays up: a fading radio)."""
    table = f"meshcore_cut_{ifname}"
    if on:
        rules = (f"table netdev {table} {{\n  chain in {{\n"
                 f"    type filter hook ingress device \"{ifname}\" priority -10;\n"
                 "    drop\n  }\n}\n")
        run("ip", "netns", "exec", ns, "nft", "-f", "-", input=rules)
    else:
        run("ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", table, check=False)
