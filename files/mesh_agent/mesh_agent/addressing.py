"""Which IPv4 addresses a node may use as its mesh address (one owner for the rule).

A node address is a unicast /32 routed through the mesh. These are never one
(RFC 6890 special-purpose registry): "this network" 0.0.0.0/8, loopback
127.0.0.0/8, link-local 169.254.0.0/16 (not routable), multicast 224.0.0.0/4,
and the reserved 240.0.0.0/4 with the limited broadcast 255.255.255.255. The
config parser refuses them for our own address and the link-state database
refuses adverts that claim them.
"""

from __future__ import annotations

import ipaddress

NOT_NODE_ADDRESSES = tuple(
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
)


def unusable_reason(address: ipaddress.IPv4Address) -> str | None:
    """Why *address* cannot be a node address, or None when it can."""
    for net in NOT_NODE_ADDRESSES:
        if address in net:
            return f"{address} is in {net}, which is not a unicast node address"
    return None
