"""Route programming against a real kernel, inside namespaces this test creates.

Topology (R is the node under test)::

        X ---- D
       /      /
      R ---- Y

R reaches D (10.77.9.9) via X or Y; the other is the prepared backup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import networkx as nx
import pytest
from meshcore_testkit.marks import requires_root
from meshcore_tools.netns import add, delete, ip, netlink_socket_in, run_tag, veth
from pyroute2 import AsyncIPRoute

from mesh_agent.paths import PathTable
from mesh_agent.routes import NeighborLink, Netlink, RouteProgrammer
from mesh_agent.routes.programmer import STANDBY_METRIC

pytestmark = requires_root
PROTO = 77
R, X, Y, D = (run_tag(f"mat{n}") for n in "rxyd")
ADDR = {"r": "10.77.9.1", "x": "10.77.9.2", "y": "10.77.9.3", "d": "10.77.9.9"}


@pytest.fixture
def lab() -> Iterator[None]:
    try:
        for ns, name in ((R, "r"), (X, "x"), (Y, "y"), (D, "d")):
            add(ns, loopback=ADDR[name])
        # Interface names start with "v": iproute2 reads "dy ..." as "dynamic".
        veth(R, "vrx", X, "vxr", "10.99.0.0/31", "10.99.0.1/31")
        veth(R, "vry", Y, "vyr", "10.99.0.2/31", "10.99.0.3/31")
        veth(X, "vxd", D, "vdx", "10.99.0.4/31", "10.99.0.5/31")
        veth(Y, "vyd", D, "vdy", "10.99.0.6/31", "10.99.0.7/31")
        # A foreign route (someone else's) and a leftover of a crashed agent.
        ip(R, "route", "add", "10.55.0.0/24", "via", "10.99.0.3", "proto", "static")
        ip(R, "route", "add", "10.66.0.1/32", "via", "10.99.0.1", "proto", str(PROTO))
        yield
    finally:
        delete(R, X, Y, D)


def graph() -> nx.Graph:
    g = nx.Graph()
    for a, b in (("r", "x"), ("r", "y"), ("x", "d"), ("y", "d")):
        g.add_edge(a, b, cost=1.0)
    return g


def route_dev(dst: str) -> str:
    out = ip(R, "route", "get", dst)
    return out.split(" dev ")[1].split()[0]


def test_enforce_program_failover_and_cleanup(lab: None) -> None:
    asyncio.run(_scenario())


async def _scenario() -> None:
    ipr = AsyncIPRoute(netns=R)
    try:
        nl = Netlink(ipr, netlink_socket_in(R))
        prog = RouteProgrammer(nl, PROTO, ADDR["r"])
        assert await prog.flush_own() >= 1
        assert "10.66.0.1" not in ip(R, "route")
        assert "10.55.0.0/24" in ip(R, "route")

        table = PathTable("r", k=3)
        table.update(graph())
        idx = {name: await nl.link_index(name) for name in ("vrx", "vry")}
        links = {
            "x": NeighborLink("vrx", idx["vrx"] or 0, "10.99.0.1"),
            "y": NeighborLink("vry", idx["vry"] or 0, "10.99.0.3"),
        }
        assert await prog.sync(table.choices(), ADDR, links)
        ours = ip(R, "route", "show", "proto", str(PROTO))
        for name in ("x", "y", "d"):
            assert f"{ADDR[name]} nhid" in ours
        assert not any(line.startswith(ADDR["r"] + " ") for line in ours.splitlines())
        nhs = ip(R, "nexthop", "show")
        assert "group" in nhs and "via 10.99.0.1 dev vrx" in nhs and "via 10.99.0.3 dev vry" in nhs
        assert f"src {ADDR['r']}" in ours
        # Standby routes too; a restart's flush removes both metrics of every /32.
        assert f"metric {STANDBY_METRIC}" in ours and prog.standby_count() >= 1
        await prog.flush_own()
        assert ip(R, "route", "show", "proto", str(PROTO)).strip() == ""
        assert await prog.sync(table.choices(), ADDR, links)

        choice_d = table.get("d")
        assert choice_d is not None and choice_d.backup_next_hop is not None
        primary, backup = choice_d.primary_next_hop, choice_d.backup_next_hop
        dev = {"x": "vrx", "y": "vry"}
        assert route_dev(ADDR["d"]) == dev[primary]

        # 1) Neighbour silent (hello timeout): only group replaces, routes stay.
        t0 = time.perf_counter()
        moves = table.failover(primary)
        ops = await prog.failover(primary, moves)
        elapsed = time.perf_counter() - t0
        assert moves["d"] == backup
        assert 1 <= ops <= len({(primary, b) for b in moves.values()})
        assert route_dev(ADDR["d"]) == dev[backup]
        assert elapsed < 0.05, elapsed
        print(f"\nfailover (timeout): {ops} group replace(s) in {elapsed * 1e3:.3f} ms")

        # Reconverge to the original state, then cut the primary's link for real.
        assert await prog.sync(table.choices(), ADDR, links)
        assert route_dev(ADDR["d"]) == dev[primary]

        # 2) Carrier lost: the kernel flushes nexthops on the device, the groups
        #    left empty and their routes; failover rebuilds from the cached backup.
        standby = ip(R, "route", "show", ADDR["d"], "proto", str(PROTO))
        assert f"metric {STANDBY_METRIC}" in standby, standby
        ip(R, "link", "set", dev[primary], "down")
        # Before the agent does anything, the kernel is on the backup already:
        # the primary route went with its nexthop, the standby route is left.
        assert route_dev(ADDR["d"]) == dev[backup]
        prog.forget_interface(links[primary].ifindex)
        t0 = time.perf_counter()
        ops = await prog.failover(primary, table.failover(primary), routes_flushed=True)
        elapsed = time.perf_counter() - t0
        assert ops >= 2
        assert route_dev(ADDR["d"]) == dev[backup]
        print(f"failover (carrier): {ops} kernel ops in {elapsed * 1e3:.3f} ms")

        # Reconverge on the new graph (the agent does this after every failover).
        g2 = graph()
        g2.remove_edge("r", primary)
        table.update(g2)
        alive = {backup: links[backup]}
        assert await prog.sync(table.choices(), ADDR, alive)
        assert route_dev(ADDR[primary]) == dev[backup]
        assert route_dev(ADDR["d"]) == dev[backup]
        assert "10.55.0.0/24 via 10.99.0.3 dev vry proto static" in ip(R, "route")

        # End to end over the programmed routes: R -> D via the backup (2 hops).
        for ns, routes in (
            (D, [(ADDR["r"], "10.99.0.6" if backup == "y" else "10.99.0.4")]),
            (
                Y if backup == "y" else X,
                [
                    (ADDR["r"], "10.99.0.2" if backup == "y" else "10.99.0.0"),
                    (ADDR["d"], "10.99.0.7" if backup == "y" else "10.99.0.5"),
                ],
            ),
        ):
            for dst, via in routes:
                ip(ns, "route", "replace", f"{dst}/32", "via", via)
        ping = __import__("subprocess").run(
            ["ip", "netns", "exec", R, "ping", "-c", "2", "-W", "1", "-i", "0.2", ADDR["d"]],
            capture_output=True,
            text=True,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr

        # Shutdown removes all of ours and nothing else.
        assert prog.standby_count() == 0  # one neighbour left: no backups
        await prog.flush_own()
        assert ip(R, "route", "show", "proto", str(PROTO)).strip() == ""
        assert ip(R, "nexthop", "show").strip() == ""
        assert "10.55.0.0/24" in ip(R, "route")
    finally:
        ipr.close()


def test_a_restart_adopts_replaces_and_sweeps(lab: None) -> None:
    asyncio.run(_handoff())


async def _handoff() -> None:
    """A second programmer (the next run) keeps the first one's routes in the kernel,
    replaces each it wants in place with fresh nexthop ids, and sweeps the rest."""
    table = PathTable("r", k=3)
    table.update(graph())
    ipr = AsyncIPRoute(netns=R)
    try:
        nl = Netlink(ipr, netlink_socket_in(R))
        idx = {name: await nl.link_index(name) for name in ("vrx", "vry")}
        links = {
            "x": NeighborLink("vrx", idx["vrx"] or 0, "10.99.0.1"),
            "y": NeighborLink("vry", idx["vry"] or 0, "10.99.0.3"),
        }
        first = RouteProgrammer(nl, PROTO, ADDR["r"])
        assert await first.sync(table.choices(), ADDR, links)
        before = ip(R, "route", "show", "proto", str(PROTO))
        old_ids = {n.id for n in await nl.nexthops() if n.protocol == PROTO}
        # The first run stops without a flush; the next one starts.
        nxt = RouteProgrammer(nl, PROTO, ADDR["r"])
        adopted = await nxt.adopt()
        assert adopted == len(before.strip().splitlines())  # primaries, standbys, the leftover
        assert ip(R, "route", "show", "proto", str(PROTO)) == before  # still forwarding
        assert route_dev(ADDR["d"]) in ("vrx", "vry")
        # It wants only x and d now: each replaced in place, through nexthops of its own.
        wanted = {k: v for k, v in table.choices().items() if k != "y"}
        assert await nxt.sync(wanted, ADDR, links)
        new_ids = {n.id for n in await nl.nexthops() if n.protocol == PROTO} - old_ids
        assert new_ids and not new_ids & old_ids
        ours = ip(R, "route", "show", "proto", str(PROTO))
        for name in ("x", "d"):
            line = next(x for x in ours.splitlines() if x.startswith(ADDR[name] + " nhid"))
            assert int(line.split()[2]) in new_ids
        assert f"{ADDR['y']} nhid" in ours  # not wanted, but swept only after the grace
        assert await nxt.sweep_stale() >= 1
        ours = ip(R, "route", "show", "proto", str(PROTO))
        assert "10.66.0.1" not in ours and f"{ADDR['y']} " not in ours
        assert all(f"{ADDR[name]} nhid" in ours for name in ("x", "d"))
        assert {n.id for n in await nl.nexthops() if n.protocol == PROTO} <= new_ids
        assert route_dev(ADDR["d"]) in ("vrx", "vry")
        assert nxt.stale_count() == 0 and await nxt.sweep_stale() == 0
    finally:
        ipr.close()


def test_observe_mode_touches_nothing() -> None:
    async def go() -> None:
        prog = RouteProgrammer(None, PROTO, ADDR["r"])
        table = PathTable("r", k=3)
        table.update(graph())
        links = {"x": NeighborLink("rx", 5, "10.99.0.1"), "y": NeighborLink("ry", 6, "10.99.0.3")}
        assert await prog.sync(table.choices(), ADDR, links)
        assert {r.destination for r in prog.installed()} == {"x", "y", "d"}
        ch = table.get("d")
        assert ch is not None
        assert await prog.failover(ch.primary_next_hop, table.failover(ch.primary_next_hop)) >= 1
        active = {r.destination: r.active for r in prog.installed()}
        assert active["d"] == ch.backup_next_hop

    asyncio.run(go())
