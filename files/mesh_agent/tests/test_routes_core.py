"""RouteProgrammer logic against a fake kernel (no root): diffing, failover, preemption."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import networkx as nx

from mesh_agent.paths import PathTable
from mesh_agent.routes import NeighborLink, RouteProgrammer


class FakeNetlink:
    """Records operations; yields to the loop on each like a real netlink round trip."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, tuple[Any, ...]]] = []
        self.groups: dict[int, list[int]] = {}
        self.routes: dict[str, int] = {}
        self.standby: dict[str, int] = {}  # metric > 0

    async def _rec(self, name: str, *args: Any) -> None:
        await asyncio.sleep(0)
        self.ops.append((name, args))

    async def nexthop_replace(self, *a: Any) -> None:
        await self._rec("nexthop_replace", *a)

    async def group_replace(self, gid: int, members: list[int], proto: int) -> None:
        await self._rec("group_replace", gid, members)
        self.groups[gid] = members

    def group_replace_now(self, gid: int, members: list[int], proto: int) -> None:
        """The failover's synchronous replace: no await, recorded at once."""
        self.ops.append(("group_replace", (gid, members)))
        self.groups[gid] = members

    async def route_replace(
        self, dst: str, gid: int, prefsrc: str | None, proto: int, priority: int = 0
    ) -> None:
        await self._rec("route_replace", dst, gid, priority)
        (self.standby if priority else self.routes)[dst] = gid

    def route_replace_now(
        self, dst: str, nh: int, prefsrc: str | None, proto: int, priority: int = 0
    ) -> None:
        """A remote detour's synchronous replace: recorded at once."""
        self.ops.append(("route_replace", (dst, nh, priority)))
        (self.standby if priority else self.routes)[dst] = nh

    async def route_delete(self, dst: str, proto: int, priority: int | None = None) -> None:
        await self._rec("route_delete", dst, priority)
        (self.standby if priority else self.routes).pop(dst, None)

    async def nexthop_delete(self, nid: int) -> None:
        await self._rec("nexthop_delete", nid)
        self.groups.pop(nid, None)


ADDR = {f"n{i}": f"10.77.0.{i + 1}" for i in range(12)}


def ring(n: int) -> nx.Graph:
    g = nx.cycle_graph([f"n{i}" for i in range(n)])
    nx.set_edge_attributes(g, 1.0, "cost")
    return g


LINKS = {"n1": NeighborLink("mesh0", 2, "10.98.0.1"), "n11": NeighborLink("mesh1", 3, "10.98.11.0")}


async def programmed_ring() -> tuple[FakeNetlink, RouteProgrammer, PathTable]:
    """Node n0 of a 12-ring, its table computed and synced into a fake kernel."""
    fake = FakeNetlink()
    prog = RouteProgrammer(fake, 99, ADDR["n0"])  # type: ignore[arg-type]
    table = PathTable("n0", k=3)
    table.update(ring(12))
    assert await prog.sync(table.choices(), ADDR, LINKS)
    return fake, prog, table


def test_sync_is_incremental_and_failover_is_one_op_per_group() -> None:
    async def go() -> None:
        fake, prog, table = await programmed_ring()
        assert len(fake.routes) == 11
        n_ops = len(fake.ops)
        assert await prog.sync(table.choices(), ADDR, LINKS)
        assert len(fake.ops) == n_ops  # nothing changed, nothing sent
        before = len(fake.ops)
        moves = table.failover("n1")
        ops = await prog.failover("n1", moves)
        # Every destination behind n1 shares the group (n1, n11): one replace.
        assert ops == len(fake.ops) - before == 1
        assert all(name == "group_replace" for name, _ in fake.ops[before:])
        for r in prog.installed():
            if r.destination in moves:
                assert r.active == "n11"

    asyncio.run(go())


