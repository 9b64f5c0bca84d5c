"""Three emulated Pis, seeded with make seed, mesh and route with no Ansible run.

meshcore_tools.hwlab (make hw-lab) is the README's "Three Pis" quickstart run on
qemu-system-aarch64 (TCG) in place of cards: it writes the site, builds its
image, seeds three cards, boots them wired in a line, checks hostnames,
addresses, neighbours, verified adverts, node 1 reaching node 3 through node 2,
the clock of the node booted a year behind, and a Prometheus on the host
scraping all three. Once per link backend. The native run then runs site.yml
twice, both with changed=0 (a flashed card is already what site.yml makes):
25-60 min a run under TCG, so not again for batman, whose roles
`make molecule-image` converges twice on a booted card.
Slow (an image per site, TCG): make test-full-hw (in make test-full).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["native", "batman"])
def test_three_emulated_pis(backend):
    missing = [
        t for t in ("qemu-system-aarch64", "mcopy", "prometheus", "ssh") if not shutil.which(t)
    ]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (requirements/apt.txt, make setup)")
    if os.geteuid() != 0:
        pytest.skip("building the site's image needs root (mmdebstrap, chroot)")
    proc = subprocess.run(
        [sys.executable, "-m", "meshcore_tools.hwlab", "--backend", backend],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=4 * 3600,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(lines[-1])
    assert result["ok"], result["error"] + "\n" + proc.stderr[-5000:]
    checks = result["checks"]
    if backend == "native":
        assert result["site_yml"]
        zero = {"starter-01": 0, "starter-02": 0, "starter-03": 0}
        assert checks["site_yml_changed"] == [zero, zero], checks.get("site_yml_run1_changed_tasks")
    else:
        assert not result["site_yml"]
    assert checks["prometheus"]["up"] == 6
    assert checks["skewed_clock"]["offset_s"] < 10


def test_a_signal_stops_the_run_and_keeps_what_it_proved(tmp_path, monkeypatch):
    """SIGTERM mid-run: the cleanup runs, the result records the checks passed so far."""
    import signal as _signal

    from meshcore_tools import hwlab
    from meshcore_tools.interrupts import interrupts

    lab = hwlab.Lab("native", tmp_path, tmp_path)
    lab.dir.mkdir()  # write_site makes it; stood in for below
    stopped = []

    def write_site():
        lab.check("hostnames_and_addresses", True)

    def image_and_seeds():
        os.kill(os.getpid(), _signal.SIGTERM)

    monkeypatch.setattr(lab, "write_site", write_site)
    monkeypatch.setattr(lab, "image_and_seeds", image_and_seeds)
    monkeypatch.setattr(lab, "stop", lambda keep: stopped.append(keep))
    with interrupts("hw-lab") as intr:
        result = lab.run_all(keep=False, site_yml=True, intr=intr)
    assert stopped == [False]
    assert not result["ok"]
    assert result["error"] == "interrupted by SIGTERM"
    assert result["checks"] == {"hostnames_and_addresses": True}
    assert json.loads((tmp_path / "native/result.json").read_text())["checks"] == result["checks"]


def test_link_downs_counts_by_reason_from_boot_and_during_the_soak():
    """The quiet line's false deaths: every link_down counted by reason, and those
    after the soak's mark (an event id: node 3's wall clock is stepped mid-run)."""
    from meshcore_tools.hwlab import link_downs

    events = [
        {"id": 3, "kind": "link_down", "reason": "echo"},
        {"id": 5, "kind": "link_up", "reason": ""},
        {"id": 7, "kind": "link_down", "reason": "timeout"},
        {"id": 9, "kind": "link_down", "reason": "echo"},
        {"id": 11, "kind": "link_down"},
    ]
    assert link_downs(events, mark=7) == {
        "from_boot": {"echo": 2, "timeout": 1, "unknown": 1},
        "soak": {"echo": 1, "unknown": 1},
    }
    assert link_downs([], mark=0) == {"from_boot": {}, "soak": {}}
