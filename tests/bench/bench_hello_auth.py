#!/usr/bin/env python3
"""bench_hello_auth: what authenticating hellos costs, against the hello path itself.

For n neighbours on one interface (1, 8, 32), measured in the same run:

  hello_path   one sensor's ``LinkSensor.build_hello`` (n tags) plus one
               neighbour's ``LinkSensor.receive`` of it: the whole per-hello
               work with authentication, keys from real certificates
               (``HelloKeys``: static-static ECDH, cached)
  auth_only    the authentication part of that work alone: the key lookups,
               SHA-256 of the body and the n + 1 HMACs (n tags made, one
               checked); hello_path minus auth_only is the same path without it

plus the one-off cost of deriving a pair key (ECDH + HKDF) and, for scale, one
ECDSA P-256 verification (what signing each hello would cost the receiver
instead). The agent's whole idle CPU before and after is bench_failover's
``cpu_pct_mean`` (docs/security.md). One JSON line per figure, with the
1-minute load average.
"""

from __future__ import annotations

import json
import os

from mesh_agent.identity import Identity
from mesh_agent.identity.hellokeys import HelloKeys
from mesh_agent.link import LinkSensor, decode_hello
from mesh_agent.link.wire import hello_tag, tag_valid
from meshcore_testkit.bench import per_call_us
from meshcore_testkit.pki import CA

IV = 0.05


def emit(**fields: object) -> None:
    print(json.dumps({"bench": "hello_auth", "load1": os.getloadavg()[0], **fields}), flush=True)


def main() -> None:
    ca = CA.create("bench")
    for n in (1, 8, 32):
        names = ["a", *[f"p{i:02d}" for i in range(n)]]
        ids: dict[str, Identity] = {
            name: ca.identity(name, f"10.77.{i // 250}.{i % 250 + 1}")
            for i, name in enumerate(names)
        }
        certs = {name: i.cert_der for name, i in ids.items()}
        sensors = {}
        for i, name in enumerate(names):
            s = LinkSensor(name, f"10.77.{i // 250}.{i % 250 + 1}", IV, 3,
                           keys=HelloKeys(ids[name], certs.get), session=1)
            s.add_interface("mesh0")
            sensors[name] = s
        a, peer = sensors["a"], sensors["p00"]
        now = 1.0
        for _ in range(3):  # everyone up with a
            for name in names[1:]:
                sensors[name].receive("mesh0", a.build_hello("mesh0", now), "10.98.0.0", now)
                a.receive("mesh0", sensors[name].build_hello("mesh0", now),
                          f"10.98.1.{names.index(name)}", now)
            now += IV
        assert len(a.up_neighbors()) == n, a.drops

        clock = [now]

        def path(a: LinkSensor = a, peer: LinkSensor = peer, clock: list[float] = clock) -> None:
            clock[0] += 0.001
            raw = a.build_hello("mesh0", clock[0])
            peer.receive("mesh0", raw, "10.98.0.0", clock[0])

        sample = decode_hello(a.build_hello("mesh0", now))
        body = b"x" * (len(sample.digest) + 40 * n)

        def auth_only(
            a: LinkSensor = a,
            peer: LinkSensor = peer,
            clock: list[float] = clock,
            body: bytes = body,
            names: list[str] = names,
            sample: object = sample,
        ) -> None:
            import hashlib

            digest = hashlib.sha256(body).digest()
            for name in names[1:]:  # the sender: one tag per neighbour
                for key in a.keys.keys(name, clock[0]):
                    hello_tag(key, digest)
            tag_valid(sample, "p00", peer.keys.keys("a", clock[0]))  # type: ignore[arg-type]

        path_us, auth_us = per_call_us(path), per_call_us(auth_only)
        emit(figure="hello_path_us", neighbors=n, value=round(path_us, 2), unit="us")
        emit(figure="hello_auth_only_us", neighbors=n, value=round(auth_us, 2), unit="us",
             share_of_path=round(auth_us / path_us, 3))
        # A node with n neighbours at 50 ms builds 20 hellos/s (n tags each) and
        # receives 20 x n (one tag checked each).
        per_second = 20 * auth_us + 20 * n * (auth_us / (n + 1))
        emit(figure="auth_cpu_pct_of_core_at_50ms", neighbors=n,
             value=round(per_second / 1e4, 3), unit="%")

    ia, ib = ca.identity("x", "10.77.9.1"), ca.identity("y", "10.77.9.2")
    keys = HelloKeys(ia, {"y": ib.cert_der}.get)

    def derive() -> None:
        keys._cache.clear()
        keys._by_name.clear()
        keys.keys("y", 0.0)

    emit(figure="pair_key_derivation_us", value=round(per_call_us(derive), 1), unit="us")
    body = b"x" * 200
    sig = ia.sign(body)
    pub = ia.cert.public_key()
    emit(figure="ecdsa_p256_verify_us",
         value=round(per_call_us(lambda: Identity.verify_signature(pub, sig, body)), 1),  # type: ignore[arg-type]
         unit="us")


if __name__ == "__main__":
    main()
