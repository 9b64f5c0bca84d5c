"""The batman backend's I/O adapter: runs ``batctl`` and feeds its JSON to the core.

:class:`~mesh_agent.link.batman.BatmanSensor` (beside this module) is the
sans-I/O core; this is everything that touches the system for it: reading
``/etc/bat-hosts`` and polling ``batctl meshif <bat0> neighbors_json`` and
``originators_json`` every ``link.poll_interval_ms``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from mesh_agent.config import AgentConfig, LinkConfig
from mesh_agent.link.backend import LinkBackend
from mesh_agent.link.batman import BatmanSensor, parse_bat_hosts
from mesh_agent.link.sensor import Event

log = logging.getLogger("mesh_agent.link.batman")


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


async def poll_batctl(
    sensor: BatmanSensor,
    link: LinkConfig,
    clock: Callable[[], float],
    on_events: Callable[[list[Event]], None],
) -> None:
    """Poll batctl forever; failures are counted and logged once per streak."""
    failing = False
    interval_s = link.poll_interval_ms / 1000.0
    batctl, mesh_if = str(link.batctl), link.mesh_interface
    while True:
        try:
            neighbors = await batctl_json(batctl, mesh_if, "neighbors_json", interval_s)
            originators = await batctl_json(batctl, mesh_if, "originators_json", interval_s)
        except (BatctlError, OSError) as exc:
            sensor.drops["batctl_error"] += 1
            if not failing:
                log.warning("batman-adv poll failed: %s", exc)
            failing = True
        else:
            if failing:
                log.info("batman-adv poll works again")
            failing = False
            on_events(sensor.update(neighbors, originators, clock()))
        await asyncio.sleep(interval_s)


def batman_backend(cfg: AgentConfig, clock: Callable[[], float]) -> LinkBackend:
    sensor = batman_sensor(cfg)

    async def poll(on_events: Callable[[list[Event]], None]) -> None:
        await poll_batctl(sensor, cfg.link, clock, on_events)

    return LinkBackend(sensor, echo=False, pollers=[poll])
