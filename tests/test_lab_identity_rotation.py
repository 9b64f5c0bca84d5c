"""Certificate rotation in the running lab: the agent follows it, adverts keep verifying.

Slow: ``make test-full`` runs it after test_lab_e2e, on the same 10-node lab
(the session ``lab`` fixture in tests/conftest.py builds it once per pytest
session; the lab inventory sets mesh_identity_source=lab_pki). It makes
the lab_pki role re-issue one node's key and certificate (the controller copies
are removed, then the role runs for that node alone, as a renewal would), then
checks through the agents' /metrics that the running agent swapped its identity,
no advert anywhere was rejected for its certificate or signature (untrusted,
bad_signature, unsigned), and the node stays reachable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from meshcore_testkit.containerlab import exec_in, running_lab_state

ROOT = Path(__file__).resolve().parents[1]
PKI = ROOT / "build" / "pki"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("podman") is None,
                       reason="the lab needs root and podman"),
]
FETCH = ("import urllib.request,sys;"
         "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9105/metrics',timeout=5)"
         ".read().decode())")


def metrics(node: str) -> str:
    out = exec_in(node, "python3", "-c", FETCH)
    assert out.returncode == 0, f"{node}: /metrics: {out.stderr}"
    return out.stdout


def value(body: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", body, flags=re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def rejected(body: str) -> float:
    return sum(float(v) for v in re.findall(
        r'^meshcore_adverts_rejected_total\{reason="(?:untrusted|bad_signature|unsigned)"\} '
        r'([0-9.e+-]+)$', body, re.M))


@pytest.fixture(scope="module")
def lab_state(lab: dict) -> dict:
    """The plan of the session lab; the session fixture has just built it with the lab PKI."""
    assert (PKI / "ca" / "ca.crt").exists(), "the lab was built without the lab PKI"
    return running_lab_state()


def reissue(node: str) -> subprocess.CompletedProcess[str]:
    """Run the lab_pki role for one node after removing its controller key and cert."""
    for ext in ("crt", "key"):
        (PKI / "nodes" / f"{node}.{ext}").unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yml", dir=ROOT / "playbooks",
                                     delete=False) as play:
        yaml.safe_dump([{"name": "Re-issue one node certificate", "hosts": node,
                         "gather_facts": False, "roles": [{"role": "lab_pki"}]}], play)
    try:
        return subprocess.run(
            [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "inventories/lab",
             play.name], cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                 "ANSIBLE_FORCE_COLOR": "0"})
    finally:
        os.unlink(play.name)


def test_reissued_certificate_is_picked_up_and_adverts_keep_verifying(lab_state: dict) -> None:
    nodes = sorted(lab_state["nodes"])
    node, far = nodes[0], nodes[-1]
    far_address = lab_state["nodes"][far]["node_address"]
    before = {n: metrics(n) for n in nodes}
    cert_before = exec_in(node, "cat", "/etc/mesh-agent/pki/node.crt").stdout
    rotations = value(before[node], "meshcore_identity_rotations_total")
    assert exec_in(node, "ping", "-c", "2", "-W", "1", far_address).returncode == 0

    run = reissue(node)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert exec_in(node, "cat", "/etc/mesh-agent/pki/node.crt").stdout != cert_before

    deadline = time.monotonic() + 30
    while value(metrics(node), "meshcore_identity_rotations_total") < rotations + 1:
        assert time.monotonic() < deadline, "the agent did not pick up the new certificate"
        time.sleep(1)
    time.sleep(5)  # a few advert rounds signed with the new key
    after = {n: metrics(n) for n in nodes}
    assert value(after[node], "meshcore_identity_reload_errors_total") == value(
        before[node], "meshcore_identity_reload_errors_total")
    assert {n: rejected(after[n]) for n in nodes} == {n: rejected(before[n]) for n in nodes}
    assert value(after[far], "meshcore_adverts_accepted_total") > value(
        before[far], "meshcore_adverts_accepted_total")
    assert exec_in(node, "ping", "-c", "2", "-W", "1", far_address).returncode == 0
