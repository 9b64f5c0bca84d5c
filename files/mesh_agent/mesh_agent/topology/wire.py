"""Link-state advert wire format (version 2), big-endian.

::

    off  size  field
      0     2  magic b"MA"
      2     1  version (2)
      3     1  flags (reserved, 0)
      4     4  age_ms        u32, how old this copy is (not signed, see below)
      8     8  seq           u64, strictly increasing per origin (1 .. 2**63 - 1)
     16     4  node_address  origin's /32
     20     1  name_len      1..63, then origin name (UTF-8)
      .     2  n_links       u16, then n_links entries:
                 name_len u8, neighbour name, cost_centi u16 (cost x 100)
      .     2  cert_len      u16, then the origin's X.509 certificate (DER)
      .     2  sig_len       u16, then ECDSA-SHA256 signature (DER) over every
                             preceding byte of the message, with age_ms as zero

Ageing is RFC 2328's (section 14): no wall clock is carried or compared. The
origin sends age 0; whoever stores a copy ages it on its own monotonic clock
and writes the current age into each copy it sends on (database exchange),
so a copy of a dead origin's advert cannot live longer than the maximum age
however often it is passed around. Like OSPF's LS age, the field is outside
the signature (it changes in transit); a byte-identical advert with another
age is the same advert (:attr:`Advert.canonical`). Version 1 (a signed
sender timestamp compared with the receiver's clock) is refused.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from mesh_agent import WIRE_VERSION
from mesh_agent.link.wire import MAX_NAME, WireError, decode_name

MAGIC = b"MA"
VERSION = WIRE_VERSION
MAX_LINKS = 1024
MAX_AGE_MS = 0xFFFFFFFF
_HEAD = struct.Struct("!2sBBIQ4s")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_AGE_OFF = 4


@dataclass(frozen=True)
class Advert:
    origin: str
    node_address: str
    seq: int
    age_ms: int
    links: tuple[tuple[str, float], ...]
    cert_der: bytes
    signature: bytes
    signed_part: bytes  # what the signature covers (age zeroed)

    @property
    def canonical(self) -> bytes:
        """The advert's bytes with age 0: equal for every copy of one advert."""
        return self.signed_part + _U16.pack(len(self.signature)) + self.signature


def _u16(data: bytes, off: int) -> tuple[int, int]:
    if off + 2 > len(data):
        raise WireError("truncated length")
    return _U16.unpack_from(data, off)[0], off + 2


def encode_unsigned(
    origin: str,
    node_address: str,
    seq: int,
    links: tuple[tuple[str, float], ...],
    cert_der: bytes,
) -> bytes:
    """The signed part of an advert (age 0); append :func:`signature_trailer` to finish it."""
    if len(links) > MAX_LINKS:
        raise WireError("too many links")
    if not 0 <= seq <= 0xFFFFFFFFFFFFFFFF:
        raise WireError("seq out of range")
    parts = [_HEAD.pack(MAGIC, VERSION, 0, 0, seq, ipaddress.IPv4Address(node_address).packed)]
    raw = origin.encode()
    if not 1 <= len(raw) <= MAX_NAME:
        raise WireError("bad origin name")
    parts += [bytes([len(raw)]), raw, _U16.pack(len(links))]
    for name, cost in links:
        nraw = name.encode()
        if not 1 <= len(nraw) <= MAX_NAME:
            raise WireError("bad neighbour name")
        parts += [bytes([len(nraw)]), nraw, _U16.pack(max(0, min(0xFFFF, round(cost * 100))))]
    parts += [_U16.pack(len(cert_der)), cert_der]
    return b"".join(parts)


def signature_trailer(signature: bytes) -> bytes:
    return _U16.pack(len(signature)) + signature


def with_age(raw: bytes, age_ms: float) -> bytes:
    """*raw* (an encoded advert) with its age field set; the signature stays valid."""
    age = max(0, min(MAX_AGE_MS, int(age_ms)))
    return raw[:_AGE_OFF] + _U32.pack(age) + raw[_AGE_OFF + 4 :]


def decode_advert(data: bytes) -> Advert:
    """Parse *data*; raise :class:`WireError` (only) on anything malformed."""
    if len(data) < _HEAD.size:
        raise WireError("short advert")
    magic, version, _flags, age_ms, seq, addr = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise WireError("bad magic")
    if version != VERSION:
        raise WireError(f"unsupported version {version}")
    origin, off = decode_name(data, _HEAD.size)
    count, off = _u16(data, off)
    if count > MAX_LINKS:
        raise WireError("too many links")
    links = []
    for _ in range(count):
        name, off = decode_name(data, off)
        centi, off = _u16(data, off)
        links.append((name, centi / 100.0))
    cert_len, off = _u16(data, off)
    if off + cert_len > len(data):
        raise WireError("truncated certificate")
    cert = data[off : off + cert_len]
    off += cert_len
    signed_end = off
    sig_len, off = _u16(data, off)
    if off + sig_len != len(data):
        raise WireError("signature length does not match the message")
    return Advert(
        origin=origin,
        node_address=str(ipaddress.IPv4Address(addr)),
        seq=seq,
        age_ms=age_ms,
        links=tuple(links),
        cert_der=bytes(cert),
        signature=bytes(data[off:]),
        signed_part=bytes(data[:_AGE_OFF]) + b"\0\0\0\0" + bytes(data[_AGE_OFF + 4 : signed_end]),
    )
