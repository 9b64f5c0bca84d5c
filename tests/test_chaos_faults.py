"""Each fault class on real namespaces: inject, see the effect, remove, find nothing left.

A three-node line ``a - b - c`` of plain namespaces (meshcore_tools.netns), a
reaper and a stand-in agent (a process whose command line says ``mesh_agent
run``) in each. Every class goes through the node-side CLI exactly as the
runner drives it (journal first, owned tags), and after each removal every
namespace is asked for leftovers (journal records, tagged nft tables, owned tc
qdiscs, tagged link aliases, chaos cgroups, tagged or stopped processes).

A loaded host makes every node call slow (a Python start in a namespace), so
nothing here is timed: faults get deadlines far beyond the test (or, for the
reaper's own deadline, 20 s), and an effect that comes asynchronously (a
signal, a restart, the reaper) is waited for with a deadline of a minute.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshcore_chaos.node.ops import proc_stat
from meshcore_testkit.chaoslab import ChaosLab, stand_in_argv
from meshcore_testkit.marks import requires_root
from meshcore_tools import netns
from meshcore_tools.chaos import faults
from meshcore_tools.chaos.faults import Fault, Options, Topo
from meshcore_tools.chaos.nodes import inject, leftovers, remove

pytestmark = requires_root


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosLab]:
    with ChaosLab(["a", "b", "c"], [("a", "b"), ("b", "c")],
                  tmp_path_factory.mktemp("chaos")) as lab:
        yield lab


@pytest.fixture(autouse=True)
def nothing_left(lab: ChaosLab) -> Iterator[None]:
    assert lab.leftovers() == {}, "a previous test left a fault"
    yield
    assert lab.leftovers() == {}


DEFAULT = Options()
WAIT_S = 60.0  # a deadline for what comes asynchronously; met at once on an idle host


def put(lab: ChaosLab, cls: str, target: tuple[str, ...], opts: Options = DEFAULT,
        hold: float = 300, **params: object) -> tuple[Fault, dict[str, list[dict[str, object]]]]:
    fault = Fault(cls, target, f"t{time.monotonic_ns() % 10**9}", params)
    plan = faults.plan(fault, Topo(lab.state), opts)
    res = inject(lab.nodes, fault, plan, time.time() + hold, "test")
    assert all(r.rc == 0 and r.data["ok"] for r in res), [r.data for r in res]
    return fault, plan


def take(lab: ChaosLab, fault: Fault, plan: dict[str, list[dict[str, object]]]) -> None:
    res = remove(lab.nodes, fault, plan)
    assert all(r.rc == 0 and r.data["ok"] and r.data["was_on_record"] for r in res), res


def test_silent_cut_drops_both_ways_with_carrier_up(lab: ChaosLab) -> None:
    addr = lab.link_addr("b", "a")
    assert lab.ping("a", addr) == (3, 3)
    fault, plan = put(lab, "silent_cut", ("a", "b"))
    assert lab.ping("a", addr)[0] == 0
    assert lab.ping("b", lab.link_addr("a", "b"))[0] == 0
    for node, peer in (("a", "b"), ("b", "a")):
        st = lab.link_state(node, Topo(lab.state).ifname(node, peer))
        assert "LOWER_UP" in st["flags"], st  # the carrier stays up
    take(lab, fault, plan)
    assert lab.ping("a", addr) == (3, 3)


def test_link_down_is_seen_by_the_kernel(lab: ChaosLab) -> None:
    t = Topo(lab.state)
    fault, plan = put(lab, "link_down", ("a", "b"))
    assert "UP" not in lab.link_state("a", t.ifname("a", "b"))["flags"]
    assert "LOWER_UP" not in lab.link_state("b", t.ifname("b", "a"))["flags"]  # no carrier
    take(lab, fault, plan)
    st = lab.link_state("a", t.ifname("a", "b"))
    assert "UP" in st["flags"] and not st.get("ifalias")
    assert lab.wait(lambda: lab.ping("a", lab.link_addr("b", "a"))[0] > 0, WAIT_S)


def test_lossy_link_drops_about_the_share_asked(lab: ChaosLab) -> None:
    # Resolve the neighbour first: ARP under 30 % loss would hold the first pings back.
    assert lab.ping("b", lab.link_addr("c", "b")) == (3, 3)
    fault, plan = put(lab, "lossy", ("b", "c"), loss_pct=30)
    got, sent = lab.ping("b", lab.link_addr("c", "b"), count=200, interval=0.005, wait=0.2)
    take(lab, fault, plan)
    # 30 % on each ingress: a round trip survives with 0.7 * 0.7 = 49 %.
    assert 0.30 < got / sent < 0.68, (got, sent)


def test_slow_link_has_a_tbf_with_the_owned_handle(lab: ChaosLab) -> None:
    t = Topo(lab.state)
    fault, plan = put(lab, "slow", ("a", "b"), rate="100kbit")
    for node, peer in (("a", "b"), ("b", "a")):
        q = json.loads(netns.run(*netns.exec_argv(lab.ns(node), "tc", "-j", "qdisc", "show",
                                                  "dev", t.ifname(node, peer))).stdout)
        root = next(x for x in q if x.get("root"))
        assert root["kind"] == "tbf" and root["handle"] == "c4a0:", root
        assert root["options"]["rate"] == 12500, root  # bytes/s
    # 30 pings of 1400 bytes through 100 kbit/s queue up: the last ones come back late.
    out = netns.run(*netns.exec_argv(lab.ns("a"), "ping", "-n", "-c", "20", "-i", "0.01",
                                     "-s", "1400", "-W", "2", lab.link_addr("b", "a")),
                    check=False).stdout
    rtts = [float(x.split("time=")[1].split()[0]) for x in out.splitlines() if "time=" in x]
    take(lab, fault, plan)
    assert rtts and max(rtts) > 100, out  # ms: the cap is in the path


def agent_pids(lab: ChaosLab, node: str) -> list[int]:
    """The (stand-in) agents running in a node's namespace."""
    found = []
    for p in netns.run("ip", "netns", "pids", lab.ns(node)).stdout.split():
        try:  # a short-lived process (the reaper's nft, tc) may be gone already
            if "mesh_agent" in Path(f"/proc/{p}/cmdline").read_text(errors="replace"):
                found.append(int(p))
        except OSError:
            continue
    return found


