"""meshctl against the real API app, served by the agent's own server on loopback in-process.

The agent is fed by hand (no sockets, no kernel: observe mode), as in test_api_metrics;
meshctl talks HTTP to it exactly as it does on a node.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from meshcore_testkit.inprocess import adverts_with_b, b_answers_echo, compute, meet_b
from meshcore_testkit.pki import CA, PairKeysForTests

from mesh_agent.agent import Agent
from mesh_agent.api import create_app, guarded_server
from mesh_agent.config import parse_config
from mesh_agent.ctl import fleet
from mesh_agent.ctl import main as ctl
from mesh_agent.ctl.render import duration, parse_duration, table
from mesh_agent.store import EventKind, EventLog

NOW = time.time()


class Live:
    def __init__(self, url: str, agent: Agent) -> None:
        self.url, self.agent = url, agent

    def run(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = ctl.main(["--api", self.url, *argv], out=out)
        return code, out.getvalue()


def make_agent(ca: CA, tmp_path: Path, wall: list[float]) -> Agent:
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1", "mode": "observe"})
    events = EventLog.in_state_dir(tmp_path, boot_id="boot-a", wall=lambda: wall[0])
    agent = Agent(cfg, ca.identity("a", "10.77.0.1"), events=events)
    agent.sensor.keys = PairKeysForTests("a")
    # Neighbour b on mesh0 (two-way hellos), both adverts in the LSDB, paths computed.
    now = time.monotonic()
    meet_b(agent, now)
    adverts_with_b(agent, ca, now)
    compute(agent)
    # What happened, on the node's clock: two hours ago, ten minutes ago.
    wall[0] = NOW - 7200
    events.append(EventKind.LINK_UP, "b", "hello")
    wall[0] = NOW - 600
    events.append(EventKind.LINK_DOWN, "b", "carrier")
    events.append(EventKind.FAILOVER, "b", "carrier",
                  {"duration_seconds": 0.0004, "destinations": 1})
    wall[0] = NOW
    return agent


@pytest.fixture
def live(ca: CA, tmp_path: Path) -> Iterator[Live]:
    agent = make_agent(ca, tmp_path, [NOW])
    app = create_app(agent.view, agent.metrics.registry, agent.events)
    server, sockets = guarded_server(app, [("127.0.0.1", 0)], lambda reason: None)
    port = sockets[0].getsockname()[1]
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=sockets)))
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield Live(f"http://127.0.0.1:{port}", agent)
    finally:
        server.should_exit = True
        thread.join(10)
        agent.events.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_status_one_screen_and_json(live: Live) -> None:
    code, text = live.run("status")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0].startswith("* a (10.77.0.1) - mesh-agent ")
    assert lines[0].endswith(", mode observe, native links with echo probes")
    assert "Ready:       yes" in text and "Neighbours:  1 up (b)" in text
    assert "spiffe://mesh.lab/node/a (files), certificate expires in " in text
    assert "failover          b" in text and "duration_seconds=0.0004" in text
    code, text = live.run("--json", "status")
    s = json.loads(text)
    assert code == 0 and s["ready"] is True and s["neighbors_up"] == ["b"]
    assert s["destinations"] == 1 and s["mode"] == "observe"
    assert s["cert_seconds_left"] > 3600
    assert [e["kind"] for e in s["recent_events"]] == ["link_up", "link_down", "failover"]


def test_neighbours_table_json_and_expected(live: Live) -> None:
    code, text = live.run("neighbours")
    header, row = text.splitlines()
    assert code == 0
    assert header.split() == ["NEIGHBOUR", "INTERFACE", "LINK", "ADDRESS", "NODE", "ADDRESS",
                              "STATE", "RTT", "LOSS", "COST", "ECHO", "DEAD", "AFTER", "LINK",
                              "AGE"]
    assert row.split()[:5] == ["b", "mesh0", "10.98.0.1", "10.77.0.2", "up"]
    # The columns line up: each cell starts under its header.
    assert row.index("mesh0") == header.index("INTERFACE")
    # Echo probes sent, none answered yet: hellos judge b's liveness.
    assert row[header.index("ECHO"):].split()[0] == "pending"
    code, text = live.run("neighbors", "--expect", "b,c")
    assert code == 1 and text.rstrip().endswith("missing (expected): c")
    code, text = live.run("--json", "neighbours", "--expect", "b")
    data = json.loads(text)
    assert code == 0 and data["expected_missing"] == []
    assert data["neighbors"][0]["name"] == "b"
    assert data["neighbors"][0]["echo_mode"] == "pending"
    # Heard (its last hello) no earlier than it came up: not the link's age.
    nb = data["neighbors"][0]
    assert 0 <= nb["heard_seconds_ago"] <= nb["age_seconds"] + 0.01


def test_neighbours_echo_mode_once_b_answers_probes(live: Live) -> None:
    b_answers_echo(live.agent, time.monotonic())
    header, row = live.run("neighbours")[1].splitlines()
    assert row[header.index("ECHO"):].split()[0] == "echo"
    data = json.loads(live.run("--json", "neighbours")[1])
    assert [n["echo_mode"] for n in data["neighbors"]] == ["echo"]
    # A clean link: dead after the configured 3 x 50 ms; too few probes for a loss reading.
    assert [(n["dead_after_seconds"], n["probe_loss"]) for n in data["neighbors"]] == [
        (0.15, None)]
    assert row[header.index("DEAD AFTER"):].split()[0] == "150ms"
    # With echo probes off in the config, or on batman-adv, the sensor does not judge by echo.
    nb = live.agent.sensor.neighbors()[0]
    off = parse_config({"node_name": "a", "node_address": "10.77.0.1", "link": {"echo": False}})
    batman = parse_config({"node_name": "a", "node_address": "10.77.0.1",
                           "link": {"backend": "batman"}})
    view = live.agent.view
    assert [replace(view, cfg=c).echo_mode(nb) for c in (off, batman)] == ["off", "batman"]


def test_routes_all_one_and_none(live: Live) -> None:
    code, text = live.run("routes")
    lines = text.splitlines()
    assert code == 0 and lines[0] == (
        "a: 1 destinations, mode observe (routes are computed, not programmed)")
    assert lines[1].split()[:3] == ["DESTINATION", "PRIMARY", "BACKUP"]
    assert lines[2].split() == ["b", "b", "-", "no", "no", "1.0", "yes"]
    code, text = live.run("routes", "b")
    assert code == 0
    assert "primary      a -> b  (next hop b, cost 1.0)" in text
    assert "backup       none" in text and "kernel       10.77.0.2 via b" in text
    code, text = live.run("--json", "routes", "b")
    assert code == 0 and json.loads(text)["primary"] == ["a", "b"]
    code, text = live.run("routes", "nowhere")
    assert code == 1 and text.strip() == "no path to nowhere"
    code, text = live.run("--json", "routes")
    assert json.loads(text)["destinations"]["b"]["installed"] is True


def test_topology_plan_identity(live: Live, ca: CA) -> None:
    code, text = live.run("topology")
    assert code == 0 and text.startswith("a: 2 nodes, 1 links\n")
    lines = text.splitlines()
    assert [line.split()[:2] for line in lines[2:4]] == [["a", "10.77.0.1"], ["b", "10.77.0.2"]]
    assert lines[-2:] == ["A  B  COST", "a  b  1.0"]
    assert json.loads(live.run("--json", "topology")[1])["edges"] == [
        {"a": "a", "b": "b", "cost": 1.0}]
    code, text = live.run("plan")
    assert code == 0 and "1 bridges" in text and text.endswith("no new link proposed\n")
    assert json.loads(live.run("--json", "plan")[1])["summary"]["bridges"] == 1.0
    code, text = live.run("identity")
    assert code == 0 and text.startswith("spiffe id     spiffe://mesh.lab/node/a\n")
    assert "source        files\n" in text and "trust bundle  " in text
    data = json.loads(live.run("--json", "identity")[1])
    cert = live.agent.identity.cert
    assert data["certificate"]["not_after"] == cert.not_valid_after_utc.timestamp()
    assert data["certificate"]["serial"] == format(cert.serial_number, "x")
    assert len(data["bundle"]) == 1
    assert "PRIVATE KEY" not in json.dumps(data)


def test_events_since_kind_and_json_lines(live: Live) -> None:
    code, text = live.run("events", "--since", "1h")
    lines = text.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].split()[2:5] == ["link_down", "b", "carrier"]
    assert lines[1].split()[2:4] == ["failover", "b"]
    code, text = live.run("events")
    assert [line.split()[2] for line in text.splitlines()] == ["link_up", "link_down", "failover"]
    code, text = live.run("--json", "events", "--kind", "failover")
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["kind"] for r in records] == ["failover"]
    assert records[0]["detail"]["duration_seconds"] == 0.0004


def test_events_follow_prints_new_ones(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    polls = []

    def sleep(_: float) -> None:
        polls.append(1)
        if len(polls) == 1:
            live.agent.events.append(EventKind.LINK_UP, "b", "hello")
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr("mesh_agent.ctl.main.time.sleep", sleep)
    code, text = live.run("events", "--limit", "1", "--follow")
    assert code == 130
    assert [line.split()[2] for line in text.splitlines()] == ["failover", "link_up"]


def test_agent_down_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["status"], ["routes", "b"], ["events", "--follow"]):
        code = ctl.main(["--api", f"http://127.0.0.1:{closed_port()}", *command],
                        out=io.StringIO())
        err = capsys.readouterr().err
        assert code == 3
        assert err.startswith("meshctl: cannot reach the agent at http://127.0.0.1:")
        assert err.count("\n") == 1 and "Traceback" not in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--ssh", "status"]) == 2
    assert capsys.readouterr().err == "meshctl: --ssh needs --node HOST (or the fleet command)\n"
    with pytest.raises(SystemExit) as exc:
        ctl.main(["events", "--since", "soon"])
    assert exc.value.code == 2


def test_local_api_from_the_agent_config(tmp_path: Path) -> None:
    from mesh_agent.ctl.client import local_api_url

    cfg = tmp_path / "agent.yml"
    cfg.write_text("node_name: a\nnode_address: 10.77.0.1\n"
                   "api_listen: ['10.20.0.11:9200', '127.0.0.1:9201']\n")
    assert local_api_url(cfg) == "http://127.0.0.1:9201"
    # Unreadable (root:mesh-agent 0640 for an operator): the agent's own default.
    assert local_api_url(tmp_path / "missing.yml") == "http://127.0.0.1:9105"


def test_over_ssh_the_node_answers_in_json(live: Live, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for ssh: runs the remote command line with this Python, against the live API.
    fake = tmp_path / "fake_ssh.py"
    fake.write_text(
        "import shlex, subprocess, sys\n"
        f"open({str(tmp_path / 'ssh.log')!r}, 'a').write(' '.join(sys.argv[1:-1]) + '\\n')\n"
        "host, remote = sys.argv[-2], shlex.split(sys.argv[-1])\n"
        "if host == 'unreachable': sys.exit(255)\n"
        "assert remote[:2] == ['meshctl', '--json'], remote\n"
        f"cmd = [sys.executable, '-m', 'mesh_agent.ctl.main', '--api', {live.url!r}]\n"
        "sys.exit(subprocess.call(cmd + remote[1:]))\n")
    monkeypatch.setenv("MESHCTL_SSH", f"{sys.executable} {fake}")
    out = io.StringIO()
    assert ctl.main(["--node", "n1", "--ssh", "routes", "b"], out=out) == 0
    assert "primary      a -> b  (next hop b, cost 1.0)" in out.getvalue()
    out = io.StringIO()
    assert ctl.main(["--node", "n1", "--ssh", "events", "--since", "1h"], out=out) == 0
    assert len(out.getvalue().splitlines()) == 2
    out = io.StringIO()
    assert ctl.main(["--node", "n1", "--ssh", "routes", "nowhere"], out=out) == 1
    assert out.getvalue().strip() == "no path to nowhere"
    assert ctl.main(["--node", "unreachable", "--ssh", "status"], out=io.StringIO()) == 3
    # The fleet over ssh: one node answers, one does not; each reached as Ansible does.
    monkeypatch.setattr(fleet, "inventory_nodes", lambda inventory, group: fleet.FleetInventory(
        {"a": "10.9.0.1", "b": "10.9.0.2"}, None,
        {"a": ["-l", "meshadmin", "-p", "2222", "n1"], "b": ["unreachable"]}))
    out = io.StringIO()
    assert ctl.main(["--ssh", "fleet", "-i", "inv", "--cert-warn", "1h"], out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:2] == ["a", "yes"], out.getvalue()
    assert lines[2].split()[:2] == ["b", "no"] and lines[2].endswith("ssh unreachable: exit 255")
    assert "-l meshadmin -p 2222 n1" in (tmp_path / "ssh.log").read_text().splitlines()


def test_command_argv_drops_global_options() -> None:
    assert ctl.command_argv(["--node", "status", "--ssh", "--json", "events", "--since", "1h"]) \
        == ["events", "--since", "1h"]
    assert ctl.command_argv(["--port=9200", "routes", "b"]) == ["routes", "b"]


# -- fleet: the pure aggregation, and one run against the live agent ------------------------
def test_fleet_nodes_of_an_inventory_listing() -> None:
    listing: dict[str, Any] = {
        "_meta": {"hostvars": {"n1": {"ansible_host": "10.0.0.1", "mesh_mgmt_address": "10.9.0.1"},
                               "n2": {"ansible_host": "10.0.0.2"}, "n3": {}, "mon": {}}},
        "all": {"children": ["mesh_nodes", "monitor"]},
        "mesh_nodes": {"hosts": ["n2", "n1"], "children": ["gateways"]},
        "gateways": {"hosts": ["n3", "n1"]},
        "monitor": {"hosts": ["mon"]},
    }
    assert fleet.nodes_of(listing, "mesh_nodes") == {"n1": "10.9.0.1", "n2": "10.0.0.2",
                                                     "n3": "n3"}
    with pytest.raises(fleet.InventoryError):
        fleet.nodes_of(listing, "nobody")
    listing["_meta"]["hostvars"]["n1"].update(ansible_user="meshadmin", ansible_port=2222)
    assert fleet.ssh_targets(listing, fleet.nodes_of(listing, "mesh_nodes")) == {
        "n1": ["-l", "meshadmin", "-p", "2222", "10.0.0.1"], "n2": ["10.0.0.2"], "n3": ["n3"]}


def test_fleet_rows_count_unreachable_as_unhealthy(live: Live) -> None:
    good = json.loads(live.run("--json", "status")[1])
    # The test CA issues one-day certificates: a two-day warning flags them. (Not the default,
    # a day: cert_seconds_left is rounded to 0.1 s and, read within 0.05 s of a whole second
    # after issue, equals a day exactly, which the default does not flag.)
    assert fleet.fleet_rows({"a": good}, cert_warn_s=2 * 86400.0)[0]["problems"][0].startswith(
        "certificate expires in")
    expiring = {**good, "node": "c", "cert_seconds_left": 1800.0}
    rows = fleet.fleet_rows({"b-node": "cannot reach the agent at http://10.0.0.2:9105: refused",
                             "a": good, "c": expiring}, cert_warn_s=3600.0)
    assert [r["node"] for r in rows] == ["a", "b-node", "c"]
    assert [r["healthy"] for r in rows] == [True, False, False]
    assert rows[2]["problems"] == ["certificate expires in 30m00s"]
    assert fleet.fleet_summary(rows) == {"nodes": 3, "healthy": 1, "unreachable": 1,
                                         "missing_neighbours": 0}
    text = table(fleet.FLEET_HEADERS, fleet.fleet_table_rows(rows)).splitlines()
    assert text[1].split()[:7] == ["a", "yes", "yes", "observe", "1", "1", "0/1"]
    assert text[2].split()[:3] == ["b-node", "no", "-"] and text[2].endswith("refused")


def test_fleet_command(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    port = live.url.rsplit(":", 1)[1]
    # a answers on 127.0.0.1; nothing listens on 127.0.0.2 (loopback too).
    monkeypatch.setattr(fleet, "inventory_nodes", lambda inventory, group: fleet.FleetInventory(
        {"a": "127.0.0.1", "gone": "127.0.0.2"}))
    out = io.StringIO()
    assert ctl.main(["--port", port, "fleet", "-i", "inv", "--cert-warn", "1h"], out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["NODE", "HEALTHY", "READY"]
    assert lines[1].split()[:2] == ["a", "yes"] and lines[2].split()[:2] == ["gone", "no"]
    assert lines[-2] == "1/2 nodes healthy, 1 unreachable"
    assert lines[-1] == "expected neighbours: not checked (no mesh_links in the inventory)"
    out = io.StringIO()
    ctl.main(["--json", "--port", port, "fleet", "-i", "inv", "--cert-warn", "1h"], out=out)
    data = json.loads(out.getvalue())
    assert data["summary"] == {"nodes": 2, "healthy": 1, "unreachable": 1,
                               "missing_neighbours": 0}
    assert data["neighbours_checked"] is False


def test_fleet_status_names_a_missing_expected_neighbour(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    port = live.url.rsplit(":", 1)[1]
    inventory = fleet.FleetInventory({"a": "127.0.0.1"}, {"a": ["b"]})
    monkeypatch.setattr(fleet, "inventory_nodes", lambda inventory_, group: inventory)
    argv = ["--port", port, "fleet", "status", "-i", "inv", "--cert-warn", "1h"]
    out = io.StringIO()
    assert ctl.main(argv, out=out) == 0, out.getvalue()
    assert out.getvalue().splitlines()[-1] == "1/1 nodes healthy, 0 unreachable"
    # The inventory's links also expect c, which a does not see.
    inventory = fleet.FleetInventory({"a": "127.0.0.1"}, {"a": ["b", "c"]})
    out = io.StringIO()
    assert ctl.main(argv, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:2] == ["a", "no"]
    assert lines[1].endswith("expected neighbours missing: c")
    assert lines[-1] == "missing (expected by the inventory): a has no c"
    out = io.StringIO()
    assert ctl.main(["--json", *argv], out=out) == 1
    data = json.loads(out.getvalue())
    assert data["neighbours_checked"] is True
    assert data["summary"]["missing_neighbours"] == 1
    assert data["nodes"][0]["expected_missing"] == ["c"] and not data["nodes"][0]["healthy"]


def test_expected_neighbours_from_the_inventory_links() -> None:
    listing: dict[str, Any] = {"_meta": {"hostvars": {
        "n1": {"mesh_links": [{"ifname": "mesh0", "peer": "n2"},
                              {"ifname": "mesh1", "peer": "n3"}]},
        "n2": {"mesh_links": [{"ifname": "mesh0", "peer": "n1"}]},
        "n3": {}}}}
    nodes = {"n1": "n1", "n2": "n2", "n3": "n3"}
    assert fleet.expected_neighbours(listing, nodes) == {"n1": ["n2", "n3"], "n2": ["n1"]}
    # The starter and example inventories describe no links: nothing is expected.
    assert fleet.expected_neighbours({"_meta": {"hostvars": {"n1": {}}}}, nodes) is None


def test_durations() -> None:
    assert [duration(x) for x in (0.0004, 0.85, 42, 312, 11040, 525600)] == [
        "0.4ms", "850ms", "42s", "5m12s", "3h04m", "6d02h"]
    assert [parse_duration(t) for t in ("90", "30s", "15m", "1h", "2d")] == [
        90, 30, 900, 3600, 172800]
    with pytest.raises(ValueError):
        parse_duration("-1h")


def test_fleet_finds_ansible_inventory_beside_its_python(tmp_path, monkeypatch) -> None:
    """`.venv/bin/meshctl fleet` with the venv not on PATH (the README's command) uses the
    venv's own ansible-inventory."""
    import shutil
    import sys

    from mesh_agent.ctl import fleet

    (tmp_path / "ansible-inventory").write_text("#!/bin/sh\n")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert fleet.ansible_inventory() == str(tmp_path / "ansible-inventory")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "elsewhere" / "python3"))
    assert fleet.ansible_inventory() == "ansible-inventory"  # the error names it


