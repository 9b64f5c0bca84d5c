"""Hello wire format (version 2), big-endian.

::

    off  size  field
      0     2  magic b"MH"
      2     1  version (2)
      3     1  flags (reserved, 0)
      4     4  seq            u32, per sender interface, +1 per hello
      8     8  tx_ts_us       u64, sender's monotonic clock in microseconds
     16     2  interval_ms    u16, sender's hello interval
     18     4  node_address   sender's /32 (lives on its lo)
     22     4  session        u32, random per agent start (a restart changes it)
     26     1  name_len       1..63, then name (UTF-8)
      .     1  n_echo         0..64, then n_echo entries:
                 name_len u8, name, last_seq u32, echo_ts_us u64, delay_us u32
      .     1  n_auth         0..128, then n_auth entries:
                 name_len u8, name, tag (16 bytes)

The echo entries are the sender's neighbour list. Each echoes the last hello
heard from that neighbour (its seq and tx timestamp) plus how long the sender
held it, so the neighbour computes RTT = now - echo_ts - delay using only its
own clock, the LSR/DLSR method of RFC 3550 section 6.4.1. A neighbour that
finds itself in the list knows the link is two-way.

The auth entries authenticate the hello to each named receiver: tag =
HMAC-SHA256(K(sender, receiver), SHA-256(every byte before n_auth))[:16],
with the per-pair key of :mod:`mesh_agent.identity.hellokeys`. A receiver
acts on a hello only when one tag with its name verifies. Version 1 (no auth)
is refused: a version-2 agent and an older one do not form an adjacency.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from mesh_agent import WIRE_VERSION

MAGIC = b"MH"
VERSION = WIRE_VERSION
MAX_NAME = 63
MAX_ECHO = 64
MAX_AUTH = 128
TAG_LEN = 16
_HEAD = struct.Struct("!2sBBIQH4sI")
_ECHO_TAIL = struct.Struct("!IQI")


class WireError(ValueError):
    """The bytes are not a well-formed message."""


@dataclass(frozen=True)
class Echo:
    name: str
    last_seq: int
    echo_ts_us: int
    delay_us: int


@dataclass(frozen=True)
class Hello:
    seq: int
    tx_ts_us: int
    interval_ms: int
    node_address: str
    name: str
    echoes: tuple[Echo, ...] = ()
    session: int = 0
    # (receiver name, tag) pairs; filled by decode_hello, written by encode_hello's keys.
    auth: tuple[tuple[str, bytes], ...] = ()
    # SHA-256 of the authenticated part (every byte before the auth entries).
    digest: bytes = b""


def hello_tag(key: bytes, digest: bytes) -> bytes:
    """The auth tag for one receiver: HMAC-SHA256 under the pair key, truncated."""
    return hmac.digest(key, digest, "sha256")[:TAG_LEN]


def tag_valid(hello: Hello, receiver: str, keys: Iterable[bytes]) -> bool:
    """True when a tag for *receiver* in *hello* verifies under one of *keys*."""
    tags = [t for n, t in hello.auth if n == receiver]
    if not tags:
        return False
    for key in keys:
        want = hello_tag(key, hello.digest)
        if any(hmac.compare_digest(want, t) for t in tags):
            return True
    return False


def _put_name(name: str) -> bytes:
    raw = name.encode()
    if not 1 <= len(raw) <= MAX_NAME:
        raise WireError(f"name length {len(raw)} out of range")
    return bytes([len(raw)]) + raw


def decode_name(data: bytes, off: int) -> tuple[str, int]:
    """A length-prefixed UTF-8 name at *off*; used by hellos and adverts alike."""
    if off >= len(data):
        raise WireError("truncated name length")
    n = data[off]
    if not 1 <= n <= MAX_NAME or off + 1 + n > len(data):
        raise WireError("bad name length")
    try:
        return data[off + 1 : off + 1 + n].decode(), off + 1 + n
    except UnicodeDecodeError as exc:
        raise WireError("name is not UTF-8") from exc


def encode_hello(h: Hello, keys: Iterable[tuple[str, bytes]] = ()) -> bytes:
    """The hello, with one auth tag per (receiver name, pair key) in *keys*."""
    if len(h.echoes) > MAX_ECHO:
        raise WireError("too many echo entries")
    out = [
        _HEAD.pack(
            MAGIC,
            VERSION,
            0,
            h.seq,
            h.tx_ts_us,
            h.interval_ms,
            ipaddress.IPv4Address(h.node_address).packed,
            h.session,
        ),
        _put_name(h.name),
        bytes([len(h.echoes)]),
    ]
    for e in h.echoes:
        out.append(_put_name(e.name))
        out.append(_ECHO_TAIL.pack(e.last_seq, e.echo_ts_us, min(e.delay_us, 0xFFFFFFFF)))
    body = b"".join(out)
    digest = hashlib.sha256(body).digest()
    tags = [_put_name(name) + hello_tag(key, digest) for name, key in keys][:MAX_AUTH]
    return body + bytes([len(tags)]) + b"".join(tags)


def _named_entries(
    data: bytes, off: int, limit: int, size: int, what: str
) -> tuple[list[tuple[str, bytes]], int]:
    """A count byte, then that many (name, *size* bytes) entries, from *off*.

    Both of a hello's lists (echo entries, auth tags) have this shape. Raises
    :class:`WireError` naming *what* on a missing count, more than *limit*
    entries or a truncated entry; returns the entries and the offset after them.
    """
    if off >= len(data):
        raise WireError(f"truncated {what} count")
    count = data[off]
    off += 1
    if count > limit:
        raise WireError(f"too many {what} entries")
    entries = []
    for _ in range(count):
        name, off = decode_name(data, off)
        if off + size > len(data):
            raise WireError(f"truncated {what} entry")
        entries.append((name, bytes(data[off : off + size])))
        off += size
    return entries, off


def decode_hello(data: bytes) -> Hello:
    """Parse *data*; raise :class:`WireError` (only) on anything malformed."""
    if len(data) < _HEAD.size:
        raise WireError("short hello")
    magic, version, _flags, seq, ts, interval, addr, session = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise WireError("bad magic")
    if version != VERSION:
        raise WireError(f"unsupported version {version}")
    if interval == 0:
        raise WireError("zero hello interval")
    name, off = decode_name(data, _HEAD.size)
    entries, off = _named_entries(data, off, MAX_ECHO, _ECHO_TAIL.size, "echo")
    echoes = [Echo(ename, *_ECHO_TAIL.unpack(tail)) for ename, tail in entries]
    body_end = off
    auth, off = _named_entries(data, off, MAX_AUTH, TAG_LEN, "auth")
    if off != len(data):
        raise WireError("trailing bytes")
    return Hello(
        seq,
        ts,
        interval,
        str(ipaddress.IPv4Address(addr)),
        name,
        tuple(echoes),
        session,
        tuple(auth),
        hashlib.sha256(data[:body_end]).digest(),
    )


# -- kernel echo probes ------------------------------------------------------
# BFD's echo function (RFC 5880 section 6.4): a probe the neighbour's
# *forwarding plane* turns around, so it proves the link and the neighbour's
# kernel alive however late the neighbour's agent process runs. We use an ICMP
# echo request (RFC 792) to the neighbour's link address; its kernel answers in
# softirq context. Payload: magic b"MEC", version 1, our send time (u64 us).
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ECHO_MAGIC = b"MEC\x01"
_ICMP = struct.Struct("!BBHHH")
_ECHO_PAYLOAD = struct.Struct("!4sQ")


@dataclass(frozen=True)
class EchoProbe:
    ident: int
    seq: int
    tx_ts_us: int


def _inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of *data*."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_echo_request(probe: EchoProbe) -> bytes:
    """An ICMP echo request (header + payload) for a raw IPPROTO_ICMP socket."""
    ident, seq = probe.ident & 0xFFFF, probe.seq & 0xFFFF
    payload = _ECHO_PAYLOAD.pack(ECHO_MAGIC, probe.tx_ts_us)
    csum = _inet_checksum(_ICMP.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq) + payload)
    return _ICMP.pack(ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def decode_echo_reply(packet: bytes) -> EchoProbe:
    """Parse an IPv4 packet as read from a raw ICMP socket: one of our echo replies.

    Raises :class:`WireError` (only) for anything else: a short or non-IPv4
    packet, another ICMP type, a bad checksum or a foreign payload (a ping
    that is not ours).
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        raise WireError("not IPv4")
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl + _ICMP.size + _ECHO_PAYLOAD.size:
        raise WireError("short echo reply")
    icmp = packet[ihl:]
    kind, code, _csum, ident, seq = _ICMP.unpack_from(icmp, 0)
    if kind != ICMP_ECHO_REPLY or code != 0:
        raise WireError("not an echo reply")
    if _inet_checksum(icmp) != 0:
        raise WireError("bad checksum")
    magic, ts = _ECHO_PAYLOAD.unpack_from(icmp, _ICMP.size)
    if magic != ECHO_MAGIC or len(icmp) != _ICMP.size + _ECHO_PAYLOAD.size:
        raise WireError("foreign echo payload")
    return EchoProbe(ident, seq, ts)
