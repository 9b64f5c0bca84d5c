"""Link-state advert wire format (version 1), big-endian.

::

    off  size  field
      0     2  magic b"MA"
      2     1  version (1)
      3     1  flags (reserved, 0)
      4     8  seq           u64, strictly increasing per origin
     12     8  ts_ms         u64, origin's wall clock (Unix ms), for ageing
     20     4  node_address  origin's /32
     24     1  name_len      1..63, then origin name (UTF-8)
      .     2  n_links       u16, then n_links entries:
                 name_len u8, neighbour name, cost_centi u16 (cost x 100)
      .     2  cert_len      u16, then the origin's X.509 certificate (DER)
      .     2  sig_len       u16, then ECDSA-SHA256 signature (DER) over every
                             preceding byte of the message

Hellos and adverts share the UDP port; the magic tells them apart.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from mesh_agent.link.wire import MAX_NAME, WireError, decode_name

MAGIC = b"MA"
VERSION = 1
MAX_LINKS = 1024
_HEAD = struct.Struct("!2sBBQQ4s")
_U16 = struct.Struct("!H")


@dataclass(frozen=True)
class Advert:
    origin: str
    node_address: str
    seq: int
    ts_ms: int
    links: tuple[tuple[str, float], ...]
    cert_der: bytes
    signature: bytes
    signed_part: bytes


def _u16(data: bytes, off: int) -> tuple[int, int]:
    if off + 2 > len(data):
        raise WireError("truncated length")
    return _U16.unpack_from(data, off)[0], off + 2


def encode_unsigned(
    origin: str,
    node_address: str,
    seq: int,
    ts_ms: int,
    links: tuple[tuple[str, float], ...],
    cert_der: bytes,
) -> bytes:
    """The signed part of an advert; append :func:`signature_trailer` to finish it."""
    if len(links) > MAX_LINKS:
        raise WireError("too many links")
    parts = [_HEAD.pack(MAGIC, VERSION, 0, seq, ts_ms, ipaddress.IPv4Address(node_address).packed)]
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


def decode_advert(data: bytes) -> Advert:
    """Parse *data*; raise :class:`WireError` (only) on anything malformed."""
    if len(data) < _HEAD.size:
        raise WireError("short advert")
    magic, version, _flags, seq, ts_ms, addr = _HEAD.unpack_from(data, 0)
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
        ts_ms=ts_ms,
        links=tuple(links),
        cert_der=bytes(cert),
        signature=bytes(data[off:]),
        signed_part=bytes(data[:signed_end]),
    )