# -- meshctl lease check: the provider the agent uses, against a real etcd ---------------
def lease_config(tmp_path: Path, endpoints: list[str], ttl_s: int = 2) -> Path:
    cfg = tmp_path / "agent.yml"
    cfg.write_text(json.dumps({"node_name": "a", "node_address": "10.77.0.1",
                               "mapek": {"lease": {"endpoints": endpoints, "ttl_s": ttl_s}}}))
    return cfg


def lease_check(live: Live, cfg: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    code, out = live.run("--config", str(cfg), "--json", "lease", "check", *argv)
    return code, json.loads(out)


def test_lease_check_takes_checks_and_hands_back_a_real_lease(live: Live, tmp_path: Path) -> None:
    import shutil

    from meshcore_testkit.etcd import EtcdCluster

    if shutil.which("etcd") is None:
        pytest.skip("needs etcd (Debian package etcd-server)")
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.start()
    try:
        cfg = lease_config(tmp_path, cluster.endpoints)
        code, first = lease_check(live, cfg)
        assert code == 0, first
        # The neighbourhood is the running agent's LSDB: a and its neighbour b.
        assert (first["fleet"], first["cap"], first["neighbourhood"]) == (2, 1, ["a", "b"])
        assert first["granted"] and first["still_held"] and first["released"], first
        assert first["token"] > 0 and first["attempts"] == 1 and first["refusal"] is None
        assert first["endpoints"] == cluster.endpoints
        # Handed back: the next one is granted at once, with a larger fencing token.
        code, kept = lease_check(live, cfg, "--keep")
        assert code == 0 and kept["token"] > first["token"] and not kept["released"], kept
        # Kept (as a dead holder's would be): refused, naming the holder, until its TTL.
        code, refused = lease_check(live, cfg)
        assert code == 1 and refused["refusal"] == {"reason": "neighbourhood", "detail": "a"}
        code, waited = lease_check(live, cfg, "--wait", "10")
        assert code == 0 and waited["token"] > kept["token"], waited
        assert waited["attempts"] > 1 and waited["waited_s"] <= 2 + 1.5, waited
        # The human form: one line of verdict, one of context.
        code, text = live.run("--config", str(cfg), "lease", "check")
        assert code == 0 and text.startswith("a: granted, fencing token "), text
        assert "handed back" in text and "fleet of 2, cap 1, 2 nodes within 2 hops" in text
        # No quorum: refused with each endpoint's error, exit 1.
        cluster.stop_member(1)
        cluster.stop_member(2)
        code, noq = lease_check(live, lease_config(tmp_path, cluster.endpoints, 30))
        assert code == 1 and noq["refusal"]["reason"] == "no_quorum", noq
        assert "ConnectionFailedError" in noq["refusal"]["detail"]
    finally:
        cluster.close()


def test_lease_check_without_endpoints_or_agent_says_why(
        live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = live.run("--config", str(lease_config(tmp_path, [])), "lease", "check")
    assert code == 1 and out == ""
    assert "no lease service configured" in capsys.readouterr().err
    cfg = lease_config(tmp_path, ["http://127.0.0.1:1"])
    code = ctl.main(["--api", f"http://127.0.0.1:{closed_port()}", "--config", str(cfg),
                     "lease", "check"], out=io.StringIO())
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("meshctl: the neighbourhood comes from the running agent")
    assert ctl.main(["--node", "n2", "lease", "check"]) == 2
    assert "run it there (ssh NODE sudo meshctl lease ...)" in capsys.readouterr().err


def test_lease_check_sequence_on_a_fake_clock() -> None:
    """acquire (again while refused, within --wait), hold, validate, release: in order."""
    import networkx as nx

    from mesh_agent.ctl.lease import check
    from mesh_agent.mapek.lease import Refusal
    from mesh_agent.mapek.safety import Lease

    t = [0.0]
    calls: list[str] = []

    class Provider:
        name, blocking = "fake", True

        def acquire(self, holder: str, action: str, ttl_s: float, now: float) -> Any:
            calls.append(f"acquire@{now:g}")
            if now < 2:
                return Refusal("fleet_cap", "slot 0: z")
            return Lease(7, holder, now + ttl_s, 99)

        def release(self, lease: Lease) -> None:
            calls.append(f"release:{lease.lease_id}")

        def validate(self, lease: Lease, now: float) -> bool:
            calls.append(f"validate@{now:g}")
            return now < lease.expires_at

    def sleep(s: float) -> None:
        t[0] += s

    g = nx.path_graph(["a", "b", "c", "d"])
    r = check(Provider(), "a", g, ttl_s=30, cap_pct=5.0, hold_s=3, wait_s=5,
              clock=lambda: t[0], sleep=sleep)
    assert calls == ["acquire@0", "acquire@0.5", "acquire@1", "acquire@1.5", "acquire@2",
                     "validate@5", "release:99"]
    assert (r["granted"], r["token"], r["attempts"], r["waited_s"]) == (True, 7, 5, 2.0)
    assert (r["neighbourhood"], r["fleet"], r["cap"], r["held_after_s"]) == (
        ["a", "b", "c"], 4, 1, 3.0)
    calls.clear()
    t[0] = 0.0
    r = check(Provider(), "a", g, ttl_s=30, cap_pct=5.0, wait_s=1, clock=lambda: t[0],
              sleep=sleep)
    assert not r["granted"] and r["refusal"] == {"reason": "fleet_cap", "detail": "slot 0: z"}
    assert calls == ["acquire@0", "acquire@0.5", "acquire@1"]  # none past --wait