def test_failover_preempts_a_running_sync() -> None:
    async def go() -> None:
        fake, prog, table = await programmed_ring()
        # A big reconvergence starts (every route changes address) ...
        moved = {k: v.replace("10.77.", "10.78.") for k, v in ADDR.items()}
        moved["n0"] = ADDR["n0"]
        lock = asyncio.Lock()

        async def reconverge() -> bool:
            async with lock:
                return await prog.sync(table.choices(), moved, LINKS)

        task = asyncio.create_task(reconverge())
        for _ in range(3):
            await asyncio.sleep(0)
        # ... and a neighbour dies: the failover asks the sync to yield.
        prog.request_preempt()
        async with lock:
            ops = await prog.failover("n1", table.failover("n1"))
        assert await task is False and prog.preempted_total == 1
        assert ops == 1
        # The next sync completes and no kernel object was leaked or lost.
        assert await prog.sync(table.choices(), moved, LINKS)
        assert set(fake.routes) == {v for k, v in moved.items() if k != "n0"}
        assert set(fake.groups) >= {r.group_id for r in prog.installed()}

    asyncio.run(go())


def test_switch_now_mid_sync_needs_no_lock_and_the_next_sync_agrees() -> None:
    """The agent's failover: synchronous, while a sync awaits a netlink reply."""

    async def go() -> None:
        fake, prog, table = await programmed_ring()
        moved = {k: v.replace("10.77.", "10.78.") for k, v in ADDR.items()}
        moved["n0"] = ADDR["n0"]
        task = asyncio.create_task(prog.sync(table.choices(), moved, LINKS))
        for _ in range(3):
            await asyncio.sleep(0)
        prog.request_preempt()
        gid = next(r.group_id for r in prog.installed() if r.primary == "n1")
        assert prog.switch_now("n1", table.failover("n1")) == 1
        # Done on return: no await between the death and the kernel's switch.
        assert fake.groups[gid] == [prog._nh_id("n11")]
        assert await task is False
        # The recompute after the death: n1 is gone from the links and the graph.
        g = ring(12)
        g.remove_edge("n0", "n1")
        table.update(g)
        links = {k: v for k, v in LINKS.items() if k != "n1"}
        assert await prog.sync(table.choices(), moved, links)
        assert set(fake.routes) == {v for k, v in moved.items() if k != "n0"}
        for r in prog.installed():
            assert r.active == "n11"
            assert fake.groups[r.group_id] == [prog._nh_id("n11")]

    asyncio.run(go())


def test_standby_routes_follow_the_backups() -> None:
    """Each destination with a backup next hop gets a standby route through the
    backup's own nexthop at STANDBY_METRIC; a carrier loss that takes a backup's
    device forgets its standby routes, and the next sync puts back what is wanted."""
    from mesh_agent.routes.programmer import STANDBY_METRIC

    async def go() -> None:
        fake, prog, table = await programmed_ring()
        with_backup = {
            d for d, ch in table.choices().items() if ch.backup_next_hop in LINKS
        }
        assert len(with_backup) == 11 and prog.standby_count() == 11  # a ring: all protected
        assert set(fake.standby) == {ADDR[d] for d in with_backup}
        for d in with_backup:
            backup = table.choices()[d].backup_next_hop
            assert fake.standby[ADDR[d]] == prog._nh_id(str(backup))
        # Primary routes at metric 0, standby routes at STANDBY_METRIC, nothing else.
        assert {a[2] for n, a in fake.ops if n == "route_replace"} == {0, STANDBY_METRIC}
        # mesh1 (n11) loses carrier: the kernel drops n11's nexthop, every standby
        # route through it and every primary route whose group held only n11.
        prog.forget_interface(3)
        behind_n11 = {d for d in with_backup if table.choices()[d].backup_next_hop == "n11"}
        assert prog.standby_count() == 11 - len(behind_n11)
        # Only n1 is left: no backups, so every standby route goes.
        g = ring(12)
        g.remove_edge("n0", "n11")
        table.update(g)
        assert await prog.sync(table.choices(), ADDR, {"n1": LINKS["n1"]})
        assert prog.standby_count() == 0
        removed = [a for n, a in fake.ops if n == "route_delete" and a[1] == STANDBY_METRIC]
        assert len(removed) == len(with_backup) - len(behind_n11)

    asyncio.run(go())


