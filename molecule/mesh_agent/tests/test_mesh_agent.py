"""Real state after the mesh_agent role: unit, identity files, API and metrics."""

from __future__ import annotations

import json
import os
import time

import testinfra.utils.ansible_runner

testinfra_hosts = [
    f"podman://{name}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    ).get_hosts("all")
]


def http(host, path: str) -> tuple[int, str]:
    """GET on the agent's API from inside the container (no curl in the image)."""
    code = (
        "import sys,urllib.request,urllib.error\n"
        "try:\n"
        f"    r=urllib.request.urlopen('http://127.0.0.1:9105{path}',timeout=3)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    for _ in range(60):  # the agent may still be starting after the restart handler
        out = host.run("python3 -c %s", code)
        if out.rc == 0:
            status, _, body = out.stdout.partition("\n")
            return int(status), body
        time.sleep(1)
    raise AssertionError(f"agent API not answering on {path}: {out.stderr}")


def test_unit_is_active_enabled_and_unprivileged(host):
    svc = host.service("mesh-agent")
    assert svc.is_running
    assert svc.is_enabled
    proc = host.process.get(comm="mesh-agent")
    assert proc.user == "meshcore"
    unit = host.file("/etc/systemd/system/mesh-agent.service").content_string
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "LimitNOFILE=1024",
                      "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW\n", "ProtectProc=invisible",
                      "MemoryDenyWriteExecute=yes", "SystemCallFilter=~@privileged @resources"):
        assert hardening in unit
    caps = [ln for ln in unit.splitlines() if ln.startswith(("AmbientCap", "CapabilityBounding"))]
    assert caps and not any("CAP_NET_BIND_SERVICE" in ln for ln in caps), caps
    limits = host.file(f"/proc/{proc.pid}/limits").content_string
    assert any(line.startswith("Max open files") and line.split()[3] == "1024"
               for line in limits.splitlines()), limits


def test_security_exposure(host):
    """systemd-analyze security of the unit as installed (docs/security.md has the figures)."""
    out = host.run("systemd-analyze security --no-pager mesh-agent.service")
    assert out.rc == 0, out.stderr
    last = [ln for ln in out.stdout.splitlines() if "Overall exposure level" in ln][-1]
    exposure = float(last.split(":")[1].split()[0])
    print(f"mesh-agent.service exposure {exposure}")  # shown in the verify log
    assert exposure <= 2.0, out.stdout


def test_release_layout(host):
    current = host.file("/opt/mesh-agent/current")
    assert current.is_symlink
    assert current.linked_to.startswith("/opt/mesh-agent/releases/")
    assert host.file(current.linked_to + "/.meshcore-installed").exists


def test_meshctl_release_lists_the_live_release(host):
    # The role's bundle has no release.json: version and wire version come from its venv.
    out = host.run("meshctl --json release list")
    assert out.rc == 0, out.stderr
    data = json.loads(out.stdout)
    live_id = host.file("/opt/mesh-agent/current").linked_to.split("/")[-2]
    assert data["current"] == live_id
    (live,) = [r for r in data["releases"] if r["current"]]
    assert live["wire_version"] == 2 and live["version"] and not live["verified"]
    assert len(data["releases"]) <= 3  # the live one and mesh_agent_keep_releases (2) others


def test_commit_confirm_unit_is_enabled_and_idle(host):
    """Installed and enabled for reboots, but it runs only while a switch is pending
    (ConditionPathExists); the role's unverified install arms nothing."""
    svc = host.service("mesh-release-confirm.service")
    assert svc.is_enabled and not svc.is_running
    settings = json.loads(host.file("/etc/mesh-agent/release-confirm.json").content_string)
    assert settings["window_s"] == 110.0  # mesh_agent_confirm_window_s's default
    status = json.loads(host.check_output("meshctl --json release confirm-status"))
    assert status["pending"] is None


