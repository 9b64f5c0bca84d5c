"""The batman backend's I/O adapter: reads batman-adv's tables and feeds them to the core.

:class:`~mesh_agent.link.batman.BatmanSensor` (beside this module) is the
sans-I/O core; this is everything that touches the system for it: reading
``/etc/bat-hosts`` and polling the neighbour and originator tables every
``link.poll_interval_ms``, from the kernel over generic netlink
(:mod:`.batman_netlink`: batctl wants root, the kernel only CAP_NET_ADMIN) or
with ``batctl meshif <bat0> neighbors_json`` / ``originators_json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mesh_agent.config import AgentConfig, LinkConfig
from mesh_agent.link.backend import LinkBackend
from mesh_agent.link.batman import BatmanSensor, parse_bat_hosts
from mesh_agent.link.sensor import Event

log = logging.getLogger("mesh_agent.link.batman")

# Reads the two tables (neighbours, originators) as batctl's JSON would give them.
Fetch = Callable[[], Awaitable[tuple[Any, Any]]]


class BatctlError(RuntimeError):
    """batctl failed, timed out or printed something that is not JSON."""


async def batctl_json(batctl: str, mesh_interface: str, table: str, timeout_s: float) -> Any:
    """Run ``batctl meshif <if> <table>`` and parse its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        batctl,
        "meshif",
        mesh_interface,
        table,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise BatctlError(f"{table}: batctl timed out after {timeout_s} s") from exc
    if proc.returncode != 0:
        msg = err.decode(errors="replace").strip() or f"exit {proc.returncode}"
        raise BatctlError(f"{table}: {msg}")
    try:
        return json.loads(out)
    except ValueError as exc:
        raise BatctlError(f"{table}: not JSON: {exc}") from exc


def batman_sensor(cfg: AgentConfig) -> BatmanSensor:
    """The neighbour table for ``link.backend: batman``, names from bat-hosts if present."""
    try:
        hosts = parse_bat_hosts(cfg.link.bat_hosts.read_text(encoding="utf-8"))
    except OSError:
        hosts = {}
    return BatmanSensor(
        cfg.node_name,
        str(cfg.node_address),
        cfg.link.dead_after_ms / 1000.0,
        cfg.dead_multiplier,
        hosts=hosts,
        reference_mbit=float(cfg.link.reference_mbit),
    )


def batctl_fetch(link: LinkConfig) -> Fetch:
    """Read the two tables with ``batctl meshif <if> <table>`` (batctl wants root)."""
    timeout_s = link.poll_interval_ms / 1000.0

    async def fetch() -> tuple[Any, Any]:
        batctl, mesh_if = str(link.batctl), link.mesh_interface
        neighbors = await batctl_json(batctl, mesh_if, "neighbors_json", timeout_s)
        originators = await batctl_json(batctl, mesh_if, "originators_json", timeout_s)
        return neighbors, originators

    return fetch


async def poll_batctl(
    sensor: BatmanSensor,
    link: LinkConfig,
    clock: Callable[[], float],
    on_events: Callable[[list[Event]], None],
    fetch: Fetch | None = None,
    update: Callable[[Any, Any, float], list[Event]] | None = None,
) -> None:
    """Poll batman-adv's tables forever (*fetch*, batctl by default) into *update*
    (the sensor's); failures are counted and logged once per streak."""
    failing = False
    interval_s = link.poll_interval_ms / 1000.0
    read = fetch or batctl_fetch(link)
    apply = update or sensor.update
    while True:
        try:
            neighbors, originators = await read()
        except (BatctlError, OSError) as exc:
            sensor.drops["batctl_error"] += 1
            if not failing:
                log.warning("batman-adv poll failed: %s", exc)
            failing = True
        else:
            if failing:
                log.info("batman-adv poll works again")
            failing = False
            on_events(apply(neighbors, originators, clock()))
        await asyncio.sleep(interval_s)


def batman_backend(
    cfg: AgentConfig,
    clock: Callable[[], float],
    addresses: Callable[[], Mapping[str, str]],
    fetch: Fetch | None = None,
) -> LinkBackend:
    """The batman core and its poller (reading with *fetch*, generic netlink by
    default); before each update it learns from *addresses* (the signed adverts)
    which node owns the address in a neighbour's MAC."""
    sensor = batman_sensor(cfg)

    def update(neighbors: Any, originators: Any, now: float) -> list[Event]:
        sensor.set_addresses(addresses())
        return sensor.update(neighbors, originators, now)

    async def poll(on_events: Callable[[list[Event]], None]) -> None:
        # Imported here: only a batman node pays for pyroute2's generic netlink,
        # and after routes.pyroute2_lean has deferred pyroute2's package __init__.
        from mesh_agent.link.batman_netlink import netlink_fetch

        read = fetch or netlink_fetch(cfg.link)
        await poll_batctl(sensor, cfg.link, clock, on_events, read, update)

    return LinkBackend(sensor, echo=False, pollers=[poll])
