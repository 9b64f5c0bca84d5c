"""End to end: 4 agents as real processes in 4 namespaces wired as a ring.

::

    n0 --- n1
    |       |
    n3 --- n2

Each agent runs ``python -m mesh_agent run`` in enforce mode with its own PKI
files, finds its ``mesh*`` veths, and must route n0 <-> n2 (two hops). Then a
link is cut and traffic must recover through the other side of the ring.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns_util import add_ns, del_ns, ip, requires_root, sh
from pki import CA

pytestmark = requires_root

N = 4
TAG = f"{os.getpid() % 100000}"
NS = [f"mai{TAG}n{i}" for i in range(N)]
ADDR = [f"10.77.0.{i + 1}" for i in range(N)]
PROTO = 99


@dataclass
class Node:
    index: int
    ns: str
    proc: subprocess.Popen[bytes]
    log: Path


def api(ns: str, path: str) -> tuple[int, str]:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-m",
            "1",
            "-w",
            "\n%{http_code}",
            f"http://127.0.0.1:9105{path}",
        ],
        capture_output=True,
        text=True,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def wait_for(pred: object, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.05)
    state = "\n".join(
        f"{ns}: ready={api(ns, '/readyz')} nbrs={api(ns, '/v1/neighbors')[1]}\n"
        + ip(ns, "route", "show", "proto", str(PROTO))
        for ns in NS
    )
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{state}")


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[list[Node]]:
    base = tmp_path_factory.mktemp("ring")
    del_ns(*NS)
    nodes: list[Node] = []
    try:
        for i in range(N):
            add_ns(NS[i], ADDR[i])
        ifcount = [0] * N
        for link, (a, b) in enumerate([(i, (i + 1) % N) for i in range(N)]):
            ia, ib = f"mesh{ifcount[a]}", f"mesh{ifcount[b]}"
            ifcount[a] += 1
            ifcount[b] += 1
            tmp_a, tmp_b = f"t{TAG}a{link}", f"t{TAG}b{link}"
            sh(
                "ip",
                "link",
                "add",
                tmp_a,
                "netns",
                NS[a],
                "type",
                "veth",
                "peer",
                "name",
                tmp_b,
                "netns",
                NS[b],
            )
            ip(NS[a], "link", "set", tmp_a, "name", ia)
            ip(NS[b], "link", "set", tmp_b, "name", ib)
            ip(NS[a], "addr", "add", f"10.98.{link}.0/31", "dev", ia)
            ip(NS[b], "addr", "add", f"10.98.{link}.1/31", "dev", ib)
            ip(NS[a], "link", "set", ia, "up")
            ip(NS[b], "link", "set", ib, "up")
        for i in range(N):
            d = base / f"n{i}"
            pki = ca.write(d / "pki", f"n{i}")
            cfg = d / "agent.yml"
            cfg.write_text(
                json.dumps(
                    {
                        "node_name": f"n{i}",
                        "node_address": ADDR[i],
                        "mode": "enforce",
                        "hello_interval_ms": 50,
                        "dead_multiplier": 3,
                        "advert_interval_s": 1.0,
                        "api_listen": "127.0.0.1:9105",
                        "identity": pki,
                        "state_dir": str(d),
                        "route_protocol": PROTO,
                    }
                )
            )
            log = d / "agent.log"
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    NS[i],
                    sys.executable,
                    "-m",
                    "mesh_agent",
                    "run",
                    "--config",
                    str(cfg),
                ],
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            nodes.append(Node(i, NS[i], proc, log))
        yield nodes
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        for n in nodes:
            try:
                n.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                n.proc.kill()
        del_ns(*NS)


def ping(
    ns: str, dst: str, count: int = 3, interval: float = 0.2
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "1",
            dst,
        ],
        capture_output=True,
        text=True,
    )


def outage(ns: str, dst: str, fault: object, interval: float = 0.01) -> tuple[int, int]:
    """Ping *dst* from *ns* every *interval* s, inject *fault*; return (lost, sent)."""
    pinger = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-i",
            str(interval),
            "-c",
            "250",
            "-W",
            "0.5",
            dst,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)
    fault()  # type: ignore[operator]
    out, _ = pinger.communicate(timeout=30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)) - int(m.group(2)), int(m.group(1))


def test_ring_converges_and_recovers(ring: list[Node]) -> None:
    t_ready = wait_for(
        lambda: (
            all(api(n.ns, "/readyz")[0] == 200 for n in ring)
            and all(
                len(ip(n.ns, "route", "show", "proto", str(PROTO)).strip().splitlines()) == N - 1
                for n in ring
            )
        ),
        timeout=30,
        what="all agents ready with N-1 routes",
    )
    print(f"\nall {N} agents ready with full routes {t_ready:.2f}s after start")
    for n in ring:
        assert n.proc.poll() is None, n.log.read_text()

    code, body = api(NS[0], "/v1/paths/n2")
    assert code == 200, body
    path = json.loads(body)
    assert path["primary"][0] == "n0" and path["primary"][-1] == "n2"
    assert len(path["primary"]) == 3 and path["backup"] is not None
    assert len(path["disjoint"]) == 2
    code, body = api(NS[0], "/v1/topology")
    topo = json.loads(body)
    assert len(topo["nodes"]) == N and len(topo["edges"]) == N
    code, metrics = api(NS[0], "/metrics")
    assert "meshcore_neighbors_up 2.0" in metrics
    assert 'meshcore_adverts_rejected_total{reason="bad_signature"} 0.0' in metrics

    r = ping(NS[0], ADDR[2])
    assert r.returncode == 0, r.stdout + r.stderr  # two hops, both ways

    # 1) Silent failure (no carrier change): n2 drops everything arriving from n3.
    #    n2 times n3 out (3 x 50 ms); n3 sees n2's hellos stop listing it (one-way).
    #    Traffic n3 -> n2 must move to n3-n0-n1-n2.
    rules = (
        "table netdev mai {\n  chain ing {\n"
        '    type filter hook ingress device "mesh1" priority 0;\n'  # n2's link to n3
        "    drop\n  }\n}\n"
    )
    lost, sent = outage(
        NS[3],
        ADDR[2],
        lambda: subprocess.run(
            ["ip", "netns", "exec", NS[2], "nft", "-f", "-"], input=rules, text=True, check=True
        ),
    )
    print(
        f"silent failure n2-n3: {lost} of {sent} pings n3->n2 lost at 10 ms intervals "
        f"=> ~{lost * 10} ms outage (hello 50 ms x 3)"
    )
    assert sent - lost > 0.7 * sent
    sh("ip", "netns", "exec", NS[2], "nft", "delete", "table", "netdev", "mai")
    wait_for(
        lambda: (
            all(api(n.ns, "/readyz")[0] == 200 for n in ring)
            and any(
                line.startswith(ADDR[2] + " ") and " dev mesh0 " in line
                for line in ip(NS[3], "route", "show", "proto", str(PROTO)).splitlines()
            )
        ),
        10,
        "n2-n3 link back in use",
    )

    # 2) Carrier loss: cut n0-n1 (n0's mesh0). n1 was directly attached; afterwards
    #    it is 3 hops away.
    lost, sent = outage(NS[0], ADDR[1], lambda: ip(NS[0], "link", "set", "mesh0", "down"))
    print(
        f"link cut n0-n1 (carrier): {lost} of {sent} pings n0->n1 lost at 10 ms intervals "
        f"=> ~{lost * 10} ms outage"
    )
    # Usually 1-2 pings; more when n3 still routes n1 via n0 (a micro-loop until n3
    # has n0's new advert: the backup is not checked loop-free, see README) and the
    # machine is loaded. Bound it loosely so the test measures rather than flakes.
    assert sent - lost > 0.7 * sent

    _, metrics = api(NS[0], "/metrics")
    fo = re.search(r"meshcore_failover_duration_seconds_sum ([0-9.e-]+)", metrics)
    cnt = re.search(r"meshcore_failovers_total ([0-9.]+)", metrics)
    assert fo and cnt and float(cnt.group(1)) >= 1
    print(
        f"n0 agent: {float(cnt.group(1)):.0f} failover(s), "
        f"{float(fo.group(1)) * 1000 / float(cnt.group(1)):.3f} ms mean detection->installed"
    )
    wait_for(lambda: ping(NS[0], ADDR[1], count=1).returncode == 0, 5, "n0 -> n1 after cut")
    assert "failover from n1 (carrier)" in ring[0].log.read_text()
    for n in ring:
        print(
            f"--- n{n.index}: "
            + " | ".join(
                line.split("mesh_agent: ")[1]
                for line in n.log.read_text().splitlines()
                if "failover from" in line
            )
        )

    # Clean shutdown removes every route the agents installed.
    for n in ring:
        n.proc.send_signal(signal.SIGTERM)
    for n in ring:
        assert n.proc.wait(timeout=10) == 0, n.log.read_text()
        assert ip(n.ns, "route", "show", "proto", str(PROTO)).strip() == ""
        assert ip(n.ns, "nexthop", "show").strip() == ""
