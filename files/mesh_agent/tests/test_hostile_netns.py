"""The independent probe's attacks (issue 13), as tests with real agents in namespaces.

Three enforce-mode agents in a line, a - b - c (n0 - n1 - n2, 50 ms x 3 hellos,
echo on), and an attacker namespace x (n3, no agent) on a new link to b, with a
route to a's link address through b. Each attack runs while a pings c every
10 ms (the witness, through b); each must lose no ping (no failover is due:
nothing real failed) and be counted by reason in the victim's metrics, and no
agent may log a traceback. The agents run with LimitNOFILE=1024, as the unit.

    a (n0) --mesh0-- b (n1) --mesh1-- c (n2)
                     | mesh2
                     x (n3, attacker)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from meshcore_testkit import attacker
from meshcore_testkit.agents import AgentMesh, api, metric, outage
from meshcore_testkit.marks import requires_root
from meshcore_testkit.pki import CA
from meshcore_tools.netns import exec_argv, ip

from mesh_agent.identity import Identity
from mesh_agent.topology import encode_unsigned, signature_trailer
from mesh_agent.topology.lsdb import MAX_SEQ, VERIFY_BURST, VERIFY_RATE

pytestmark = requires_root

ATTACKER = [sys.executable, "-m", "meshcore_testkit.attacker"]
A, B, C, X = 0, 1, 2, 3
HELLO, ADVERT = 6767, 6768
PING_PERIOD = 0.016  # ping -i 0.01 sends about every 16 ms here (MACHINE-NOTES)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[AgentMesh]:
    with AgentMesh(4, [(A, B), (B, C), (X, B)], tmp_path_factory.mktemp("hostile"),
                   prefix="mha", idle=frozenset({X}), ca=ca) as mesh:
        # The attacker reaches a's link address through b (two hops from a).
        ip(mesh.nodes[X].ns, "route", "add", f"{mesh.link_address(A, B)}/31", "via",
           mesh.link_address(B, X))
        mesh.wait_for(mesh.converged, 90, "a, b and c converged")
        yield mesh
    for node in mesh.agents:
        log = node.log.read_text(errors="replace")
        assert "Traceback" not in log, f"{node.ns} logged a traceback:\n{log[-3000:]}"
        assert not re.search(r"timer \S+ failed", log), log[-3000:]


def attack(ns: str, *args: str) -> dict[str, object]:
    return attacks([(ns, list(args))])[0]


def attacks(runs: list[tuple[str, list[str]]], timeout: float = 120) -> list[dict[str, object]]:
    """Run attacker.py in each namespace at the same time; their JSON results."""
    procs = [
        subprocess.Popen(
            exec_argv(ns, *ATTACKER, *args),
            stdout=subprocess.PIPE,
            text=True,
        )
        for ns, args in runs
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, stdout
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def datagrams(tmp: Path, name: str, items: list[bytes]) -> str:
    path = tmp / f"{name}.bin"
    attacker.write_datagrams(str(path), items)
    return str(path)


def witness(line: AgentMesh, fault: Callable[[], object], seconds: float) -> int:
    """Pings lost a -> c (every 10 ms) while *fault()* runs, for about *seconds* in all."""
    count = int(seconds / PING_PERIOD)
    lost, sent = outage(line.nodes[A].ns, line.nodes[C].address, fault, count=count)
    assert sent >= count - 5
    return lost


def node_identity(line: AgentMesh, i: int, ca: CA) -> Identity:
    """Node i's identity, read from its PKI files (a stolen key or a replay source)."""
    pki = line.base / f"n{i}" / "pki"
    key = serialization.load_pem_private_key((pki / "node.key").read_bytes(), None)
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((pki / "node.crt").read_bytes())
    return Identity(f"n{i}", "mesh.lab", key, cert, ca.cert)  # type: ignore[arg-type]