def test_identity_files_and_modes(host):
    key = host.file("/etc/mesh-agent/pki/node.key")
    assert key.mode == 0o640
    assert key.user == "root"
    assert key.group == "meshcore"
    san = host.run("python3 -c %s", "import ssl;print(ssl._ssl._test_decode_cert("
                   "'/etc/mesh-agent/pki/node.crt')['subjectAltName'])")
    assert "spiffe://mesh.lab/node/" in san.stdout
    assert "('IP Address', '10.77.0.1')" in san.stdout  # the node address, bound to the identity


def test_config_is_what_the_agent_accepts(host):
    cfg = host.file("/etc/mesh-agent/agent.yml")
    assert cfg.mode == 0o640
    assert "mode: observe" in cfg.content_string
    check = host.run("/opt/mesh-agent/current/bin/mesh-agent check-config "
                     "--config /etc/mesh-agent/agent.yml")
    assert check.rc == 0, check.stderr


def test_healthz_and_metrics(host):
    status, body = http(host, "/healthz")
    assert status == 200
    status, metrics = http(host, "/metrics")
    assert status == 200
    for name in ("meshcore_neighbors_up", "meshcore_adverts_rejected_total",
                 "meshcore_hellos_sent_total"):
        assert name in metrics, name


def test_meshctl_on_the_path_answers_as_an_operator(host):
    # Not root: the config is root:meshcore 0640, so meshctl falls back to the default endpoint.
    out = host.run("su -s /bin/sh nobody -c 'meshctl --json identity'")
    assert out.rc == 0, out.stderr
    assert json.loads(out.stdout)["spiffe_id"].startswith("spiffe://mesh.lab/node/")
    status = host.run("meshctl status")
    assert status.rc in (0, 1), status.stderr  # 1: not ready (yet), still an answer
    assert "mesh-agent" in status.stdout.splitlines()[0]


def test_meshctl_opens_a_maintenance_window_the_agents_user_can_read(host):
    """Root opens the window in the agent's state directory (systemd's StateDirectory,
    0700 meshcore); the agent's own user reads it back the way the loop does; it closes."""
    out = host.run("meshctl --json maintenance start --for 10m --reason molecule")
    assert out.rc == 0, out.stderr
    window = json.loads(out.stdout)
    assert window["open"] and window["until"] - window["since"] == 600, window
    f = host.file("/var/lib/mesh-agent/maintenance.json")
    assert f.exists and f.user == "root" and f.mode == 0o644
    code = ("from pathlib import Path; from mesh_agent.mapek import maintenance; "
            "print(maintenance.read(Path('/var/lib/mesh-agent')).reason)")
    read = host.run("setpriv --reuid meshcore --regid meshcore --clear-groups "
                    "/opt/mesh-agent/current/bin/python -c %s", code)
    assert read.rc == 0 and read.stdout.strip() == "molecule", read.stderr
    assert json.loads(host.check_output("meshctl --json maintenance"))["open"]
    assert json.loads(host.check_output("meshctl --json maintenance end"))["changed"]
    assert not host.file("/var/lib/mesh-agent/maintenance.json").exists
    # Too long: refused, nothing written.
    assert host.run("meshctl maintenance start --for 5h").rc == 1
    assert not host.file("/var/lib/mesh-agent/maintenance.json").exists


def test_agent_runs_hellos_on_the_mesh_interface(host):
    status, body = http(host, "/v1/neighbors")
    assert status == 200
    assert json.loads(body)["node"]


def test_route_protocol_is_named(host):
    assert host.file("/etc/iproute2/rt_protos.d/meshcore.conf").content_string.split() == [
        "77", "meshcore"]


def show(host, *props: str, unit: str = "mesh-agent.service") -> dict[str, str]:
    props_args = " ".join(f"-p {p}" for p in props)
    out = host.check_output(f"systemctl show {unit} {props_args}")
    return dict(line.split("=", 1) for line in out.splitlines())


