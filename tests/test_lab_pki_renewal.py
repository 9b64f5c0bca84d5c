"""lab_pki renews certificates before they run out, with a real ansible-playbook run.

``community.crypto.x509_certificate`` keeps an existing certificate whatever its dates
(``ignore_timestamps`` defaults to true), so until session 48 a node's certificate was
never re-issued by ``site.yml``: 30 days after provisioning every node's certificate had
expired and, with the clock trusted, the agents refused each other's adverts. These
runs touch no host: the controller side (``tasks_from: issue``) and the ``server_cert``
entry point into a temporary directory on this machine.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from meshcore_testkit.pki import redate

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"

PLAY = """\
- name: lab_pki renewal
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  tasks:
    - name: The role's {entry} entry point
      ansible.builtin.include_role:
        name: lab_pki
        tasks_from: {entry}
      vars:
        lab_pki_dir: {pki}
        lab_pki_node_name: n1
        lab_pki_node_address: 10.77.0.1
        lab_pki_server_name: etcd
        lab_pki_server_sans: ["DNS:n1", "IP:10.77.0.1"]
        lab_pki_server_dest_dir: {dest}
        lab_pki_server_group: root
"""


def run(tmp_path: Path, entry: str, *extra: str) -> subprocess.CompletedProcess[str]:
    if not PLAYBOOK.exists():
        pytest.skip(f"needs {PLAYBOOK.relative_to(ROOT)} (make setup)")
    play = tmp_path / f"{entry}.yml"
    play.write_text(PLAY.format(entry=entry, pki=tmp_path / "pki", dest=tmp_path / "dest"))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0"}
    return subprocess.run([str(PLAYBOOK), "-i", "localhost,", str(play), *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def changed(proc: subprocess.CompletedProcess[str]) -> int:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    m = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    return int(m.group(1))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(str(name.value) for name in ext)


def days_left(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() / 86400


def renewed_like(cert: x509.Certificate, first: x509.Certificate, why: str) -> None:
    """A fresh 30-day certificate with *first*'s key and names: the agent swaps it in."""
    assert 29.9 < days_left(cert) <= 30.0, why
    assert cert.public_key() == first.public_key() and sans(cert) == sans(first), why


def test_a_node_certificate_near_or_past_its_end_is_renewed_and_only_then(
        tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    crt = pki / "nodes" / "n1.crt"
    assert changed(run(tmp_path, "issue")) > 0
    first = load(crt)
    assert 29.9 < days_left(first) <= 30.0
    # A second run on a fresh certificate changes nothing (idempotent).
    assert changed(run(tmp_path, "issue")) == 0 and load(crt) == first
    redate(pki / "ca", crt, dt.timedelta(days=5))
    assert changed(run(tmp_path, "issue")) > 0, "5 days left"
    renewed_like(load(crt), first, "5 days left")
    assert changed(run(tmp_path, "issue")) == 0, "the run after a renewal"
    redate(pki / "ca", crt, dt.timedelta(days=-3))
    assert changed(run(tmp_path, "issue")) > 0, "ended 3 days ago"
    renewed_like(load(crt), first, "ended 3 days ago")
    # 11 days left with the default 10-day window: not due yet, kept.
    kept = redate(pki / "ca", crt, dt.timedelta(days=11))
    assert changed(run(tmp_path, "issue")) == 0 and load(crt) == kept
    # A file that is no certificate any more is replaced, not a failed run.
    crt.write_text("not a certificate\n")
    assert changed(run(tmp_path, "issue")) > 0
    renewed_like(load(crt), first, "an unreadable file")


def test_a_service_certificate_is_renewed_and_the_node_gets_it(tmp_path: Path) -> None:
    """server_cert (etcd's TLS) goes through the same renewal, and copies the new file."""
    pki = tmp_path / "pki"
    crt = pki / "services" / "etcd-n1.crt"
    assert changed(run(tmp_path, "server_cert")) > 0
    first = load(crt)
    redate(pki / "ca", crt, dt.timedelta(days=5))
    assert changed(run(tmp_path, "server_cert")) > 0
    renewed = load(crt)
    renewed_like(renewed, first, "5 days left")
    assert load(tmp_path / "dest" / "etcd.crt") == renewed
    assert changed(run(tmp_path, "server_cert")) == 0


def test_a_renewal_window_as_long_as_the_validity_is_refused(tmp_path: Path) -> None:
    proc = run(tmp_path, "issue", "-e", "lab_pki_renew_days=30")
    assert proc.returncode != 0
    assert "lab_pki_renew_days (30) must be shorter than lab_pki_cert_days (30)" in proc.stdout
    assert not (tmp_path / "pki" / "nodes" / "n1.crt").exists()