def test_node_crash_kills_the_agent_and_restarts_it_on_removal(lab: ChaosLab) -> None:
    log = lab.base / "restarted.log"
    old = lab.agents["b"].pid
    opts = Options(restart=stand_in_argv(), restart_log=str(log))
    fault, plan = put(lab, "node_crash", ("b",), opts)
    assert lab.wait(lambda: lab.agents["b"].poll() is not None, WAIT_S)
    take(lab, fault, plan)
    assert lab.wait(lambda: [p for p in agent_pids(lab, "b") if p != old], WAIT_S), \
        agent_pids(lab, "b")


def test_frozen_agent_is_stopped_then_continued(lab: ChaosLab) -> None:
    pid = lab.agents["c"].pid
    fault, plan = put(lab, "frozen_agent", ("c",))
    assert lab.wait(lambda: (proc_stat(pid) or ("?",))[0] == "T", WAIT_S)
    take(lab, fault, plan)
    assert lab.wait(lambda: (proc_stat(pid) or ("T",))[0] != "T", WAIT_S)


def test_partition_cuts_every_link_across(lab: ChaosLab) -> None:
    fault, plan = put(lab, "partition", ("a",))
    assert set(plan) == {"a", "b"}
    assert lab.ping("a", lab.link_addr("b", "a"))[0] == 0
    assert lab.ping("b", lab.link_addr("c", "b")) == (3, 3)  # the other side is untouched
    take(lab, fault, plan)
    assert lab.ping("a", lab.link_addr("b", "a")) == (3, 3)