def signed(who: Identity, origin: str, addr: str, seq: int, links: dict[str, float],
           cert: bytes | None = None) -> bytes:
    body = encode_unsigned(origin, addr, seq, tuple(sorted(links.items())),
                           who.cert_der if cert is None else cert)
    return body + signature_trailer(who.sign(body))


def signed_v1(who: Identity, origin: str, addr: str, seq: int, links: dict[str, float],
              cert: bytes | None = None) -> bytes:
    """The same advert in wire version 1 (a sender timestamp, no age): what the probe
    sent. This build refuses the version (malformed); a version-1 agent parses it, so
    the attacks also run against the build before the fix (MESHCORE_AGENT_PYTHONPATH)."""
    import struct

    parts = [struct.pack("!2sBBQQ4s", b"MA", 1, 0, seq, int(time.time() * 1000),
                         bytes(int(x) for x in addr.split(".")))]
    raw = origin.encode()
    parts += [bytes([len(raw)]), raw, struct.pack("!H", len(links))]
    for name, cost in sorted(links.items()):
        parts += [bytes([len(name)]), name.encode(), struct.pack("!H", round(cost * 100))]
    der = who.cert_der if cert is None else cert
    parts += [struct.pack("!H", len(der)), der]
    body = b"".join(parts)
    return body + signature_trailer(who.sign(body))


def both(who: Identity, origin: str, addr: str, seq: int, links: dict[str, float],
         cert: bytes | None = None) -> list[bytes]:
    return [f(who, origin, addr, seq, links, cert) for f in (signed, signed_v1)]


def bad_version(cert_der: bytes) -> bytes:
    marker = b"\xa0\x03\x02\x01\x02"
    i = cert_der.index(marker)
    return cert_der[: i + 4] + b"\x05" + cert_der[i + 5 :]


# 1. Critical: a certificate with an invalid X.509 version -----------------------------
def test_invalid_certificate_version_is_counted_and_harmless(
    line: AgentMesh, ca: CA, tmp_path: Path
) -> None:
    x, b, a = line.nodes[X].ns, line.nodes[B].ns, line.nodes[A].ns
    me = ca.identity("n0", "10.77.0.1")
    bad = bad_version(me.cert_der)
    adverts = [
        a for i in range(100) for a in both(me, "n0", "10.77.0.1", 2**40 + i, {"n1": 1.0}, bad)
    ]
    path = datagrams(tmp_path, "badcert", adverts)
    untrusted0 = metric(b, "meshcore_adverts_rejected_total", '{reason="untrusted"}')
    malformed0 = metric(b, "meshcore_hellos_dropped_total", '{reason="malformed"}')
    drops0 = metric(a, "meshcore_socket_drops_total", '{socket="hello"}')
    rate = ["--rate", "40", "--seconds", "5", "--ttl", "255", "--datagrams", path]

    def fault() -> None:
        attacks([
            # b's advert and hello ports, on-link (the probe's 40/s x 400, for 5 s)
            (x, ["udp", "--dst", line.link_address(B, X), "--port", str(ADVERT), *rate]),
            (x, ["udp", "--dst", line.link_address(B, X), "--port", str(HELLO), *rate]),
            # a's hello port, two hops away: GTSM drops it in a's kernel
            (x, ["udp", "--dst", line.link_address(A, B), "--port", str(HELLO), *rate]),
        ])

    assert witness(line, fault, 8) == 0
    time.sleep(1.5)  # counters are synced into Prometheus once a second
    assert metric(b, "meshcore_adverts_rejected_total", '{reason="untrusted"}') - untrusted0 >= 75
    assert metric(b, "meshcore_hellos_dropped_total", '{reason="malformed"}') - malformed0 >= 150
    assert metric(a, "meshcore_socket_drops_total", '{socket="hello"}') - drops0 >= 150
    assert metric(b, "meshcore_adverts_rejected_total", '{reason="internal_error"}') == 0