def test_the_agents_user_may_restart_its_units_and_nothing_else(host):
    """restart_unit's own call (``systemctl restart --no-block``) as the agent's user with
    no new privileges, as in its unit: systemd takes it for an allowlisted unit through
    the role's polkit rule, and refuses every other unit."""
    rule = host.file("/etc/polkit-1/rules.d/60-mesh-agent.rules")
    assert rule.exists and rule.mode == 0o644 and "molecule-dummy.service" in rule.content_string
    host.check_output("printf '[Service]\\nExecStart=/bin/sleep infinity\\n' "
                      "> /run/systemd/system/molecule-dummy.service && systemctl daemon-reload "
                      "&& systemctl start molecule-dummy.service")
    before = show(host, "InvocationID", unit="molecule-dummy.service")["InvocationID"]

    def restart(unit: str) -> str:
        code = ("from mesh_agent.mapek.shell import systemctl_restart; "
                f"print(systemctl_restart({unit!r}))")
        return host.check_output(
            "setpriv --no-new-privs --reuid=meshcore --regid=meshcore --init-groups "
            "/opt/mesh-agent/current/bin/python -c %s", code)

    assert restart("molecule-dummy.service") == "None"
    for _ in range(20):  # --no-block: systemd runs the job after answering
        after = show(host, "InvocationID", unit="molecule-dummy.service")["InvocationID"]
        if after != before:
            break
        time.sleep(0.5)
    assert after != before, "the allowlisted unit was not restarted"
    refused = restart("mesh-release-confirm.service")
    assert "authentication" in refused.lower() or "denied" in refused.lower(), refused
    host.run("systemctl stop molecule-dummy.service")


def test_a_hung_agent_is_restarted_by_the_watchdog(host):
    """Type=notify: the agent said READY=1 and pings the watchdog (5 s in this scenario)
    while it runs; stopped with SIGSTOP, it stops pinging, and systemd kills and restarts
    it. Last in this file: the agent restarts."""
    before = show(host, "Type", "WatchdogUSec", "NotifyAccess", "MainPID", "NRestarts",
                  "StatusText")
    assert before["Type"] == "notify" and before["NotifyAccess"] == "main", before
    assert before["WatchdogUSec"] == "5s", before
    assert before["StatusText"].startswith("observe mode"), before  # sent with READY=1
    pid = int(before["MainPID"])
    time.sleep(12)  # more than two watchdog intervals: a live agent is not restarted
    assert show(host, "MainPID", "NRestarts") == {
        "MainPID": str(pid), "NRestarts": before["NRestarts"]}
    host.check_output(f"kill -STOP {pid}")
    start = time.monotonic()
    while time.monotonic() - start < 60:
        now = show(host, "MainPID", "ActiveState", "NRestarts")
        if now["MainPID"] not in ("0", str(pid)) and now["ActiveState"] == "active":
            break
        time.sleep(0.5)
    else:
        host.run(f"kill -CONT {pid}")
        raise AssertionError(f"the stopped agent was not restarted: {now}")
    restarted_after = time.monotonic() - start
    print(f"watchdog: stopped agent replaced after {restarted_after:.1f} s")  # verify log
    assert int(now["NRestarts"]) == int(before["NRestarts"]) + 1, now
    assert http(host, "/healthz")[0] == 200
    journal = host.run("journalctl -u mesh-agent.service --no-pager -n 200").stdout
    assert "Watchdog timeout" in journal or "watchdog" in journal.lower(), journal[-2000:]


def test_the_loop_reads_a_units_cpu_from_its_cgroup(host):
    """restart_unit picks the busiest allowlisted service by its CPU time (cgroup v2, or its
    processes' on cgroup v1, as in this machine's containers): the
    agent's own reader finds the running agent's and none for a unit that is not running."""
    code = ("import json; from mesh_agent.mapek.shell import unit_cpu_seconds; "
            "print(json.dumps(unit_cpu_seconds(['mesh-agent.service', 'absent.service'])))")
    out = host.check_output("/opt/mesh-agent/current/bin/python -c %s", code)
    used = json.loads(out)
    assert set(used) == {"mesh-agent.service"} and used["mesh-agent.service"] > 0, used