def test_cpu_starvation_throttles_the_agent(lab: ChaosLab) -> None:
    busy = lab.spawn("a", stand_in_argv(busy=True), lab.base / "busy.log")
    try:
        # Until the spinner runs as itself (the spawn's exec done), which the fault looks for.
        assert lab.wait(lambda: "busy\0mesh_agent" in Path(f"/proc/{busy.pid}/cmdline")
                        .read_text(errors="replace"), WAIT_S)
        # The faults aim at the oldest match: the idle stand-in, unless told the busy one.
        opts = Options(agent_match="busy mesh_agent run")
        fault, plan = put(lab, "cpu_starvation", ("a",), opts, quota_pct=5)
        name = lab_ops(lab, "a")[0]["name"]
        d = Path("/sys/fs/cgroup/cpu") / name if Path("/sys/fs/cgroup/cpu").is_dir() \
            else Path("/sys/fs/cgroup") / name
        assert str(busy.pid) in (d / "cgroup.procs").read_text().split()
        t0, w0 = cpu_seconds(busy.pid), time.monotonic()
        time.sleep(1.0)  # a window to measure over, not a wait: its length is measured
        used, wall = cpu_seconds(busy.pid) - t0, time.monotonic() - w0
        take(lab, fault, plan)
        assert not d.exists()
        # A quota caps the share of the wall time, however long the window really was
        # (a loaded host only lowers it); 3 times the quota leaves the period's rounding.
        assert used < 0.15 * wall, \
            f"the spinner used {used:.2f} s of CPU in {wall:.2f} s under a 5 % quota"
    finally:
        busy.kill()
        busy.wait()
        lab.procs.remove(busy)


