"""The etcd lease provider against a real 3-member etcd (Debian's etcd-server) on 127.0.0.1.

A lease with its fencing token; a second holder refused (neighbourhood, fleet cap);
the TTL freeing a lease; a holder SIGSTOPped past its TTL unable to act on its
stale token; contention trials with no double grant; no quorum refused with a reason
while local actions still run. The cluster lives in a temporary directory on free
ports (:mod:`meshcore_testkit.etcd`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import networkx as nx
import pytest
from cryptography.hazmat.primitives import serialization
from meshcore_testkit.etcd import EtcdCluster
from meshcore_testkit.pki import CA

from mesh_agent.mapek.etcd import EtcdLeases
from mesh_agent.mapek.lease import Fence, Refusal, neighbourhood
from mesh_agent.mapek.plan import ActionKind
from mesh_agent.mapek.safety import Lease, Safety

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="needs etcd (Debian package etcd-server)")

TTL = 2  # etcd's minimum here is 1.5 x the 500 ms election timeout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    c = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    c.start()
    try:
        yield c
    finally:
        c.close()


def leases(cluster: EtcdCluster, graph: nx.Graph, node: str, prefix: str,
           cap_pct: float = 5.0) -> EtcdLeases:
    return EtcdLeases(cluster.endpoints, lambda: neighbourhood(graph, node),
                      cap_pct=cap_pct, prefix=prefix, timeout_s=1.0)


def test_granted_with_a_token_then_refused_with_a_reason(cluster: EtcdCluster) -> None:
    g = nx.path_graph(["a", "b", "c", "d", "e", "f"])  # cap at 34 %: 3 of 6
    p = "/t1/"
    la = leases(cluster, g, "a", p, 34.0).acquire("a", "restart_unit", TTL, time.monotonic())
    assert isinstance(la, Lease) and la.token > 1 and la.lease_id
    assert leases(cluster, g, "c", p, 34.0).acquire("c", "restart_unit", TTL,
                                                    time.monotonic()) == Refusal("neighbourhood",
                                                                                 "a")
    lf = leases(cluster, g, "f", p, 34.0).acquire("f", "restart_unit", TTL, time.monotonic())
    assert isinstance(lf, Lease) and lf.token > la.token
    # The fleet cap: a fleet of 40 at 5 % gets 2 slots, whoever asks.
    far = nx.empty_graph([f"x{i}" for i in range(40)])
    got = [leases(cluster, far, f"x{i}", "/t1cap/").acquire(f"x{i}", "isolate_origin", TTL,
                                                              time.monotonic())
           for i in range(5)]
    assert sum(isinstance(x, Lease) for x in got) == 2
    assert {x.reason for x in got if isinstance(x, Refusal)} == {"fleet_cap"}


def test_the_ttl_frees_a_lease_nobody_released(cluster: EtcdCluster) -> None:
    g = nx.path_graph(["a", "b"])
    t0 = time.monotonic()
    la = leases(cluster, g, "a", "/t2/").acquire("a", "restart_unit", TTL, t0)
    assert isinstance(la, Lease)
    b = leases(cluster, g, "b", "/t2/")
    while isinstance(lb := b.acquire("b", "restart_unit", TTL, time.monotonic()), Refusal):
        assert lb.reason == "neighbourhood"
        assert time.monotonic() - t0 < TTL + 2.0, "a dead holder blocked past its TTL"
        time.sleep(0.1)
    waited = time.monotonic() - t0
    print(f"a lease nobody released (TTL {TTL} s) was granted again after {waited:.2f} s")
    assert TTL - 0.5 < waited < TTL + 2.0 and lb.token > la.token


def test_a_renewed_lease_keeps_its_slot_past_its_ttl_then_frees_it(
        cluster: EtcdCluster) -> None:
    """An action that lasts renews its lease: the neighbour stays refused for as long as
    the renewals go on (three TTLs here), the deadline moves with each, and once they stop
    the TTL frees the slot; a renewal after that says the lease is gone."""
    g = nx.path_graph(["a", "b"])
    a, b = leases(cluster, g, "a", "/t2r/"), leases(cluster, g, "b", "/t2r/")
    t0 = time.monotonic()
    la = a.acquire("a", "isolate_origin", TTL, t0)
    assert isinstance(la, Lease)
    held = la
    while time.monotonic() - t0 < 3 * TTL:
        time.sleep(TTL / 3)
        got = a.renew(held, TTL, time.monotonic())
        assert isinstance(got, Lease) and got.expires_at > held.expires_at
        assert got.token == la.token and got.lease_id == la.lease_id
        held = got
        assert b.acquire("b", "isolate_origin", TTL, time.monotonic()) == \
            Refusal("neighbourhood", "a")
        assert a.validate(held, time.monotonic())
    stopped = time.monotonic()
    while isinstance(lb := b.acquire("b", "isolate_origin", TTL, time.monotonic()), Refusal):
        assert time.monotonic() - stopped < TTL + 2.0, "a lease no longer renewed blocked"
        time.sleep(0.1)
    print(f"renewed for {stopped - t0:.1f} s (TTL {TTL} s); freed "
          f"{time.monotonic() - stopped:.2f} s after the last renewal")
    assert lb.token > la.token
    assert a.renew(held, TTL, time.monotonic()) is None


HOLDER = """
import sys, time
import networkx as nx
from mesh_agent.mapek.etcd import EtcdLeases
from mesh_agent.mapek.lease import neighbourhood
g = nx.path_graph(["a", "b"])
p = EtcdLeases(sys.argv[1].split(","), lambda: neighbourhood(g, "a"), prefix="/t3/")
lease = p.acquire("a", "restart_unit", float(sys.argv[2]), time.monotonic())
print(lease.token, flush=True)
sys.stdin.readline()  # paused here (SIGSTOP) between its grant and its action
print(int(p.validate(lease, time.monotonic())), lease.token, flush=True)
"""


def test_a_holder_stopped_past_its_ttl_cannot_act_on_its_stale_token(cluster: EtcdCluster) -> None:
    fence = Fence()  # what the disruptive action reaches (the executor, the target)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, ",".join(cluster.endpoints), str(TTL)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        stale = int(holder.stdout.readline())
        os.kill(holder.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        b = leases(cluster, nx.path_graph(["a", "b"]), "b", "/t3/")
        while isinstance(lb := b.acquire("b", "restart_unit", TTL, time.monotonic()), Refusal):
            assert time.monotonic() - t0 < TTL + 2.0
            time.sleep(0.1)
        print(f"holder stopped with token {stale}; b granted token {lb.token} after "
              f"{time.monotonic() - t0:.2f} s")
        assert lb.token > stale and fence.admit(lb.token)  # b acts under its lease
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        still_valid, token = map(int, holder.stdout.readline().split())
        assert (still_valid, token) == (0, stale)  # its own check says no
        assert not fence.admit(token)  # and the fence refuses it anyway
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()


TRIALS = 200


def test_contention_never_grants_twice(cluster: EtcdCluster) -> None:
    """Five contenders at once per trial, in threads: neighbours (one may win) on even
    trials, strangers in a fleet of 60 at 5 % (three slots) on odd ones."""
    hood = nx.complete_graph([f"h{i}" for i in range(5)])
    fleet = nx.empty_graph([f"s{i}" for i in range(60)])
    double, tokens = 0, []
    started = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        for trial in range(TRIALS):
            g, names, most = ((hood, [f"h{i}" for i in range(5)], 1) if trial % 2 == 0
                              else (fleet, [f"s{i}" for i in range(5)], 3))
            providers = {n: leases(cluster, g, n, f"/t4/{trial}/") for n in names}
            got = list(pool.map(
                lambda n, ps=providers: ps[n].acquire(n, "restart_unit", 30, time.monotonic()),
                names))
            won = [x for x in got if isinstance(x, Lease)]
            double += len(won) > most
            assert len(won) >= 1, got
            assert all(x.reason in ("neighbourhood", "fleet_cap", "contention")
                       for x in got if isinstance(x, Refusal)), got
            tokens += sorted(x.token for x in won)
            for x in won:
                providers[x.holder].release(x)
    took = time.monotonic() - started
    print(f"{TRIALS} contention trials in {took:.1f} s, {len(tokens)} grants, {double} double")
    assert double == 0
    assert len(set(tokens)) == len(tokens) and tokens == sorted(tokens)


def test_stale_holders_never_act_beside_the_new_one(cluster: EtcdCluster) -> None:
    """200 trials at once (one TTL of waiting for all): holder a is granted, then is not
    scheduled past its TTL (what SIGSTOP does, above, for one), b is granted; a wakes
    before b acts on odd trials, after on even ones. a acts only if its own check
    (deadline, then etcd) passes and the fence admits its token: never beside b."""
    g = nx.path_graph(["a", "b"])
    pa = [leases(cluster, g, "a", f"/t6/{i}/") for i in range(TRIALS)]
    pb = [leases(cluster, g, "b", f"/t6/{i}/") for i in range(TRIALS)]
    fences = [Fence() for _ in range(TRIALS)]
    with ThreadPoolExecutor(8) as pool:
        held = list(pool.map(lambda p: p.acquire("a", "restart_unit", TTL, time.monotonic()),
                             pa))
        assert all(isinstance(x, Lease) for x in held)
        time.sleep(TTL + 1.0)  # a is "stopped" past its TTL; etcd expires its keys

        def trial(i: int) -> tuple[bool, bool, int]:
            stale = held[i]
            assert isinstance(stale, Lease)
            lb: Lease | Refusal

            def a_acts() -> bool:
                return pa[i].validate(stale, time.monotonic()) and fences[i].admit(stale.token)

            a_first = a_acts() if i % 2 else False
            # etcd revokes expired leases from a rate-limited queue (200 at once here, on
            # a loaded CI box), so b may still be refused for a's keys a little past the
            # TTL: it asks again, as the agent's next loop step would, within a bound.
            tries = 1
            while isinstance(lb := pb[i].acquire("b", "restart_unit", TTL, time.monotonic()),
                             Refusal) and time.monotonic() < give_up:
                assert lb.reason in ("neighbourhood", "no_quorum"), lb
                assert not a_acts()  # a's keys linger, yet a cannot act on them
                tries += 1
                time.sleep(0.2)
            b_acted = isinstance(lb, Lease) and fences[i].admit(lb.token)
            a_late = a_acts()
            return a_first or a_late, b_acted, tries

        give_up = time.monotonic() + 2.0 * TTL + 5.0
        results = list(pool.map(trial, range(TRIALS)))
    double = sum(a and b for a, b, _t in results)
    print(f"{TRIALS} stale-holder trials: b acted in {sum(b for _a, b, _t in results)}, "
          f"a in {sum(a for a, _b, _t in results)}, both in {double}; b asked again in "
          f"{sum(t > 1 for _a, _b, t in results)} (at most {max(t for _a, _b, t in results)} asks)")
    assert double == 0 and all(b for _a, b, _t in results)


def test_a_partitioned_member_neither_blocks_nor_doubles_a_grant(cluster: EtcdCluster) -> None:
    """One member SIGSTOPped (it neither answers nor votes, as if cut off): the clients
    skip it after one timeout, the majority keeps granting, and never twice."""
    hood = nx.complete_graph([f"p{i}" for i in range(5)])
    names = list(hood)
    providers = {n: EtcdLeases(cluster.endpoints, lambda n=n: neighbourhood(hood, n),
                               prefix="/t7/", timeout_s=0.5) for n in names}
    cluster.pause_member(0)
    double, granted = 0, 0
    t0 = time.monotonic()
    try:
        # If it was the leader, the other two elect one first (election timeout 500 ms).
        while not (cluster.healthy(1) and cluster.healthy(2)):
            assert time.monotonic() - t0 < 15.0, "no leader among the two left"
            time.sleep(0.1)
        with ThreadPoolExecutor(5) as pool:
            for _ in range(50):
                got = list(pool.map(lambda n: providers[n].acquire(n, "restart_unit", 30,
                                                                   time.monotonic()), names))
                won = [x for x in got if isinstance(x, Lease)]
                double += len(won) > 1
                granted += len(won)
                for x in won:
                    providers[x.holder].release(x)
    finally:
        cluster.pause_member(0, paused=False)
        cluster.wait_healthy()
    print(f"one member partitioned: 50 trials in {time.monotonic() - t0:.1f} s, "
          f"{granted} grants, {double} double")
    assert double == 0 and granted == 50


def test_no_quorum_refuses_with_a_reason_and_local_actions_still_run(tmp_path: Path) -> None:
    c = EtcdCluster(tmp_path / "noq")
    c.start()
    try:
        g = nx.path_graph(["a", "b"])
        assert isinstance(leases(c, g, "a", "/t5/").acquire("a", "x", TTL, time.monotonic()),
                          Lease)
        c.stop_member(1)
        c.stop_member(2)
        p = leases(c, g, "b", "/t5/")
        t0 = time.monotonic()
        got = p.acquire("b", "restart_unit", TTL, t0)
        took = time.monotonic() - t0
        print(f"no quorum: refused in {took:.2f} s ({got.detail})")
        assert isinstance(got, Refusal) and got.reason == "no_quorum", got
        assert "ConnectionFailedError" in got.detail and "Timeout" in got.detail
        assert took < 3 * 1.0 + 1.0  # at most one timeout per endpoint
        v = Safety.settle(got)
        assert (v.allowed, v.outcome) == (False, "refused:no_lease") and "no_quorum" in v.reason
        s = Safety("b", "enforce", p)
        assert s.check(ActionKind.QUARANTINE_LINK, time.monotonic()).allowed  # local: runs
    finally:
        c.close()


def test_missing_tls_files_refuse_with_a_reason_not_a_crash(tmp_path: Path) -> None:
    """A node whose identity files are not on disk (SPIRE keeps its SVID in memory) gets
    a refusal naming the file from an https endpoint, not an exception in the shell's
    worker thread; a plain http endpoint does not need them at all."""
    missing = tuple(str(tmp_path / f) for f in ("ca.crt", "node.crt", "node.key"))
    g = nx.path_graph(["a", "b"])
    p = EtcdLeases(["https://127.0.0.1:1"], lambda: neighbourhood(g, "a"), timeout_s=0.5,
                   tls=(missing[0], missing[1], missing[2]))
    got = p.acquire("a", "restart_unit", TTL, time.monotonic())
    assert isinstance(got, Refusal) and got.reason == "no_quorum", got
    assert "ca.crt" in got.detail, got.detail  # the first file requests looks for
    # The CA there, the node's certificate missing: named too (whatever CA bundle the
    # environment names: the client takes nothing from it).
    (tmp_path / "ca.crt").write_bytes(CA.create().cert.public_bytes(serialization.Encoding.PEM))
    p = EtcdLeases(["https://127.0.0.1:1"], lambda: neighbourhood(g, "a"), timeout_s=0.5,
                   tls=(missing[0], missing[1], missing[2]))
    got = p.acquire("a", "restart_unit", TTL, time.monotonic())
    assert isinstance(got, Refusal) and got.reason == "no_quorum", got
    assert "node.crt" in got.detail, got.detail
    c = EtcdCluster(tmp_path / "plain")
    c.start()
    try:
        plain = EtcdLeases(c.endpoints, lambda: neighbourhood(g, "a"), timeout_s=1.0,
                           tls=(missing[0], missing[1], missing[2]))
        assert isinstance(plain.acquire("a", "restart_unit", TTL, time.monotonic()), Lease)
    finally:
        c.close()
