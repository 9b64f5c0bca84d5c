"""The link backends, side by side: each a sans-I/O core and its I/O adapter.

``native``: the agent's own hellos (core :mod:`.sensor`), sent and read on the
mesh interfaces' sockets (:mod:`.sockets`), with kernel echo probes.
``batman``: batman-adv's neighbour table (core :mod:`.batman`), read by
polling batctl (:mod:`.batman_io`); no echo probes (batman-adv judges liveness).

The agent asks for ``make_backend(cfg, ...)`` and uses what it gets; it never
asks which backend it is.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_agent.config import AgentConfig
from mesh_agent.link.sensor import Event, LinkSensor, PairKeys

# An I/O loop the backend needs besides the sockets: it feeds events to the callback.
Poller = Callable[[Callable[[list[Event]], None]], Coroutine[Any, Any, None]]


@dataclass
class LinkBackend:
    sensor: LinkSensor  # the neighbour table every consumer reads
    echo: bool  # send kernel echo probes to up neighbours
    pollers: list[Poller] = field(default_factory=list)


def make_backend(
    cfg: AgentConfig,
    keys: PairKeys,
    clock: Callable[[], float],
    addresses: Callable[[], Mapping[str, str]],
) -> LinkBackend:
    """The backend ``cfg`` names. *addresses*: node name -> mesh address, from the
    signed adverts (the batman backend names neighbours by the address in their MAC)."""
    if cfg.link.backend == "batman":
        from mesh_agent.link.batman_io import batman_backend

        return batman_backend(cfg, clock, addresses)
    sensor = LinkSensor(cfg.node_name, str(cfg.node_address), cfg.hello_interval_s,
                        cfg.dead_multiplier, keys=keys, session=secrets.randbits(32))
    return LinkBackend(sensor, echo=cfg.link.echo)
