"""Per-neighbour hello keys from the two nodes' certified keys (no key exchange messages).

Hellos run every 50 ms per interface, so they cannot carry a signature (an
ECDSA verify costs ~150 us, and an attacker could make us run thousands). They
carry a MAC instead, in the manner of BFD's keyed SHA authentication (RFC 5880
section 6.7), but with a key per *pair* of nodes rather than one shared secret:

    K(a, b) = HKDF-SHA256(ECDH(a's private key, b's certified public key),
                          salt="meshcore hello v2", info=trust domain | min(a,b) | max(a,b))

Static-static ECDH gives both ends the same key with no message exchanged, and
only the holders of the two private keys can compute it, so a valid tag proves
that the hello came from the node its name claims *as certified in that node's
signed adverts*: a name in a hello means nothing until the name's certificate
was verified. ECDH runs once per (our key, peer certificate) and is cached.

Rotation: after our key changes, the previous one stays usable for
``grace_s`` so that peers still holding our old certificate keep accepting our
hellos (we send a tag under each key) and our tags made under their view of
our old key still verify here.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh_agent.identity import Identity, IdentityError

SALT = b"meshcore hello v2"
CACHE_MAX = 1024
ROTATION_GRACE_S = 30.0
# A peer's keys are looked up on every hello; its certificate is re-checked
# (validity window, trust) at most this often while it stays the same.
RECHECK_S = 1.0


class HelloKeys:
    """Keys for the hellos exchanged with each named peer (see module docstring).

    *peer_cert* returns the DER certificate a verified advert of that name
    carried (the LSDB's), or None. *identity* is ours; its key may be swapped
    at any time (rotation).
    """

    def __init__(
        self,
        identity: Identity,
        peer_cert: Callable[[str], bytes | None],
        grace_s: float = ROTATION_GRACE_S,
    ) -> None:
        self.identity = identity
        self.peer_cert = peer_cert
        self.grace_s = grace_s
        self._current = (identity.key, _fingerprint(identity.key))
        # (key, fingerprint, usable until)
        self._previous: tuple[ec.EllipticCurvePrivateKey, bytes, float] | None = None
        self._cache: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        # name -> (certificate bytes object, keys, recheck after, own key fingerprints)
        self._by_name: dict[str, tuple[bytes, list[bytes], float, tuple[bytes, ...]]] = {}
        self.derivations = 0

    def _own_keys(self, now: float) -> list[tuple[ec.EllipticCurvePrivateKey, bytes]]:
        if self.identity.key is not self._current[0]:
            self._previous = (*self._current, now + self.grace_s)
            self._current = (self.identity.key, _fingerprint(self.identity.key))
        keys = [self._current]
        if self._previous is not None:
            if now <= self._previous[2]:
                keys.append(self._previous[:2])
            else:
                self._previous = None
        return keys

    def keys(self, name: str, now: float) -> list[bytes]:
        """The pair keys for *name* (one per usable own key); empty if its identity is unknown."""
        der = self.peer_cert(name)
        if der is None:
            return []
        own_keys = self._own_keys(now)
        own_state = tuple(fp for _, fp in own_keys)
        hit = self._by_name.get(name)
        if hit is not None and hit[0] is der and now < hit[2] and hit[3] == own_state:
            return hit[1]
        try:
            peer = self.identity.verify_cert(der, name)
        except IdentityError:
            self._by_name.pop(name, None)
            return []
        digest = hashlib.sha256(der).digest()
        out = []
        for own, fingerprint in own_keys:
            slot = (fingerprint, digest)
            key = self._cache.get(slot)
            if key is None:
                key = self._derive(own, peer.public_key, name)
                self._cache[slot] = key
                if len(self._cache) > CACHE_MAX:
                    self._cache.popitem(last=False)
            out.append(key)
        if len(self._by_name) > CACHE_MAX:
            self._by_name.clear()
        self._by_name[name] = (der, out, now + RECHECK_S, own_state)
        return out

    def _derive(
        self, own: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey, name: str
    ) -> bytes:
        self.derivations += 1
        shared = own.exchange(ec.ECDH(), peer)
        a, b = sorted((self.identity.node_name, name))
        info = b"|".join(s.encode() for s in (self.identity.trust_domain, a, b))
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=info).derive(shared)


def _fingerprint(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return hashlib.sha256(point).digest()
