"""The rogue node: flood the neighbours' advert port with unsigned or replayed adverts.

    python3 -m meshcore_chaos.node.flood --tag meshcore_chaos:<id> --port 6768
        --targets IP[,IP...] --mode garbage|replay|file [--datagrams FILE]
        --rate PPS --seconds S

``garbage`` sends random bytes; ``replay`` first captures the adverts that
cross this node (an AF_PACKET socket, one second) and then sends them again,
stale; ``file`` sends prepared datagrams (length-prefixed, u32 big-endian),
such as well-formed adverts with no valid signature. It always stops after
``--seconds`` (a bound even if nothing ever removes it) and prints one JSON
line. The ``--tag`` is how the rollback finds it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time

ETH_P_IP = 0x0800


def capture(port: int, seconds: float, limit: int = 64) -> list[bytes]:
    """UDP payloads to ``port`` seen on any interface of this namespace."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    s.settimeout(0.1)
    found: list[bytes] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and len(found) < limit:
            try:
                pkt = s.recv(65535)
            except TimeoutError:
                continue
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 8 or pkt[9] != socket.IPPROTO_UDP:
                continue
            dport = struct.unpack_from("!H", pkt, ihl + 2)[0]
            if dport == port:
                found.append(bytes(pkt[ihl + 8:]))
    finally:
        s.close()
    return found


def read_datagrams(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    out, off = [], 0
    while off + 4 <= len(data):
        (n,) = struct.unpack_from("!I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--targets", required=True)
    p.add_argument("--mode", choices=("garbage", "replay", "file"), default="garbage")
    p.add_argument("--datagrams")
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--size", type=int, default=400)
    a = p.parse_args()
    targets = a.targets.split(",")
    if a.mode == "replay":
        payloads = capture(a.port, 1.0)
    elif a.mode == "file":
        payloads = read_datagrams(a.datagrams)
    else:
        payloads = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # A node on the link can send with TTL 255, which passes the agents' GTSM check
    # (RFC 5082): what is left to stop it is the signature and replay checks.
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
    s.setblocking(False)
    sent = errors = 0
    t0 = time.monotonic()
    while (elapsed := time.monotonic() - t0) < a.seconds:
        for _ in range(max(0, int(elapsed * a.rate) + 1 - sent)):
            data = payloads[sent % len(payloads)] if payloads else os.urandom(a.size)
            try:
                s.sendto(data, (targets[sent % len(targets)], a.port))
            except OSError:
                errors += 1
            sent += 1
        time.sleep(0.001)
    print(json.dumps({"mode": a.mode, "sent": sent, "errors": errors,
                      "distinct_payloads": len(payloads), "seconds": a.seconds}), flush=True)


if __name__ == "__main__":
    main()