def lab_ops(lab: ChaosLab, node: str) -> list[dict[str, object]]:
    entries = list((lab.base / "journal" / node).glob("*.json"))
    assert len(entries) == 1, entries
    return list(json.loads(entries[0].read_text())["ops"])


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def test_rogue_node_floods_its_neighbours_advert_port(lab: ChaosLab) -> None:
    with netns.entered(lab.ns("a")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((lab.link_addr("a", "b"), faults.ADVERT_PORT))
    sock.settimeout(WAIT_S)  # the flooder starts in its namespace: a Python start
    try:
        fault, plan = put(lab, "rogue", ("b",), rate=200, seconds=60)
        got = [sock.recv(2048) for _ in range(20)]
        assert all(len(x) == 400 for x in got)
        take(lab, fault, plan)
        assert lab.wait(lambda: lab.leftovers() == {}, WAIT_S)  # the flooder is gone
        sock.settimeout(1.0)
        while True:  # drain what was in flight, then silence
            try:
                sock.recv(2048)
            except TimeoutError:
                break
        with pytest.raises(TimeoutError):
            sock.recv(2048)
    finally:
        sock.close()


def test_refused_without_touching_anything(lab: ChaosLab) -> None:
    t = Topo(lab.state)
    dev = t.ifname("a", "b")
    # A qdisc the fault does not own is never replaced.
    netns.run("tc", "-n", lab.ns("a"), "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf",
              "rate", "1mbit", "burst", "32kbit", "latency", "50ms")
    try:
        fault = Fault("slow", ("a", "b"), "refused1", {})
        res = inject(lab.nodes, fault, faults.plan(fault, t), time.time() + 30, "test")
        assert [r.node for r in res if not r.data["ok"]] == ["a"], res
        # all or nothing: b took the fault at the same time and has removed it again
        assert not leftovers(lab.nodes, ["a", "b"])
        q = json.loads(netns.run("tc", "-n", lab.ns("a"), "-j", "qdisc", "show", "dev", dev).stdout)
        assert next(x for x in q if x.get("root"))["handle"] == "1:"
    finally:
        netns.run("tc", "-n", lab.ns("a"), "qdisc", "del", "dev", dev, "root")
    # Unowned names, past deadlines and unknown operations are refused before the journal.
    for ops, deadline in (
        ([{"op": "nft", "family": "netdev", "table": "filter", "body": ""}], 30),
        ([{"op": "exec", "argv": ["true"]}], 30),
        ([{"op": "link_down", "dev": dev}], -1),
    ):
        r = lab.nodes.call("a", "inject", "--id", "bad", "--experiment", "t", "--fault", "x",
                           "--deadline", str(time.time() + deadline), stdin=json.dumps(ops))
        assert r.rc == 2 and not r.data["ok"], r


def reaped(lab: ChaosLab, node: str, fault_id: str) -> list[dict[str, object]]:
    """What the node's reapers logged having removed for ``fault_id``."""
    out = []
    for p in lab.base.glob(f"{node}.reaper.*.log"):
        for line in p.read_text(errors="replace").splitlines():
            rec = json.loads(line) if line.startswith("{") else {}
            if isinstance(rec.get("reaped"), dict) and rec["reaped"].get("id") == fault_id:
                out.append({**rec["reaped"], "at": rec["at"]})
    return out


def test_reaper_removes_a_fault_at_its_deadline(lab: ChaosLab) -> None:
    # Both nodes must journal it before the deadline (an injection after it is refused),
    # and the cut must be seen while it holds: 20 s is far more than either takes even
    # on a loaded host; what the test waits for is the reaper, not the clock.
    hold = 20.0
    fault, _ = put(lab, "silent_cut", ("b", "c"), hold=hold)
    deadline = {n: json.loads((lab.base / "journal" / n / f"{fault.id}.json").read_text())
                ["deadline"] for n in ("b", "c")}
    assert lab.ping("b", lab.link_addr("c", "b"))[0] == 0
    assert lab.wait(lambda: lab.leftovers() == {}, hold + WAIT_S), lab.leftovers()
    for node in ("b", "c"):
        # Removed by the node's own reaper, for its deadline, and not before it.
        got = reaped(lab, node, fault.id)
        assert [r["reason"] for r in got] == ["deadline"] and not got[0]["errors"], got
        assert float(str(got[0]["at"])) >= deadline[node], (got, deadline)
    assert lab.ping("b", lab.link_addr("c", "b")) == (3, 3)


def test_reaper_removes_a_fault_from_before_a_reboot(lab: ChaosLab) -> None:
    fault, _ = put(lab, "link_down", ("b", "c"), hold=600)
    # A reboot: the kernel's boot id changes. The record says another boot.
    path = lab.base / "journal" / "b" / f"{fault.id}.json"
    entry = json.loads(path.read_text())
    entry["boot"] = "another-boot"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    tmp.replace(path)  # atomically, as the node writes it: the reaper is reading
    assert lab.wait(lambda: lab.leftovers() == {}, WAIT_S), lab.leftovers()
    assert "UP" in lab.link_state("b", Topo(lab.state).ifname("b", "c"))["flags"]


def test_reaper_sweeps_tagged_state_no_record_accounts_for(lab: ChaosLab) -> None:
    """A lost journal (a wiped disk): the reaper finds the faults by their tags alone."""
    put(lab, "silent_cut", ("a", "b"))
    put(lab, "slow", ("b", "c"))
    put(lab, "link_down", ("c", "b"))
    for node in ("a", "b", "c"):
        for p in (lab.base / "journal" / node).glob("*.json"):
            p.unlink()
    assert lab.wait(lambda: lab.leftovers() == {}, WAIT_S), lab.leftovers()
    assert lab.ping("a", lab.link_addr("b", "a")) == (3, 3)


def test_rollback_removes_everything_on_every_node(lab: ChaosLab) -> None:
    put(lab, "silent_cut", ("a", "b"))
    put(lab, "frozen_agent", ("b",))
    put(lab, "slow", ("b", "c"))
    assert set(lab.leftovers()) == {"a", "b", "c"}
    for node in ("a", "b", "c"):
        r = lab.nodes.call(node, "rollback")
        assert r.rc == 0 and r.data["ok"], r.data
    assert lab.ping("a", lab.link_addr("b", "a")) == (3, 3)


# A stand-in agent that logs how late its 10 ms sleeps wake (over 0.1 s), one line each.
LATENESS = ("import sys, time\nout = open(sys.argv[1], 'a', buffering=1)\nwhile True:\n"
            "    t = time.monotonic(); time.sleep(0.01); late = time.monotonic() - t - 0.01\n"
            "    if late > 0.1: out.write(f'{time.monotonic():.3f} {late:.3f}\\n')\n")
SYSTEMD_V1 = Path("/sys/fs/cgroup/systemd")


@pytest.mark.skipif(not (SYSTEMD_V1 / "cgroup.procs").is_file() or (os.cpu_count() or 1) < 2,
                    reason="needs the cgroup v1 name=systemd hierarchy (a stand-in unit's "
                    "cgroup) and 2 CPUs (the runaway takes one); the podman lab's bench "
                    "runs it under systemd (docs/mapek.md)")
def test_runaway_unit_starves_the_pinned_agent_until_the_unit_restarts(lab: ChaosLab) -> None:
    """The unit is a stand-in: a cgroup where systemd would make one, holding a sleep; its
    "restart" kills what is in the cgroup, as systemd's does."""
    unit = f"mcx-runaway-{os.getpid()}.service"
    cg = SYSTEMD_V1 / "system.slice" / unit
    cg.mkdir(parents=True)
    late_log = lab.base / "late.txt"
    probe = lab.spawn("a", [sys.executable, "-c", LATENESS, str(late_log), "lateness",
                            "mesh_agent", "run"], lab.base / "probe.log")
    sleeper = lab.spawn("a", ["sleep", "300"], lab.base / "unit.log")
    try:
        assert lab.wait(lambda: "lateness\0mesh_agent" in Path(f"/proc/{probe.pid}/cmdline")
                        .read_text(errors="replace"), WAIT_S)
        (cg / "cgroup.procs").write_text(f"{sleeper.pid}\n")
        was = os.sched_getaffinity(probe.pid)
        opts = Options(agent_match="lateness mesh_agent run")
        fault, plan = put(lab, "runaway_unit", ("a",), opts, unit=unit, seconds=60)
        spinner = int(lab_ops(lab, "a")[1]["pid"])  # type: ignore[call-overload]
        cpu = max(was)
        assert str(spinner) in (cg / "cgroup.procs").read_text().split()
        assert os.sched_getscheduler(spinner) == os.SCHED_FIFO
        assert os.sched_getaffinity(spinner) == {cpu} == os.sched_getaffinity(probe.pid)
        # Starved: a real-time task on its only CPU leaves it what RT throttling leaves.
        assert lab.wait(lambda: late_log.exists() and any(
            float(x.split()[1]) > 0.25 for x in late_log.read_text().splitlines()), WAIT_S)
        for pid in (cg / "cgroup.procs").read_text().split():  # the unit restarted
            os.kill(int(pid), signal.SIGKILL)
        assert lab.wait(lambda: proc_stat(spinner) is None or proc_stat(spinner)[0] in "ZX",
                        WAIT_S)
        late_log.write_text("")
        time.sleep(1.0)  # a window to look at, not a wait
        assert not [x for x in late_log.read_text().splitlines() if float(x.split()[1]) > 0.25]
        take(lab, fault, plan)
        assert os.sched_getaffinity(probe.pid) == was  # the agent's CPUs given back
    finally:
        for p in (probe, sleeper):
            p.kill()
            p.wait()
            lab.procs.remove(p)
        lab.wait(lambda: not (cg / "cgroup.procs").read_text().split(), WAIT_S)
        cg.rmdir()


def test_runaway_unit_refused_for_a_unit_that_is_not_running(lab: ChaosLab) -> None:
    fault = Fault("runaway_unit", ("a",), "runaway1", {"unit": "no-such-unit.service"})
    was = os.sched_getaffinity(lab.agents["a"].pid)
    res = inject(lab.nodes, fault, faults.plan(fault, Topo(lab.state)), time.time() + 60, "test")
    assert not res[0].data["ok"] and "no-such-unit.service has no process" in res[0].data["error"]
    assert os.sched_getaffinity(lab.agents["a"].pid) == was  # the affinity put back
    assert not leftovers(lab.nodes, ["a"])
