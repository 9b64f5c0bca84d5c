"""Fuzzing LinkStateDB.receive with real certificate bytes.

* ``fuzz/fuzz_lsdb.py`` (atheris, coverage-guided) runs for a bounded time,
  ``MESHCORE_FUZZ_SECONDS`` (default 20; ``make fuzz`` runs it longer);
* a hypothesis property runs the same mutations of a real certificate,
  re-signed so every input reaches certificate parsing, on every run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshcore_testkit.pki import CA

from mesh_agent.topology import LinkStateDB, encode_unsigned, signature_trailer

FUZZER = Path(__file__).with_name("fuzz") / "fuzz_lsdb.py"


def test_atheris_finds_nothing_in_bounded_time(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (requirements/dev.txt)")
    seconds = int(os.environ.get("MESHCORE_FUZZ_SECONDS", "20"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    run = subprocess.run(
        [sys.executable, str(FUZZER), f"-max_total_time={seconds}", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=seconds + 120, check=False,
        cwd=tmp_path,
    )
    tail = run.stderr[-4000:]
    assert run.returncode == 0, tail
    done = re.search(r"Done (\d+) runs", run.stderr)
    assert done and int(done.group(1)) >= 1000, tail


@st.composite
def mutated_certificates(draw: st.DrawFn, der: bytes) -> bytes:
    cert = bytearray(der)
    for _ in range(draw(st.integers(1, 6))):
        cert[draw(st.integers(0, len(cert) - 1))] = draw(st.integers(0, 255))
    return bytes(cert[: draw(st.integers(0, len(cert)))])


def test_mutated_real_certificates_never_escape(ca: CA) -> None:
    a, b = ca.identity("a", "10.77.0.1"), ca.identity("b", "10.77.0.2")
    db = LinkStateDB(a, "10.77.0.1", 60.0)
    db.originate({"b": 1.0}, 1.0)
    seq = [100]

    @given(mutated_certificates(b.cert_der))
    @settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
    def check(cert: bytes) -> None:
        seq[0] += 1
        body = encode_unsigned("b", "10.77.0.2", seq[0], (("a", 1.0),), cert)
        r = db.receive(body + signature_trailer(b.sign(body)), 1.0)  # must not raise
        assert r.reason != "internal_error"
        if cert != b.cert_der and r.accepted:
            # A mutation DER tolerates (e.g. inside the signature's unused bits)
            # must still be a certificate the CA signed for b.
            assert db.identity.verify_cert(cert, "b").name == "b"

    check()
