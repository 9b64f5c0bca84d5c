"""mesh-core node agent."""

__version__ = "0.1.0"
# The hello and advert wire version (link/wire.py, topology/wire.py): agents of
# different wire versions form no adjacency (docs/security.md). A release's manifest
# carries it, and switching to a release of another wire version needs a flag.
WIRE_VERSION = 2
