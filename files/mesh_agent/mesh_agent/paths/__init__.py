"""k disjoint minimum-cost paths, protection for tree-like meshes, and link planning.

Public API (stable):

* :func:`k_disjoint_paths` - Suurballe/Bhandari min-cost k edge- or node-disjoint paths;
* :func:`maximally_disjoint_backup`, :func:`link_protection` - protection when the mesh has
  bridges;
* :class:`PathTable`, :class:`RouteChoice` - the per-node cache the agent routes from;
* :func:`augmentation_plan`, :func:`protection_summary` - which links would 2-edge-connect
  the mesh.
"""

from mesh_agent.paths.disjoint import PathError, k_disjoint_paths, path_cost
from mesh_agent.paths.planning import augmentation_plan, protection_summary
from mesh_agent.paths.protection import link_protection, maximally_disjoint_backup
from mesh_agent.paths.table import PathTable, RouteChoice

__all__ = [
    "PathError",
    "PathTable",
    "RouteChoice",
    "augmentation_plan",
    "k_disjoint_paths",
    "link_protection",
    "maximally_disjoint_backup",
    "path_cost",
    "protection_summary",
]
