"""A running agent picks up a rotated certificate without dropping a route.

Three real agents (``python -m mesh_agent run``, enforce mode) in a line
n0 - n1 - n2, in namespaces this test creates. Once converged, n0's key and
certificate files are replaced (a new pair from the same CA, written like
Ansible's copy: temporary file and rename). n0 must report the rotation in its
metrics, n2 must keep accepting n0's adverts (now carrying the new certificate)
with no advert anywhere rejected for its certificate or signature (untrusted,
bad_signature, unsigned), and no agent route may disappear while it happens.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from meshcore_testkit.agents import AgentMesh, api, metric, ping
from meshcore_testkit.marks import requires_root
from meshcore_testkit.pki import CA

pytestmark = requires_root
LINE = [(0, 1), (1, 2)]


@pytest.fixture
def line(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[AgentMesh]:
    with AgentMesh(3, LINE, tmp_path_factory.mktemp("rotate"), prefix="mrt", ca=ca) as mesh:
        yield mesh


def rejected(ns: str) -> float:
    _, body = api(ns, "/metrics")
    return sum(float(v) for v in re.findall(
        r'^meshcore_adverts_rejected_total\{reason="(?:untrusted|bad_signature|unsigned)"\} '
        r'([0-9.e+-]+)$', body, re.M))


def replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_rotated_certificate_is_picked_up_and_adverts_keep_verifying(
    line: AgentMesh, ca: CA
) -> None:
    ns = line.namespaces
    line.wait_for(line.converged, 60, "the line converged")
    expiry_before = metric(ns[0], "meshcore_identity_cert_expiry_timestamp_seconds")
    assert expiry_before > 0
    assert metric(ns[0], "meshcore_identity_source", '{source="files"}') == 1
    accepted_before = metric(ns[2], "meshcore_adverts_accepted_total")
    rejected_before = [rejected(n) for n in ns]

    pki = line.base / "n0" / "pki"
    # A later notAfter (visible in the metrics), the same node address.
    key, cert = ca.issue("n0", days=2.0, addresses=[line.nodes[0].address])
    replace(pki / "node.crt", cert.public_bytes(serialization.Encoding.PEM))
    replace(pki / "node.key", key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    rotated_at = time.monotonic()
    routes_seen = []
    while time.monotonic() - rotated_at < 4.0:  # n0 polls every second; adverts every second
        routes_seen.append((len(line.routes(0)), len(line.routes(2))))
        time.sleep(0.05)
    assert metric(ns[0], "meshcore_identity_rotations_total") == 1
    assert metric(ns[0], "meshcore_identity_reload_errors_total") == 0
    assert metric(ns[0], "meshcore_identity_cert_expiry_timestamp_seconds") > expiry_before
    assert all(r == (2, 2) for r in routes_seen), routes_seen  # no route ever dropped
    # n0's adverts, signed with the new key, keep arriving and verifying two hops away.
    line.wait_for(lambda: metric(ns[2], "meshcore_adverts_accepted_total") > accepted_before + 2,
                  10, "n2 accepting n0's new adverts")
    assert [rejected(n) for n in ns] == rejected_before
    assert "identity rotated (files)" in line.nodes[0].log.read_text()
    r = ping(ns[2], line.nodes[0].address)
    assert r.returncode == 0, r.stdout + r.stderr
