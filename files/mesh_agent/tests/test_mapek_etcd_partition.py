"""Leases across a real network partition: etcd members and lease clients in namespaces.

Each of three etcd members (Debian's etcd-server) and two lease clients, ``a`` and its
neighbour ``b``, runs in a network namespace of its own, routed through a hub namespace.
A partition is nft drops in the hub's forward path: one member and ``a`` on one side, the
other two members and ``b`` on the other, with every process still running (unlike a
SIGSTOPped member, the cut-off one still answers its own side, and may have been the
leader). Per partition, ``a`` holds a lease in each of its trials before the cut; after
it, ``b`` asks for the same slots until it is granted, and ``a`` then checks its lease as
an executor would before acting (``EtcdLeases.validate``) and offers its token to the
fence. A double action is ``a`` and ``b`` both passing. Half of the partitions put the
leader on ``a``'s side, half a follower; ``a``'s side is also asked for new leases while
cut off (a minority must refuse: ``no_quorum``). Issue 19's safety trial "partitions: 0
double disruptive actions over >= 200 trials", with the network cut rather than a process
stopped (``test_mapek_etcd.py`` stops one).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import networkx as nx
import pytest
from meshcore_testkit.etcd import EtcdCluster
from meshcore_testkit.marks import requires_root
from meshcore_tools import netns

from mesh_agent.mapek.etcd import EtcdLeases
from mesh_agent.mapek.lease import Fence, Refusal, neighbourhood
from mesh_agent.mapek.safety import Lease

pytestmark = [requires_root, pytest.mark.skipif(shutil.which("etcd") is None,
                                                reason="needs etcd (Debian package etcd-server)")]

TTL = 2  # etcd's minimum here is 1.5 x the 500 ms election timeout
EVENTS, PER_EVENT = 4, 50  # 200 trials
NET = "10.231"
T = TypeVar("T")


@dataclass
class PartitionLab:
    tag: str
    cluster: EtcdCluster

    def ns(self, who: str) -> str:
        return f"{self.tag}-{who}"

    @property
    def hub(self) -> str:
        return self.ns("hub")

    def cut(self, side: list[str], rest: list[str]) -> None:
        """Drop everything the hub forwards between *side* and *rest* (namespaces' short
        names), both ways."""
        a = ", ".join(f'"h-{x}"' for x in side)
        b = ", ".join(f'"h-{x}"' for x in rest)
        rules = ("table inet meshcore_partition {\n  chain cut {\n"
                 "    type filter hook forward priority 0;\n"
                 f"    iifname {{ {a} }} oifname {{ {b} }} drop\n"
                 f"    iifname {{ {b} }} oifname {{ {a} }} drop\n  }}\n}}\n")
        netns.run(*netns.exec_argv(self.hub, "nft", "-f", "-"), input=rules)

    def heal(self) -> None:
        netns.run(*netns.exec_argv(self.hub, "nft", "delete", "table", "inet",
                                   "meshcore_partition"), check=False)

    def inside(self, who: str, fn: Callable[[], T]) -> T:
        """Call *fn* from namespace *who* (the sockets it opens stay there)."""
        with netns.entered(self.ns(who)):
            return fn()


MEMBERS, CLIENTS = ["m0", "m1", "m2"], ["ca", "cb"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PartitionLab]:
    tag = netns.run_tag("mep")
    names = MEMBERS + CLIENTS
    hub = f"{tag}-hub"
    netns.add(hub)
    try:
        for k, who in enumerate(names, start=1):
            netns.add(f"{tag}-{who}", sysctls={})
            netns.veth(hub, f"h-{who}", f"{tag}-{who}", "eth0", f"{NET}.{k}.1/24",
                       f"{NET}.{k}.2/24")
            netns.ip(f"{tag}-{who}", "route", "add", "default", "via", f"{NET}.{k}.1")
        # The test process reaches every member through the hub (health and leader
        # checks); its own path is never cut.
        netns.host_veth(hub, "h-host", f"{tag}-h", f"{NET}.250.1/24", f"{NET}.250.2/24")
        netns.run("ip", "route", "replace", f"{NET}.0.0/16", "via", f"{NET}.250.1")
        cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"),
                              hosts=[f"{NET}.{k}.2" for k in (1, 2, 3)],
                              wrap=lambda i: netns.exec_argv(f"{tag}-m{i}"))
        cluster.start()
        try:
            yield PartitionLab(tag, cluster)
        finally:
            cluster.close()
    finally:
        netns.run("ip", "link", "delete", f"{tag}-h", check=False)
        for who in names:
            netns.kill_inside(f"{tag}-{who}")
        netns.delete(hub, *(f"{tag}-{who}" for who in names))


def provider(lab: PartitionLab, node: str, prefix: str) -> EtcdLeases:
    g = nx.path_graph(["a", "b"])
    return EtcdLeases(lab.cluster.endpoints, lambda: neighbourhood(g, node), prefix=prefix,
                      timeout_s=0.5, retry_s=0.0)


def partition(lab: PartitionLab, pool: ThreadPoolExecutor, event: int
              ) -> tuple[list[tuple[bool, bool, float]], int, str]:
    """One partition of PER_EVENT trials: (per trial whether a passed its check, whether
    b acted, and how long past a's TTL b was granted, to within its 0.1 s polling), leases
    the minority granted, what was cut off."""
    leader = lab.cluster.leader()
    assert leader is not None, "no leader before the partition"
    # Even events cut the leader off with a; odd ones a follower.
    alone = leader if event % 2 == 0 else (leader + 1) % 3
    prefixes = [f"/p{event}/{i}/" for i in range(PER_EVENT)]
    pa = [provider(lab, "a", p) for p in prefixes]
    pb = [provider(lab, "b", p) for p in prefixes]
    fences = [Fence() for _ in prefixes]

    def hold(p: EtcdLeases) -> tuple[Lease | Refusal, float]:
        got = lab.inside("ca", lambda: p.acquire("a", "restart_unit", TTL, time.monotonic()))
        return got, time.monotonic()  # granted by then: its TTL runs out at most TTL later

    granted = list(pool.map(hold, pa))
    held = [g for g, _t in granted]
    assert all(isinstance(x, Lease) for x in held), held
    lab.cut([f"m{alone}", "ca"], [m for m in MEMBERS if m != f"m{alone}"] + ["cb"])
    t_cut = time.monotonic()

    def fresh(i: int) -> Lease | Refusal:
        p = provider(lab, "a", f"/q{event}/{i}/")
        return lab.inside("ca", lambda: p.acquire("a", "restart_unit", TTL, time.monotonic()))

    def trial(i: int) -> tuple[bool, bool, float]:
        stale = held[i]
        assert isinstance(stale, Lease)
        give_up = t_cut + 3 * TTL + 10.0
        while isinstance(lb := lab.inside("cb", lambda: pb[i].acquire(
                "b", "restart_unit", TTL, time.monotonic())), Refusal):
            assert lb.reason in ("neighbourhood", "no_quorum"), lb
            if time.monotonic() > give_up:
                return False, False, time.monotonic() - granted[i][1] - TTL
            time.sleep(0.1)
        waited = time.monotonic() - granted[i][1] - TTL  # how long past a's TTL b was blocked
        b = fences[i].admit(lb.token)
        a = lab.inside("ca", lambda: pa[i].validate(stale, time.monotonic())
                       ) and fences[i].admit(stale.token)
        return a, b, waited

    try:
        minority = list(pool.map(fresh, range(8)))  # a's side alone grants nothing new
        assert all(isinstance(x, Refusal) and x.reason == "no_quorum" for x in minority), minority
        # Every trial's b asks at once and every 0.1 s, so when it is granted measures the
        # lease, not a queue of trials.
        with ThreadPoolExecutor(PER_EVENT) as everyone:
            results = list(everyone.map(trial, range(PER_EVENT)))
    finally:
        lab.heal()
    lab.cluster.wait_healthy()
    return (results, sum(isinstance(x, Lease) for x in minority),
            f"m{alone} ({'the leader' if alone == leader else 'a follower'})")


def figure(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"bench": "etcd_partition", "figure": name, "value": value,
                      "unit": unit, "ttl_s": TTL, **extra}, sort_keys=True))


def test_a_partition_never_lets_both_sides_act(lab: PartitionLab) -> None:
    double = a_acted = b_acted = minority_granted = 0
    waits: list[float] = []
    past: dict[str, list[float]] = {"leader": [], "follower": []}
    with ThreadPoolExecutor(16) as pool:
        try:
            for event in range(EVENTS):
                results, granted, alone = partition(lab, pool, event)
                minority_granted += granted
                double += sum(a and b for a, b, _w in results)
                a_acted += sum(a for a, _b, _w in results)
                b_acted += sum(b for _a, b, _w in results)
                waits += [w for _a, b, w in results if b]
                past["leader" if "leader" in alone else "follower"] += [
                    w for _a, b, w in results if b]
                print(f"partition {event}, {alone} cut off with a: b granted in "
                      f"{sum(b for _a, b, _w in results)} of {PER_EVENT}, "
                      f"{min(w for *_x, w in results):+.1f} to {max(w for *_x, w in results):+.1f}"
                      f" s past a's TTL; a passed its check in "
                      f"{sum(a for a, _b, _w in results)}")
        finally:
            lab.heal()
    trials = EVENTS * PER_EVENT
    figure("double_actions", double, "trials", trials=trials, partitions=EVENTS)
    figure("minority_grants", minority_granted, "requests", requests=EVENTS * 8)
    for cut, ws in past.items():
        if ws:
            figure("granted_past_ttl_s_max", round(max(ws), 2), "s", cut_off=cut,
                   trials=len(ws))
    print(f"{trials} partition trials: b acted in {b_acted}, a in {a_acted}, both in {double};"
          f" the minority granted {minority_granted} of {EVENTS * 8}; b granted "
          f"{min(waits):+.1f} to {max(waits):+.1f} s past a's TTL ({TTL} s)")
    assert double == 0 and minority_granted == 0
    assert b_acted == trials  # a lease cut off from its holder frees itself