def test_detour_now_moves_only_the_destinations_whose_primary_crossed_the_removed_link() -> None:
    """A remote failover: n5-n6 left the graph (an advert said so); n0's destinations
    whose primary crossed it go straight to their backup's nexthop, one op each,
    synchronously; the others keep their group; the next sync restores the groups."""

    async def go() -> None:
        fake, prog, table = await programmed_ring()
        before = len(fake.ops)
        moves = table.detours([("n5", "n6")])
        crossed = {d for d, ch in table.choices().items()
                   if {"n5", "n6"} <= set(ch.primary)
                   and abs(ch.primary.index("n5") - ch.primary.index("n6")) == 1}
        assert crossed and set(moves) == crossed
        assert prog.detour_now(moves) == len(moves) == len(fake.ops) - before
        for dst in moves:
            assert fake.routes[ADDR[dst]] == prog._nh_id(moves[dst])
        assert prog.detour_now(moves) == 0  # already there
        untouched = {r.destination: r for r in prog.installed() if r.destination not in moves}
        assert all(r.active == r.primary for r in untouched.values())
        assert {r.destination: r.active for r in prog.installed() if r.destination in moves} \
            == moves
        # The recompute without the link: every route back on a group, nothing leaked.
        g = ring(12)
        g.remove_edge("n5", "n6")
        table.update(g)
        assert await prog.sync(table.choices(), ADDR, LINKS)
        for r in prog.installed():
            assert r.primary != "" and fake.routes[r.address] == r.group_id

    asyncio.run(go())


def test_detour_after_a_local_failover_sends_nothing() -> None:
    async def go() -> None:
        fake, prog, table = await programmed_ring()
        assert prog.switch_now("n1", table.failover("n1")) == 1
        before = len(fake.ops)
        # n0's own link to n1 in an advert (n1 dropped us): the group already moved.
        assert prog.detour_now(table.detours([("n1", "n0")])) == 0
        assert len(fake.ops) == before

    asyncio.run(go())


def test_via_counts_routes_per_active_next_hop_and_times_the_last_one_leaving() -> None:
    """``via`` follows every change (sync, a failover's switch, a carrier loss, the sync
    after it); ``via_left`` holds when a neighbour's last route moved off it, until one
    uses it again: the MAPE-K loop times a mitigation from it."""
    async def go() -> None:
        now = [100.0]
        fake = FakeNetlink()
        prog = RouteProgrammer(fake, 99, ADDR["n0"], clock=lambda: now[0])  # type: ignore[arg-type]
        table = PathTable("n0", k=3)
        table.update(ring(12))
        assert await prog.sync(table.choices(), ADDR, LINKS)
        assert prog.via == {"n1": 6, "n11": 5} and prog.via_left == {}
        assert prog.via == Counter(r.active for r in prog.installed())
        now[0] = 101.5
        await prog.failover("n1", table.failover("n1"))  # switch_now: all onto n11
        assert prog.via == {"n11": 11} and prog.via_left == {"n1": 101.5}
        now[0] = 103.0
        assert await prog.sync(table.choices(), ADDR, LINKS)  # n1 back: the groups return
        assert prog.via == {"n1": 6, "n11": 5} and prog.via_left == {}
        now[0] = 104.0
        prog.forget_interface(2)  # n1's carrier lost: the kernel dropped its routes
        assert prog.via == {"n11": 5} and prog.via_left == {"n1": 104.0}
        now[0] = 105.0
        await prog.failover("n1", table.failover("n1"), routes_flushed=True)
        assert prog.via == {"n11": 11} and prog.via_left == {"n1": 104.0}  # left at the loss

    asyncio.run(go())
