"""Topology: signed link-state adverts flooded through the mesh, and the graph they give."""

from mesh_agent.topology.lsdb import REJECT_REASONS, Entry, LinkStateDB, Result
from mesh_agent.topology.wire import (
    Advert,
    decode_advert,
    encode_unsigned,
    signature_trailer,
    with_age,
)

__all__ = [
    "REJECT_REASONS",
    "Advert",
    "Entry",
    "LinkStateDB",
    "Result",
    "decode_advert",
    "encode_unsigned",
    "signature_trailer",
    "with_age",
]
