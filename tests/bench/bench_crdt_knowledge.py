#!/usr/bin/env python3
"""bench_crdt_knowledge: sharing the loop's action statistics over a CRDT, measured.

Issue 19 asks for nodes to share their per-(class, action) statistics (what the
learned policy samples from) over a CRDT such as pycrdt, surviving partitions
with no divergence after healing. This bench measures the two candidate designs
on the same data, in one run, so the decision in docs/mapek.md rests on numbers:

  yjs        pycrdt (Yjs): one shared ``Map`` of origin -> that origin's
             statistics, each node writing its own key, updates merged by
             ``apply_update`` in any order
  registers  the baseline: per-origin registers signed by their origin
             (ECDSA P-256, as the adverts), merged by keeping the highest
             sequence number whose signature verifies: the rule the link-state
             database already floods by

For each, one JSON line per figure:

  converge     two halves of a partitioned fleet each update their own
               statistics for a number of rounds, then heal by exchanging
               state both ways: whether every replica ends identical
  forgery      a relay rewrites another origin's entry before passing it on:
               whether a third node's replica takes the forged value
  state_bytes  what a node joining the fleet must receive (the whole state)
               for N origins that rewrote their statistics R times, against
               the live content (N entries)
  merge_us     one origin's update merged into a replica

The arms are the loop's own (``mesh_agent.mapek.plan.APPLICABLE``). pycrdt is a
dev requirement (requirements/dev.txt); without it the yjs lines say so.

    .venv/bin/python tests/bench/bench_crdt_knowledge.py [--nodes 10,100,1000] [--rewrites 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from mesh_agent.mapek.plan import APPLICABLE
from meshcore_testkit.bench import per_call_us

ARMS = [(str(cls), str(action)) for cls, actions in APPLICABLE.items() for action in actions]
ECDSA = ec.ECDSA(hashes.SHA256())


def emit(**fields: object) -> None:
    print(json.dumps({"bench": "crdt_knowledge", "load1": os.getloadavg()[0], **fields}),
          flush=True)


def stats(rng: random.Random, round_: int) -> dict[str, list[float]]:
    """One origin's statistics after *round_* rounds: tries, successes, summed MTTR per arm."""
    out = {}
    for cls, action in ARMS:
        tries = round_ + rng.randrange(3)
        mttr_sum = round(rng.uniform(0, 60) * tries, 1)
        out[f"{cls}/{action}"] = [tries, rng.randrange(tries + 1), mttr_sum]
    return out


# -- the baseline: signed per-origin registers ------------------------------------
@dataclass(frozen=True)
class Register:
    origin: str
    seq: int
    body: bytes  # the statistics (JSON)
    signature: bytes

    @property
    def signed(self) -> bytes:
        return self.origin.encode() + b"\0" + struct.pack("!Q", self.seq) + self.body

    def size(self) -> int:
        return len(self.signed) + len(self.signature)


class Registers:
    """One node's replica: origin -> the highest verified register."""

    def __init__(self, keys: dict[str, ec.EllipticCurvePublicKey]) -> None:
        self.keys = keys
        self.entries: dict[str, Register] = {}
        self.refused = 0

    @staticmethod
    def write(key: ec.EllipticCurvePrivateKey, origin: str, seq: int, body: bytes) -> Register:
        r = Register(origin, seq, body, b"")
        return Register(origin, seq, body, key.sign(r.signed, ECDSA))

    def merge(self, reg: Register) -> None:
        have = self.entries.get(reg.origin)
        if have is not None and have.seq >= reg.seq:
            return
        try:
            self.keys[reg.origin].verify(reg.signature, reg.signed, ECDSA)
        except (InvalidSignature, KeyError):
            self.refused += 1
            return
        self.entries[reg.origin] = reg

    def state(self) -> dict[str, tuple[int, bytes]]:
        return {o: (r.seq, r.body) for o, r in sorted(self.entries.items())}

    def size(self) -> int:
        return sum(r.size() for r in self.entries.values())


