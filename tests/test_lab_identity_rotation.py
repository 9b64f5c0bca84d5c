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

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from meshcore_testkit.containerlab import (
    agent_ready,
    exec_in,
    on_node,
    running_lab_state,
    site_run,
)
from meshcore_testkit.pki import redate
from meshcore_tools.lab.state import container

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


def incidents(node: str) -> list[dict]:
    out = exec_in(node, "meshctl", "--json", "incidents", "--limit", "500")
    assert out.returncode == 0, f"{node}: meshctl incidents: {out.stderr}"
    return [i for i in json.loads(out.stdout)["incidents"] if i["class"] == "stale_identity"]


def wait_for(what: str, check, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < end, f"not within {timeout:.0f} s: {what}"
        time.sleep(2)
    return got


def test_a_certificate_near_its_end_raises_stale_identity_until_site_yml_renews_it(
        lab_state: dict, tmp_path: Path) -> None:
    """The operator's path when site.yml has not run for a while: the certificate of one
    node is 25 days into its 30 (the controller copy re-dated, same key, and put on the
    node as a renewal would); its agent swaps to it and its loop (observe) raises a
    stale_identity incident, with nothing to do for a file identity; site.yml for that
    node re-issues it (lab_pki's renewal window) and the incident recovers."""
    node = sorted(lab_state["nodes"])[1]
    crt = PKI / "nodes" / f"{node}.crt"
    arm = {"mesh_agent_mapek_enabled": True}
    rc, _ = site_run(arm, tmp_path / "arm", limit=f"{node},localhost")
    assert rc == 0, "arming the loop through site.yml failed"
    try:
        agent_ready(node)
        ident = json.loads(exec_in(node, "meshctl", "--json", "identity").stdout)
        assert ident["validity_checked"], "the lab node's clock is not trusted: no age is read"
        key = x509.load_pem_x509_certificate(crt.read_bytes()).public_key()
        redate(PKI / "ca", crt, dt.timedelta(days=5))  # 25 of 30 days gone: 0.83
        nodes = sorted(lab_state["nodes"])
        before = {n: rejected(metrics(n)) for n in nodes}
        copied = subprocess.run(["podman", "cp", str(crt), f"{container(node)}:"
                                 "/etc/mesh-agent/pki/node.crt.new"], check=False,
                                capture_output=True, text=True)
        assert copied.returncode == 0, copied.stderr
        on_node(node, "cd /etc/mesh-agent/pki && chown root:meshcore node.crt.new && "
                "chmod 0644 node.crt.new && mv -f node.crt.new node.crt")
        [inc] = wait_for("a stale_identity incident", lambda: incidents(node))
        assert inc["state"] == "open" and inc["target"] == "self:"
        assert 0.8 < inc["signal"]["value"] < 0.9 and inc["action"]["kind"] == "none"

        rc, _ = site_run(arm, tmp_path / "renew", limit=f"{node},localhost")
        assert rc == 0, "site.yml failed"
        renewed = x509.load_pem_x509_certificate(
            exec_in(node, "cat", "/etc/mesh-agent/pki/node.crt").stdout.encode())
        left = renewed.not_valid_after_utc - dt.datetime.now(dt.UTC)
        assert dt.timedelta(days=29.9) < left <= dt.timedelta(days=30)
        assert renewed.public_key() == key  # renewed, same key: the agent swaps it in
        [inc] = wait_for("the incident's recovery", lambda: [
            i for i in incidents(node) if i["state"] == "recovered"])
        assert inc["mttr_seconds"] > 0
        # nobody refused an advert for a certificate or signature along the way: not this
        # node, nor its peers, which verified its certificate through both swaps
        assert {n: rejected(metrics(n)) for n in nodes} == before
    finally:
        site_run({}, tmp_path / "disarm", limit=f"{node},localhost")
