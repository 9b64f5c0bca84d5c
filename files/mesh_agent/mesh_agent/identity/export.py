"""The node's own identity as a file, for TLS clients that only take paths.

An identity read from files (lab_pki) is already on disk. One streamed by the SPIFFE
Workload API (SPIRE) lives only in the agent's memory, yet the etcd lease client
(``etcd3gw``, through ``requests``) presents its client certificate from a path. So
while the identity comes from the Workload API and the lease endpoints are ``https``,
the agent keeps its current X.509-SVID in ``<state_dir>/tls-client/client.pem``:
the private key and the certificate in one PEM (``ssl.load_cert_chain`` reads both
from one file), replaced in one rename on every rotation, so a reader never pairs a
new certificate with an old key. The directory is 0700 and the file 0600, owned by
the agent's user, as the unit's ``StateDirectory``; spiffe-helper writes SVIDs to
disk the same way.

Who reads it: :func:`mesh_agent.mapek.shell.lease_provider`, in the agent and in
``meshctl lease check`` (run as root, which gets no SVID of its own), through
:func:`client_pem`. An agent whose identity comes from files removes the directory at
start, so a node moved from SPIRE back to files never presents a stale SVID.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

from mesh_agent.identity import Identity
from mesh_agent.store.seq import write_atomic

if TYPE_CHECKING:  # config imports the clock rule from this package
    from mesh_agent.config import AgentConfig

log = logging.getLogger("mesh_agent.identity")

EXPORT_DIR = "tls-client"
CLIENT_PEM = "client.pem"


def client_pem(state_dir: Path) -> Path:
    """Where the exported client identity lives under *state_dir*."""
    return state_dir / EXPORT_DIR / CLIENT_PEM


def pem(identity: Identity) -> bytes:
    """The private key (PKCS#8) and the certificate, one PEM."""
    key = identity.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    return key + identity.cert.public_bytes(serialization.Encoding.PEM)


def write(state_dir: Path, identity: Identity) -> Path:
    """Write *identity* to :func:`client_pem` (created 0700/0600, replaced atomically)."""
    path = client_pem(state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    write_atomic(path, pem(identity))
    return path


def clear(state_dir: Path) -> None:
    """Remove an exported identity (the node's identity comes from files now)."""
    directory = state_dir / EXPORT_DIR
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        log.info("removed %s: the identity comes from files", directory)


class ClientExport:
    """Keeps :func:`client_pem` in step with the identity while it is *wanted* (the
    Workload API is the source and some lease endpoint is https); clears it otherwise.
    Never in the way: a file that cannot be written is logged and counted, and the lease
    client then fails with a reason naming the file, as for a missing lab_pki file."""

    def __init__(self, state_dir: Path, wanted: bool) -> None:
        self.state_dir, self.wanted = state_dir, wanted
        self.errors = 0

    @classmethod
    def for_config(cls, cfg: AgentConfig, source: str) -> ClientExport:
        """Wanted when *source* (the identity source's name) is the Workload API and some
        lease endpoint is https."""
        return cls(cfg.state_dir, wanted=source == "workload_api" and any(
            e.startswith("https://") for e in cfg.mapek.lease.endpoints))

    def sync(self, identity: Identity) -> None:
        try:
            if self.wanted:
                write(self.state_dir, identity)
            else:
                clear(self.state_dir)
        except OSError as exc:
            self.errors += 1
            log.error("cannot write the client identity for the lease service: %s", exc)
