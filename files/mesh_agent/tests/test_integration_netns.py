"""End to end: agents as real processes (``python -m mesh_agent run``, enforce mode)
in namespaces this test creates, each with its own PKI files and ``mesh*`` veths.

Ring of 4::                    Ladder of 8::

    n0 --- n1                      n0 - n1 - n2 - n3
    |       |                      |    |    |    |
    n3 --- n2                      n4 - n5 - n6 - n7

They must converge, route across 2+ hops, survive silent and carrier failures
(measured as lost 10 ms pings), hand their routes over across a restart and, with
``restart_grace_s: 0``, remove them on SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from meshcore_testkit.agents import PROTO, AgentMesh, api, metric, outage, ping, ping_argv
from meshcore_testkit.marks import requires_root
from meshcore_testkit.pki import CA
from meshcore_tools.netns import ip, silent_cut, veth

pytestmark = requires_root

RING = [(0, 1), (1, 2), (2, 3), (3, 0)]
LADDER = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 7), (0, 4), (1, 5), (2, 6), (3, 7)]


@pytest.fixture
def ring(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[AgentMesh]:
    with AgentMesh(4, RING, tmp_path_factory.mktemp("ring"), prefix="mar", ca=ca) as mesh:
        yield mesh


@pytest.fixture
def ladder(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[AgentMesh]:
    # 8 agents plus pingers on a shared 2-vCPU box: 50 ms x 3 hello timers flap
    # from scheduling delay alone (observed at load average 20), so this test
    # uses 100 ms x 5. Carrier-loss failover does not depend on the timers.
    with AgentMesh(8, LADDER, tmp_path_factory.mktemp("ladder"), prefix="mal",
                   hello_interval_ms=100, dead_multiplier=5, ca=ca) as mesh:
        yield mesh


def failover_lines(mesh: AgentMesh) -> list[str]:
    return [
        f"n{n.index}: " + line.split("mesh_agent: ")[1]
        for n in mesh.nodes
        for line in n.log.read_text().splitlines()
        if "failover from" in line
    ]


def test_ring_converges_and_recovers(ring: AgentMesh) -> None:
    t_ready = ring.wait_for(ring.converged, 60, "all agents ready with N-1 routes")
    print(f"\nring: all 4 agents ready with full routes {t_ready:.2f}s after start")
    ns = ring.namespaces
    addr = [n.address for n in ring.nodes]

    code, body = api(ns[0], "/v1/paths/n2")
    assert code == 200, body
    path = json.loads(body)
    assert path["primary"][0] == "n0" and path["primary"][-1] == "n2"
    assert len(path["primary"]) == 3 and path["backup"] is not None
    assert len(path["disjoint"]) == 2
    topo = json.loads(api(ns[0], "/v1/topology")[1])
    assert len(topo["nodes"]) == 4 and len(topo["edges"]) == 4
    metrics = api(ns[0], "/metrics")[1]
    assert "meshcore_neighbors_up 2.0" in metrics
    assert 'meshcore_adverts_rejected_total{reason="bad_signature"} 0.0' in metrics
    # In a ring every destination has a backup: each node holds a standby route
    # per destination, through the other neighbour, for the kernel to fall back on.
    for i in range(4):
        assert len(ring.standby(i)) == 3, ring.standby(i)
    assert "meshcore_routes_standby 3.0" in metrics

    r = ping(ns[0], addr[2])
    assert r.returncode == 0, r.stdout + r.stderr  # two hops, both ways

    # 1) Silent failure (no carrier change): n2 drops everything arriving from n3.
    #    Both ends' echo probes go unanswered (n2 drops n3's requests and its own
    #    replies): each declares the other dead after 3 x 50 ms.
    lost, sent = outage(ns[3], addr[2], lambda: silent_cut(ns[2], ring.ifname[(2, 3)], True))
    print(
        f"ring: silent failure n2-n3: {lost}/{sent} pings n3->n2 lost at 10 ms => "
        f"~{lost * 10} ms outage (hello 50 ms x 3)"
    )
    assert sent - lost > 0.7 * sent
    silent_cut(ns[2], ring.ifname[(2, 3)], False)
    n3_to_n2 = ring.ifname[(3, 2)]
    ring.wait_for(
        lambda: (
            ring.converged()
            and any(
                line.startswith(addr[2] + " ") and f" dev {n3_to_n2} " in line
                for line in ring.routes(3)
            )
        ),
        20,
        "n2-n3 link back in use",
    )

    # 2) Carrier loss: cut n0-n1 at n0. n1 was adjacent; afterwards it is 3 hops away.
    #    Usually 1-2 pings are lost; more when n3 still routes n1 via n0 (a
    #    micro-loop until n3 has n0's new advert: the backup is not checked
    #    loop-free, see README) and the machine is loaded. Bounded loosely.
    lost, sent = outage(
        ns[0], addr[1], lambda: ip(ns[0], "link", "set", ring.ifname[(0, 1)], "down")
    )
    print(f"ring: carrier cut n0-n1: {lost}/{sent} pings n0->n1 lost at 10 ms => ~{lost * 10} ms")
    assert sent - lost > 0.7 * sent
    metrics = api(ns[0], "/metrics")[1]
    fo = re.search(r"meshcore_failover_duration_seconds_sum ([0-9.e-]+)", metrics)
    cnt = re.search(r"meshcore_failovers_total ([0-9.]+)", metrics)
    assert fo and cnt and float(cnt.group(1)) >= 1
    ring.wait_for(lambda: ping(ns[0], addr[1], count=1).returncode == 0, 5, "n0 -> n1 after cut")
    assert "failover from n1 (carrier)" in ring.nodes[0].log.read_text()
    print("\n".join(failover_lines(ring)))

    # A stop hands the routes to the next start (restart_grace_s, 30 s by default).
    assert ring.stop() == [0, 0, 0, 0]
    for n in ring.nodes:
        assert ip(n.ns, "route", "show", "proto", str(PROTO)).strip() != ""
        assert "shutdown: left " in n.log.read_text()


def test_a_restart_keeps_the_node_forwarding(
    tmp_path_factory: pytest.TempPathFactory, ca: CA
) -> None:
    """n0's agent restarts while n0 pings n2 (two hops) every 10 ms.

    With the hand-off (restart_grace_s > 0) the stopping agent leaves its routes and the
    new one keeps them until its own sync replaces them, so the node forwards through the
    restart; its neighbours keep the links meanwhile (the kernel answers their echo
    probes). A route no sync wants (a stale one planted here) goes once the grace is
    over. With restart_grace_s: 0 the routes go at stop and come back only after the new
    agent has converged: the contrast, measured in the same run. Last, SIGTERM with
    restart_grace_s: 0 removes every route and nexthop.
    """
    with AgentMesh(4, RING, tmp_path_factory.mktemp("handoff"), prefix="mah", ca=ca) as ring:
        ring.wait_for(ring.converged, 60, "all agents ready with N-1 routes")
        ns, addr = ring.namespaces, [n.address for n in ring.nodes]
        stale = "10.66.0.1"
        ring.restart(0, {"restart_grace_s": 8})  # from now on n0 hands off with 8 s of grace
        ring.wait_for(ring.converged, 30, "n0 back")
        ip(ns[0], "route", "add", f"{stale}/32", "via", ring.link_address(1, 0),
           "proto", str(PROTO))

        def restart() -> None:
            ring.restart(0)

        lost_keep, sent = outage(ns[0], addr[2], restart, count=400)
        log = ring.nodes[0].log.read_text()
        assert "kept " in log and "routes of the previous run" in log, log[-2000:]
        assert stale in ip(ns[0], "route", "show", "proto", str(PROTO))  # within the grace
        ring.wait_for(
            lambda: stale not in ip(ns[0], "route", "show", "proto", str(PROTO)), 15,
            "the stale route swept after the grace",
        )
        ring.wait_for(ring.converged, 30, "n0 converged after the hand-off")
        assert "restart grace over: removed " in ring.nodes[0].log.read_text()
        assert len(ring.routes(0)) == 3  # our own routes survive the sweep

        # The contrast: no hand-off. The first restart flushes at start, the second at
        # stop and at start; the second is measured.
        ring.restart(0, {"restart_grace_s": 0})
        ring.wait_for(ring.converged, 30, "n0 back without hand-off")
        lost_flush, sent_flush = outage(ns[0], addr[2], restart, count=400)
        print(f"\nrestart of n0's agent, n0 -> n2 pings lost at 10 ms: hand-off {lost_keep}/"
              f"{sent}, flush {lost_flush}/{sent_flush}")
        assert lost_keep < lost_flush, (lost_keep, lost_flush)
        assert lost_keep <= 0.05 * sent, lost_keep
        ring.wait_for(ring.converged, 30, "n0 back again")
        # SIGTERM with restart_grace_s: 0 removes every route and nexthop n0 installed.
        ring.stop()
        assert ip(ns[0], "route", "show", "proto", str(PROTO)).strip() == ""
        assert ip(ns[0], "nexthop", "show").strip() == ""


@pytest.mark.parametrize("echo", [True, False], ids=["echo", "hellos-only"])
def test_stalled_agent_is_not_a_dead_link(
    tmp_path_factory: pytest.TempPathFactory, ca: CA, echo: bool
) -> None:
    """SIGSTOP one agent for 0.6 s (4x the 150 ms dead time): its kernel still forwards.

    With echo probes its neighbours keep the links (the kernel answers for the
    stopped process). With hellos only they declare it dead: the false death
    that fed the flap storms of the 50-agent bench, kept here as the contrast.
    """
    with AgentMesh(3, [(0, 1), (1, 2)], tmp_path_factory.mktemp("stall"), prefix="mas",
                   echo=echo, ca=ca) as mesh:
        mesh.wait_for(mesh.converged, 60, "3-node line converged")

        def answered() -> float:
            metrics = api(mesh.namespaces[0], "/metrics")[1]
            m = re.search(r'meshcore_echo_probes_total\{kind="answered"\} ([0-9.e+]+)', metrics)
            assert m is not None
            return float(m.group(1))

        if echo:  # counters are synced into Prometheus once a second
            mesh.wait_for(lambda: answered() > 0, 5, "n1's kernel answering n0's probes")
        else:
            time.sleep(1.5)
            assert answered() == 0
        before = [len(n.log.read_text()) for n in mesh.nodes]
        proc = mesh.nodes[1].proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)  # `ip netns exec` execs: this is the agent
        time.sleep(0.6)
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        downs = [
            f"n{n.index}: {line}"
            for n, start in zip(mesh.nodes, before, strict=True)
            for line in n.log.read_text()[start:].splitlines()
            if "neighbour n1 down" in line
        ]
        if echo:
            assert downs == [], downs
        else:
            assert {d.split(":")[0] for d in downs} == {"n0", "n2"}, downs  # both time n1 out


def test_a_ping_flood_from_the_node_is_not_a_dead_link(
    tmp_path_factory: pytest.TempPathFactory, ca: CA
) -> None:
    """The node itself floods its neighbour with pings (``ping -f`` for 4 s: thousands of
    answers a second on that interface; an operator's test, a monitoring probe). The echo
    socket keeps only the answers to our own probes (an in-kernel filter), so the link
    stays up. Before the filter every answer queued in it too, took each hello tick's read
    budget, and ours waited behind them: the agent declared its neighbour dead."""
    with AgentMesh(2, [(0, 1)], tmp_path_factory.mktemp("flood"), prefix="maf",
                   hello_interval_ms=200, ca=ca) as mesh:
        mesh.wait_for(mesh.converged, 60, "2-node line converged")
        ns0 = mesh.namespaces[0]
        answered = 'meshcore_echo_probes_total'
        mesh.wait_for(lambda: metric(ns0, answered, '{kind="answered"}') > 0, 10,
                      "n1's kernel answering n0's probes")
        before = len(mesh.nodes[0].log.read_text())
        flood = subprocess.run(ping_argv(ns0, mesh.link_address(1, 0), "-f", "-q", "-w", "4"),
                               capture_output=True, text=True, timeout=30)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", flood.stdout)
        assert m and int(m.group(2)) > 2000, flood.stdout  # the flood was answered
        time.sleep(1.0)
        downs = [line for line in mesh.nodes[0].log.read_text()[before:].splitlines()
                 if "neighbour n1 down" in line]
        assert downs == [], downs


def test_systemd_hears_ready_the_watchdog_and_stopping(
    tmp_path_factory: pytest.TempPathFactory, ca: CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent under systemd's notify protocol, with the datagram socket systemd would
    read (a path: abstract names are per network namespace): READY=1 once it runs,
    WATCHDOG=1 every half interval while it runs, none while it is stopped (SIGSTOP: the
    hang systemd must catch), again after SIGCONT, STOPPING=1 on SIGTERM. The unit's
    side (Type=notify, WatchdogSec=, the restart) is molecule mesh_agent's verifier."""
    base = tmp_path_factory.mktemp("notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(base / "notify"))
    sock.settimeout(0.2)
    got: list[tuple[float, int, str]] = []  # (when, sender pid, message), as systemd reads
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = next((int.from_bytes(d[:4], "little") for lvl, typ, d in anc
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), 0)
            got.append((time.monotonic(), pid, data.decode()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(base / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # 1 s: pings every 0.5 s

    def pings(pid: int, since: float, until: float) -> int:
        return sum(1 for t, p, m in got if p == pid and m == "WATCHDOG=1" and since <= t < until)

    try:
        with AgentMesh(2, [(0, 1)], base, prefix="man", ca=ca) as mesh:
            mesh.wait_for(mesh.converged, 60, "2-node line converged")
            proc = mesh.nodes[1].proc
            assert proc is not None  # `ip netns exec` execs: this is the agent
            ready = [(p, m) for _, p, m in got if m.startswith("READY=1")]
            assert sorted(p for p, _ in ready) == sorted(n.proc.pid for n in mesh.nodes
                                                         if n.proc), (ready, got[:5])
            assert all("STATUS=enforce mode" in m for _, m in ready), ready
            t0 = time.monotonic()
            time.sleep(3)
            assert pings(proc.pid, t0, t0 + 3) >= 5, got[-10:]
            proc.send_signal(signal.SIGSTOP)
            t1 = time.monotonic()
            try:
                time.sleep(2.5)
            finally:
                proc.send_signal(signal.SIGCONT)
            t2 = time.monotonic()
            time.sleep(2)
            assert pings(proc.pid, t1 + 0.1, t2) == 0, got[-10:]  # stopped: silent
            assert pings(proc.pid, t2, t2 + 2) >= 3, got[-10:]  # and back
            other = mesh.nodes[0].proc
            assert other is not None and pings(other.pid, t1, t2) >= 4  # n0 never stopped
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert (proc.pid, "STOPPING=1") in [(p, m) for _, p, m in got]
    finally:
        done.set()
        reader.join(timeout=5)
        sock.close()


def test_ladder_repeated_carrier_cuts(ladder: AgentMesh) -> None:
    t_ready = ladder.wait_for(ladder.converged, 90, "8 agents ready with 7 routes each")
    print(f"\nladder: 8 agents ready with full routes {t_ready:.2f}s after start")
    ns = ladder.namespaces
    addr = [n.address for n in ladder.nodes]
    r = ping(ns[0], addr[7])
    assert r.returncode == 0, r.stdout + r.stderr  # 4 hops

    outages = []
    # Each cut is on n0 -> n3's shortest path; the repair is local to the cutting node.
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 1), (1, 2), (2, 3)]:
        dev = ladder.ifname[(a, b)]
        lost, sent = outage(
            ns[0], addr[3], lambda a=a, dev=dev: ip(ns[a], "link", "set", dev, "down"), count=150
        )
        outages.append(lost * 10)
        print(f"ladder: cut n{a}-n{b} at n{a}: {lost}/{sent} pings n0->n3 lost => ~{lost * 10} ms")
        assert sent - lost > 0.5 * sent
        ip(ns[a], "link", "set", dev, "up")
        t = ladder.wait_for(ladder.converged, 30, f"reconvergence after restoring n{a}-n{b}")
        ladder.wait_for(
            lambda a=a, b=b: any(
                line.startswith(addr[b] + " ") and f" dev {ladder.ifname[(a, b)]} " in line
                for line in ladder.routes(a)
            ),
            30,
            f"n{a}-n{b} back in use",
        )
        print(f"ladder: n{a}-n{b} restored and reconverged in {t:.2f}s")
    print(f"ladder: outage ms per cut {outages}, median {statistics.median(outages)} ms")
    print("\n".join(failover_lines(ladder)))
    assert ladder.stop() == [0] * 8


def test_interfaces_added_after_start(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> None:
    """The lab may wire veths after the agents start: they must be picked up live."""
    with AgentMesh(2, [], tmp_path_factory.mktemp("late"), prefix="mah", ca=ca) as mesh:
        ns = mesh.namespaces
        mesh.wait_for(lambda: api(ns[0], "/healthz")[0] == 200, 30, "agent 0 API")
        mesh.wait_for(lambda: api(ns[1], "/healthz")[0] == 200, 30, "agent 1 API")
        assert api(ns[0], "/readyz")[0] == 503  # no neighbours yet
        veth(ns[0], "mesh0", ns[1], "mesh0", "10.78.0.0/31", "10.78.0.1/31")
        t = mesh.wait_for(mesh.converged, 20, "both agents converged over the late link")
        print(f"\nlate link: converged {t:.2f}s after the veth came up")
        r = ping(ns[0], mesh.nodes[1].address)
        assert r.returncode == 0, r.stdout + r.stderr
