"""An attacker's traffic, run inside a network namespace by the hostile-input tests.

    python attacker.py udp --dst IP --port N --rate PPS --seconds S
        [--ttl 64] [--dev IFNAME] [--datagrams FILE | --size BYTES]
    python attacker.py idle-tcp --dst IP --port N --count C --seconds S

``udp`` sends at a steady rate (batches every millisecond) either random
garbage of ``--size`` bytes or, round-robin, the datagrams of a file the test
wrote (each prefixed by its length, u32 big-endian); with ``--dev`` the socket
is bound to that interface (a multicast destination then leaves through it).
``idle-tcp`` opens connections that never send a byte and holds them. Both
print one JSON line with what they did.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import sys
import time


def read_datagrams(path: str) -> list[bytes]:
    data = open(path, "rb").read()  # noqa: SIM115 - a short-lived tool
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from("!I", data, off)
        out.append(data[off + 4 : off + 4 + n])
        off += 4 + n
    return out


def write_datagrams(path: str, datagrams: list[bytes]) -> None:
    with open(path, "wb") as f:
        for d in datagrams:
            f.write(struct.pack("!I", len(d)) + d)


def udp(a: argparse.Namespace) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, a.ttl)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, a.ttl)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    if a.dev:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.dev.encode())
    s.setblocking(False)
    payloads = read_datagrams(a.datagrams) if a.datagrams else None
    sent = errors = 0
    t0 = time.monotonic()
    while (elapsed := time.monotonic() - t0) < a.seconds:
        due = int(elapsed * a.rate) + 1 - sent  # the first one at once
        for _ in range(max(0, due)):
            data = payloads[sent % len(payloads)] if payloads else os.urandom(a.size)
            try:
                s.sendto(data, (a.dst, a.port))
            except OSError:
                errors += 1
            sent += 1
        time.sleep(0.001)
    return {"sent": sent, "errors": errors, "seconds": round(time.monotonic() - t0, 3)}


def idle_tcp(a: argparse.Namespace) -> dict[str, object]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks, refused = [], 0
    for _ in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect((a.dst, a.port))
        except OSError:
            refused += 1
            s.close()
            continue
        socks.append(s)
    opened = len(socks)
    time.sleep(a.seconds)
    # How many did the server close meanwhile (reads EOF or a reset)?
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    return {"opened": opened, "refused": refused, "closed_by_server": closed}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("udp")
    u.add_argument("--dst", required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--rate", type=float, required=True)
    u.add_argument("--seconds", type=float, required=True)
    u.add_argument("--ttl", type=int, default=64)
    u.add_argument("--dev", default="")
    u.add_argument("--datagrams", default="")
    u.add_argument("--size", type=int, default=64)
    t = sub.add_parser("idle-tcp")
    t.add_argument("--dst", required=True)
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--count", type=int, required=True)
    t.add_argument("--seconds", type=float, required=True)
    a = p.parse_args()
    result = udp(a) if a.cmd == "udp" else idle_tcp(a)
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
