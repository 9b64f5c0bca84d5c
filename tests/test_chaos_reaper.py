"""No fault outlives its deadline, whatever happens to the controller: the hard way.

A controller (``python -m meshcore_tools.chaos stress``) injects and removes
random faults of every class on a five-node netns lab; the test SIGKILLs it at
random moments (seeded), starts another, and now and then SIGKILLs a node's
reaper and starts it again (a node-side restart). When the injections are
done and the last deadline has passed, every namespace is asked what is left:
journal records, tagged nft tables, owned qdiscs, tagged link aliases, chaos
cgroups, tagged or stopped processes. The answer must be nothing, and every
node must have its (stand-in) agent running again.

``make unit`` runs a short count; ``make test-full`` (``--run-slow``) runs 500
injections.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from meshcore_testkit.chaoslab import ChaosLab, stand_in_argv
from meshcore_testkit.marks import requires_root
from meshcore_tools import netns

pytestmark = requires_root

NODES = ["a", "b", "c", "d", "e"]
LINKS = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "a"), ("b", "d")]


def torture(base: Path, injections: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    with ChaosLab(NODES, LINKS, base, prefix="mcr") as lab:
        state = base / "lab.json"
        state.write_text(json.dumps(lab.state))
        started = kills = reaper_restarts = 0
        last_deadline = 0.0
        round_ = 0
        while started < injections:
            round_ += 1
            ctl = subprocess.Popen(
                [sys.executable, "-m", "meshcore_tools.chaos", "stress", "--state", str(state),
                 "--netns-tag", lab.tag, "--journal-root", str(base / "journal"),
                 "--count", str(injections - started), "--seed", str(seed * 1000 + round_),
                 "--restart-argv", json.dumps(stand_in_argv()),
                 "--restart-log", str(base / "restarted.log")],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            # Kill it at a random moment (most rounds), or let it finish its count.
            budget = rng.uniform(0.5, 6.0)
            t0 = time.monotonic()
            assert ctl.stdout is not None
            while time.monotonic() - t0 < budget and ctl.poll() is None:
                time.sleep(0.05)
            if ctl.poll() is None:
                ctl.send_signal(signal.SIGKILL)
                kills += 1
            out, _ = ctl.communicate()
            for line in out.splitlines():
                rec = json.loads(line)
                if "injecting" in rec:
                    started += 1
                    last_deadline = max(last_deadline, rec["deadline"])
            if rng.random() < 0.3:  # a node's reaper dies and its service restarts it
                node = rng.choice(NODES)
                lab.reapers[node].kill()
                lab.reapers[node].wait()
                lab.start_reaper(node)
                reaper_restarts += 1
        # Every deadline passed; then the reapers get a minute (a loaded host) to be done.
        time.sleep(max(0.0, last_deadline - time.time()))
        lab.wait(lambda: lab.leftovers() == {}, 60)
        leftovers = lab.leftovers()
        lab.wait(lambda: all(agent_running(lab, n) for n in NODES), 60)
        agents = {n: agent_running(lab, n) for n in NODES}
    reaped = sum(line.count('"reaped"') for p in base.glob("*.reaper.*.log")
                 for line in p.read_text().splitlines())
    return {"injections": started, "controller_kills": kills, "reaped_by_reapers": reaped,
            "reaper_restarts": reaper_restarts, "leftovers": leftovers, "agents": agents}


def agent_running(lab: ChaosLab, node: str) -> bool:
    for p in netns.run("ip", "netns", "pids", lab.ns(node)).stdout.split():
        try:  # a short-lived process may be gone already
            if "mesh_agent" in Path(f"/proc/{p}/cmdline").read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def check(result: dict[str, object], injections: int) -> None:
    print(json.dumps(result))
    assert int(str(result["injections"])) >= injections
    assert result["leftovers"] == {}, result
    assert all(dict(result["agents"]).values()), result  # type: ignore[call-overload]


def test_controller_killed_at_random_leaves_nothing(tmp_path: Path) -> None:
    check(torture(tmp_path, 12, seed=1), 12)


@pytest.mark.slow
def test_500_injections_with_the_controller_killed_at_random(tmp_path: Path) -> None:
    check(torture(tmp_path, 500, seed=2), 500)