def registers_bench(nodes: list[int], rewrites: int, rng: random.Random) -> None:
    keys = {f"n{i}": ec.generate_private_key(ec.SECP256R1()) for i in range(max(nodes))}
    pubs = {o: k.public_key() for o, k in keys.items()}
    # converge: 8 nodes, halves {n0..n3} and {n4..n7}, 10 rounds apart, then heal.
    half = [[f"n{i}" for i in range(4)], [f"n{i}" for i in range(4, 8)]]
    replicas = {o: Registers(pubs) for o in half[0] + half[1]}
    for round_ in range(1, 11):
        for side in half:
            regs = [Registers.write(keys[o], o, round_, json.dumps(stats(rng, round_)).encode())
                    for o in side]
            for peer in side:  # delivered in a random order within the half
                for reg in rng.sample(regs, len(regs)):
                    replicas[peer].merge(reg)
    for a in half[0]:
        for b in half[1]:
            for reg in list(replicas[a].entries.values()):
                replicas[b].merge(reg)
            for reg in list(replicas[b].entries.values()):
                replicas[a].merge(reg)
    states = {json.dumps({o: [s, b.decode()] for o, (s, b) in r.state().items()})
              for r in replicas.values()}
    emit(design="registers", figure="converge", replicas=len(replicas), distinct_states=len(states),
         converged=len(states) == 1)
    # forgery: n9 (a relay) rewrites n0's entry, keeping its seq one higher.
    a, relay, c = Registers(pubs), Registers(pubs), Registers(pubs)
    good = Registers.write(keys["n0"], "n0", 1, b'{"lossy_link/none": [5, 5, 10.0]}')
    for r in (a, relay, c):
        r.merge(good)
    forged = Register("n0", 2, b'{"lossy_link/none": [1000000000, 1000000000, 0.0]}',
                      good.signature)
    c.merge(forged)
    emit(design="registers", figure="forgery",
         forged_value_taken=c.entries["n0"].body == forged.body, refused=c.refused)
    # state_bytes and merge_us
    for n in nodes:
        replica = Registers(pubs)
        for round_ in range(1, rewrites + 1):
            for i in range(n):
                replica.merge(Registers.write(keys[f"n{i}"], f"n{i}", round_,
                                              json.dumps(stats(rng, round_)).encode()))
        live = sum(len(r.body) for r in replica.entries.values())
        emit(design="registers", figure="state_bytes", origins=n, rewrites=rewrites,
             state_bytes=replica.size(), live_bytes=live)
    reg = Registers.write(keys["n0"], "n0", 10**6, json.dumps(stats(rng, 5)).encode())
    emit(design="registers", figure="merge_us",
         merge_us=round(per_call_us(lambda: Registers(pubs).merge(reg), 0.5), 1))


def yjs_bench(nodes: list[int], rewrites: int, rng: random.Random) -> None:
    try:
        from pycrdt import Doc, Map
    except ImportError as exc:
        emit(design="yjs", figure="all", skipped=f"pycrdt not installed ({exc}): "
             "pip install -r requirements/dev.txt")
        return

    def replica() -> tuple[Any, Any]:
        doc: Any = Doc()
        doc["stats"] = shared = Map()
        return doc, shared

    # converge: the same partition, each node writing only its own key.
    half = [[f"n{i}" for i in range(4)], [f"n{i}" for i in range(4, 8)]]
    docs = {o: replica() for o in half[0] + half[1]}
    for round_ in range(1, 11):
        for side in half:
            for o in side:
                docs[o][1][o] = json.dumps(stats(rng, round_))
            for o in side:  # gossip within the half, in a random order
                for peer in rng.sample(side, len(side)):
                    docs[peer][0].apply_update(docs[o][0].get_update(docs[peer][0].get_state()))
    for a in half[0]:
        for b in half[1]:
            docs[b][0].apply_update(docs[a][0].get_update(docs[b][0].get_state()))
            docs[a][0].apply_update(docs[b][0].get_update(docs[a][0].get_state()))
    states = {json.dumps(dict(sorted(shared.to_py().items()))) for _, shared in docs.values()}
    emit(design="yjs", figure="converge", replicas=len(docs), distinct_states=len(states),
         converged=len(states) == 1)
    # forgery: the relay writes into n0's key; the third node merges the relay's update.
    (a, sa), (relay, sr), (c, sc) = replica(), replica(), replica()
    sa["n0"] = '{"lossy_link/none": [5, 5, 10.0]}'
    for doc, _ in ((relay, sr), (c, sc)):
        doc.apply_update(a.get_update())
    forged = '{"lossy_link/none": [1000000000, 1000000000, 0.0]}'
    sr["n0"] = forged
    c.apply_update(relay.get_update(c.get_state()))
    emit(design="yjs", figure="forgery", forged_value_taken=sc["n0"] == forged, refused=0)
    for n in nodes:
        doc, shared = replica()
        live = 0
        for round_ in range(1, rewrites + 1):
            for i in range(n):
                body = json.dumps(stats(rng, round_))
                shared[f"n{i}"] = body
                live += len(body) if round_ == rewrites else 0
        emit(design="yjs", figure="state_bytes", origins=n, rewrites=rewrites,
             state_bytes=len(doc.get_update()), live_bytes=live)
    src, shared = replica()
    shared["n0"] = json.dumps(stats(rng, 5))
    update = src.get_update()
    emit(design="yjs", figure="merge_us",
         merge_us=round(per_call_us(lambda: replica()[0].apply_update(update), 0.5), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="10,100,1000", help="fleet sizes, comma-separated")
    ap.add_argument("--rewrites", type=int, default=20, help="statistics updates per origin")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    nodes = [int(n) for n in args.nodes.split(",")]
    if min(nodes) < 8:
        ap.error("--nodes: at least 8 (the partition test uses 8 nodes)")
    registers_bench(nodes, args.rewrites, random.Random(args.seed))
    yjs_bench(nodes, args.rewrites, random.Random(args.seed))


if __name__ == "__main__":
    main()
