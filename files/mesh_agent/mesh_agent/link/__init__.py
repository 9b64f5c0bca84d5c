"""Link sensing: UDP hellos per mesh interface give loss, RTT, age and liveness."""

from mesh_agent.link.sensor import LinkSensor, Neighbor, NeighborDown, NeighborUp
from mesh_agent.link.wire import Hello, WireError, decode_hello, encode_hello

__all__ = [
    "Hello",
    "LinkSensor",
    "Neighbor",
    "NeighborDown",
    "NeighborUp",
    "WireError",
    "decode_hello",
    "encode_hello",
]
