"""Routes: program /32 routes with prepared backup nexthop groups (enforce) or only report them."""

from mesh_agent.routes.netlink import Netlink
from mesh_agent.routes.programmer import InstalledRoute, NeighborLink, RouteProgrammer

__all__ = ["InstalledRoute", "NeighborLink", "Netlink", "RouteProgrammer"]