# 2. High: a garbage flood routed from two hops away -----------------------------------
def test_garbage_flood_from_two_hops_away(line: AgentMesh) -> None:
    x, a = line.nodes[X].ns, line.nodes[A].ns
    drops0 = sum(metric(a, "meshcore_socket_drops_total", f'{{socket="{k}"}}')
                 for k in ("hello", "advert"))
    results: list[dict[str, object]] = []

    def fault() -> None:
        # 20k/s in all: 10k/s at each of a's two ports, from x through b.
        results.extend(attacks([
            (x, ["udp", "--dst", line.link_address(A, B), "--port", str(port), "--rate", "10000",
                 "--seconds", "6", "--ttl", "255", "--size", "64"])
            for port in (HELLO, ADVERT)
        ]))

    assert witness(line, fault, 9) == 0
    sent = sum(int(r["sent"]) for r in results)  # type: ignore[call-overload]
    assert sent >= 40_000, results  # the attacker really sent (>= 2/3 of 20k/s for 6 s)
    time.sleep(1.5)
    drops = sum(metric(a, "meshcore_socket_drops_total", f'{{socket="{k}"}}')
                for k in ("hello", "advert")) - drops0
    assert drops >= 0.5 * sent, (drops, sent)  # dropped in a's kernel, never read


# 3. High: spoofed hellos (64 names that sort first, and a real neighbour's name) --------
def v1_hello(name: str, seq: int, interval_ms: int = 65535) -> bytes:
    """A version-1 hello (what the probe sent; no authentication in that version)."""
    import struct

    raw = name.encode()
    return (struct.pack("!2sBBIQH4s", b"MH", 1, 0, seq, 10**12 + seq, interval_ms,
                        bytes([10, 77, 0, 99]))
            + bytes([len(raw)]) + raw + bytes([0]))


def v2_hello(name: str, seq: int, interval_ms: int = 65535) -> bytes:
    from mesh_agent.link.wire import Echo, Hello, encode_hello

    h = Hello(seq, 10**12 + seq, interval_ms, "10.77.0.99", name,
              (Echo("n1", 1, 1, 1),), session=7)
    return encode_hello(h, [("n1", b"\x00" * 32)])  # a made-up tag


def test_spoofed_hellos_change_nothing(line: AgentMesh, tmp_path: Path) -> None:
    a, b = line.nodes[A].ns, line.nodes[B].ns
    names = [f"0000-{i:02d}" for i in range(64)] + ["n0"]  # "n0" is a's own, real name
    items = [f(n, seq) for seq in range(1, 6) for n in names for f in (v1_hello, v2_hello)]
    path = datagrams(tmp_path, "spoof", items)
    before = json.loads(api(b, "/v1/neighbors")[1])["neighbors"]
    dropped0 = {r: metric(b, "meshcore_hellos_dropped_total", f'{{reason="{r}"}}')
                for r in ("unknown_identity", "bad_auth", "malformed")}

    def fault() -> None:
        # On a's link (a radio in range): multicast to all hosts, TTL 255, a's link source.
        attack(a, "udp", "--dst", "224.0.0.1", "--port", str(HELLO), "--dev", "mesh0",
               "--rate", str(len(items) / 5), "--seconds", "5", "--ttl", "255",
               "--datagrams", path)

    assert witness(line, fault, 7) == 0
    after = json.loads(api(b, "/v1/neighbors")[1])["neighbors"]
    key = [(n["name"], n["interface"], n["link_address"], n["node_address"]) for n in after]
    assert key == [(n["name"], n["interface"], n["link_address"], n["node_address"])
                   for n in before]
    assert all(n["state"] == "up" for n in after)
    time.sleep(1.5)
    got = {r: metric(b, "meshcore_hellos_dropped_total", f'{{reason="{r}"}}') - v
           for r, v in dropped0.items()}
    assert got["unknown_identity"] >= 64 * 4, got  # 64 names nobody certified
    assert got["bad_auth"] >= 4, got  # "n0" with a tag that does not verify
    assert got["malformed"] >= 65 * 4, got  # version 1: unauthenticated, refused


# 4. High: idle API connections ---------------------------------------------------------
def test_1100_idle_api_connections(line: AgentMesh) -> None:
    b = line.nodes[B].ns
    refused0 = metric(b, "meshcore_api_connections_refused_total", '{reason="limit"}')
    result: dict[str, object] = {}
    health: list[int] = []

    def fault() -> None:
        p = subprocess.Popen(
            exec_argv(b, *ATTACKER, "idle-tcp", "--dst", "127.0.0.1", "--port", "9105",
                      "--count", "1100", "--seconds", "7"),
            stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        health.append(api(b, "/healthz")[0])  # the API still serves while they are held
        out, _ = p.communicate(timeout=60)
        result.update(json.loads(out.strip().splitlines()[-1]))

    assert witness(line, fault, 12) == 0
    assert health == [200], health
    assert int(result["closed_by_server"]) >= 1000, result  # type: ignore[call-overload]
    time.sleep(0.5)
    assert metric(b, "meshcore_api_connections_refused_total", '{reason="limit"}') - refused0 >= 900
    assert api(b, "/healthz")[0] == 200


# 5. Medium: the maximum sequence number ---------------------------------------------
def test_maximum_sequence_number_adverts(line: AgentMesh, ca: CA, tmp_path: Path) -> None:
    a, b, c = (line.nodes[i].ns for i in (A, B, C))
    victim = node_identity(line, B, ca)  # a replay of adverts b signed, or b's stolen key
    links = {"n0": 1.0, "n2": 1.0}
    u64_max = both(victim, "n1", "10.77.0.2", 2**64 - 1, links)
    wrap = signed(victim, "n1", "10.77.0.2", MAX_SEQ, links)
    bad_seq0 = metric(b, "meshcore_adverts_rejected_total", '{reason="bad_seq"}')
    held: list[int] = []

    def fault() -> None:
        path = datagrams(tmp_path, "u64", u64_max)
        attack(a, "udp", "--dst", line.link_address(B, A), "--port", str(ADVERT), "--dev", "mesh0",
               "--rate", "10", "--seconds", "1", "--ttl", "255", "--datagrams", path)
        # 2**63 - 1 is a valid seq: a stores it and floods it to b, whose own it is.
        path = datagrams(tmp_path, "max", [wrap])
        attack(b, "udp", "--dst", line.link_address(A, B), "--port", str(ADVERT), "--dev", "mesh0",
               "--rate", "1", "--seconds", "1", "--ttl", "255", "--datagrams", path)
        held.append(seq_of_b(a))

    def seq_of_b(ns: str) -> int:
        lsdb = json.loads(api(ns, "/v1/topology")[1])["lsdb"]
        return int(lsdb.get("n1", {}).get("seq", -1))

    assert witness(line, fault, 4) == 0
    assert metric(b, "meshcore_adverts_rejected_total", '{reason="bad_seq"}') - bad_seq0 >= 3
    # a stored it, unless b already got it back and wrapped (13.4: at once).
    log_b = line.nodes[B].log
    assert held[0] == MAX_SEQ or "restarting at 1" in log_b.read_text(), (
        held,
        [ln for ln in api(a, "/metrics")[1].splitlines() if "adverts_" in ln and "#" not in ln],
    )
    # a holds the maximum and refuses b's refreshes (every 10 s) but sends its
    # newer copy back (RFC 2328 13 (8)); b then wraps at once (12.1.6, 13.4): its
    # MAX_SEQ instance is flushed and its numbering restarts at 1 everywhere.
    def wrapped() -> bool:
        return "restarting at 1" in line.nodes[B].log.read_text() and all(
            0 < seq_of_b(n) < 1000 for n in (a, c)
        )

    lost = witness(line, lambda: line.wait_for(wrapped, 30, "b wrapped at a and c"), 35)
    assert lost == 0
    assert line.converged()


# 6. Medium: an insider claims another node's address -----------------------------------
def test_stolen_address_is_refused(line: AgentMesh, ca: CA, tmp_path: Path) -> None:
    x, b = line.nodes[X].ns, line.nodes[B].ns
    # An agent with a valid certificate (its own address) configured with c's address.
    d = tmp_path / "thief"
    pki = ca.write(d / "pki", "n9", "10.77.0.9")
    cfg = d / "agent.yml"
    cfg.write_text(json.dumps({"node_name": "n9", "node_address": line.nodes[C].address,
                               "mode": "enforce", "identity": pki, "state_dir": str(d),
                               "api_listen": "127.0.0.1:9109"}))
    run = subprocess.run(["ip", "netns", "exec", x, sys.executable, "-m", "mesh_agent", "run",
                          "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "does not name its node address" in run.stderr, run.stderr
    # The same claim in a signed advert, straight onto b's link: refused, counted.
    key, cert = ca.issue("n9", addresses=["10.77.0.9"])
    thief = Identity("n9", "mesh.lab", key, cert, ca.cert)
    claims = [a for i, addr in enumerate([line.nodes[C].address, "0.0.0.0", "127.0.0.1",
                                          "224.0.0.1", "255.255.255.255"])
              for a in both(thief, "n9", addr, 10 + i, {"n1": 1.0})]
    path = datagrams(tmp_path, "thief", claims)
    counts0 = {r: metric(b, "meshcore_adverts_rejected_total", f'{{reason="{r}"}}')
               for r in ("address_not_bound", "bad_address")}

    def fault() -> None:
        attack(x, "udp", "--dst", line.link_address(B, X), "--port", str(ADVERT), "--rate", "20",
               "--seconds", "1", "--ttl", "255", "--datagrams", path)

    assert witness(line, fault, 3) == 0
    got = {r: metric(b, "meshcore_adverts_rejected_total", f'{{reason="{r}"}}') - v
           for r, v in counts0.items()}
    assert got["address_not_bound"] >= 1 and got["bad_address"] >= 4, got
    assert "n9" not in json.loads(api(b, "/v1/topology")[1])["lsdb"]


# 7. Medium: forged adverts cost a signature check each ------------------------------------
def test_forged_advert_flood_is_budgeted(line: AgentMesh, ca: CA, tmp_path: Path) -> None:
    x, b = line.nodes[X].ns, line.nodes[B].ns
    real = node_identity(line, A, ca)
    liar = ca.identity("n0", "10.77.0.1")  # a's name and cert shape, not a's key
    forged = []
    for i in range(12_500):  # all distinct: no failure cache helps
        forged += both(liar, "n0", "10.77.0.1", 2**41 + i, {"n1": 1.0}, real.cert_der)
    path = datagrams(tmp_path, "forged", forged)
    def counts() -> dict[str, float]:
        out = {r: metric(b, "meshcore_adverts_rejected_total", f'{{reason="{r}"}}')
               for r in ("bad_signature", "rate_limited", "malformed")}
        out["kernel"] = metric(b, "meshcore_socket_drops_total", '{socket="advert"}')
        return out

    counts0 = counts()
    sent: list[int] = []

    def fault() -> None:
        r = attack(x, "udp", "--dst", line.link_address(B, X), "--port", str(ADVERT),
                   "--rate", "5000", "--seconds", "5", "--ttl", "255", "--datagrams", path)
        sent.append(int(r["sent"]))  # type: ignore[call-overload]

    assert witness(line, fault, 8) == 0
    time.sleep(1.5)
    got = {k: v - counts0[k] for k, v in counts().items()}
    # Every forged advert is accounted for: checked and refused, refused unchecked
    # (over budget; version 1: malformed), or dropped by the kernel while busy.
    assert sum(got.values()) >= 0.9 * sent[0], (got, sent)
    # At most the per-source budget (burst + rate x duration) was checked.
    assert got["bad_signature"] <= VERIFY_BURST + VERIFY_RATE * 8, got
