"""playbooks/rollout.yml over SSH, from an inventory written the way an operator writes
one (README "Three Pis" and "A real fleet", docs/site-config.md), on the container
lab's real containers: the path a fleet takes, where the lab itself reaches its nodes
with community.docker.nsenter.

On a 4-node lab (`make lab NODES=4 TOPOLOGY=grid`), the test starts sshd in every
container (the image has openssh-server, with ssh.service off) with a THROWAWAY ed25519
key made for the run under tmp_path, and writes under tmp_path a fresh inventory:
hosts.yml with mesh_nodes, gateways and monitor, each host's ansible_host its
management address (reachable from this host); group_vars/all/main.yml as the starter's
(ansible.builtin.ssh, here as root with the throwaway key) and host keys checked against
a known_hosts file the test writes from each container's host keys (read with podman
exec, as an operator reads a card's). ansible.cfg checks host keys (molecule's image
scenario turns it off for its throwaway VM; the lab connects through nsenter); the
inventory also sets ansible_ssh_host_key_checking, and the test first shows that a host
missing from known_hosts is refused. Then a good release (the lab's agent bundle
re-packed under a new id and signed with THROWAWAY keys, meshcore_testkit.releases)
rolls through meshcore-rollout (ansible-runner) in two small waves, and rolling it again
changes nothing.

What the inventory takes from the lab's generated one (inventories/lab), and why:
- group_vars/all/site.yml, the lab's site config, as it is: a site is an inventory with
  its site config, and this one describes these containers (veth links, the lab CA);
- per host mesh_node_address (the data-plane probes ping it) and mesh_mgmt_address
  (also ansible_host): the addresses labctl gave the containers;
- the gateways group (labctl's picks, whose etcd and commit-confirm reach targets
  site.yml set up) and the monitor host (the gate asks its Prometheus for alerts).
Left out: the nsenter connection and ansible_nsenter_pid, and everything else of the
lab's inventory. A rollout runs no role but the mesh_agent's staging and verified
install, so neither the lab's role variables (group_vars/all/main.yml: apt refreshes
off, as the containers have no internet; scrape, etcd and Grafana settings), nor its
hello interval, nor mesh_links (read by `meshctl fleet -i` only) are needed.

Ansible really connected over SSH: each node's facts (the wave play's "Gather facts")
carry the SSH_CONNECTION of a session to port 22 of its management address, and every
container's sshd journal has the throwaway key's logins.

Slow (a lab and two rollouts): runs under `make test-full` (test-full-lab).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshcore_testkit.containerlab import LAB_ROLLOUT_VARS, current, lab_up, on_node
from meshcore_testkit.releases import keys_json, lab_release, throwaway_keys
from meshcore_tools import ROOT, rollout
from meshcore_tools.lab.state import INVENTORY

GOOD_ID, GOOD_VERSION = "d" * 16, "90.1.0"
# The lab's site config, which the operator's inventory takes as it is.
LAB_SITE = INVENTORY.parent / "group_vars" / "all" / "site.yml"


@pytest.fixture(scope="module")
def lab4() -> Iterator[None]:
    yield from lab_up(4, "grid")


def throwaway_ssh_key(tmp: Path) -> tuple[Path, str, str]:
    """A THROWAWAY ed25519 key pair for this run only, under *tmp*: (private key file,
    public key line, its SHA256 fingerprint as sshd logs it)."""
    key = tmp / "throwaway-ssh" / "id_ed25519_throwaway"
    key.parent.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                    "meshcore-rollout-ssh-THROWAWAY", "-f", str(key)], check=True, timeout=60)
    pub = key.with_name(key.name + ".pub").read_text().strip()
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True,
                                 text=True, check=True, timeout=60).stdout.split()[1]
    return key, pub, fingerprint


def start_sshd(host: str, pub: str) -> list[str]:
    """Start sshd in *host*'s container with *pub* as root's only authorized key; its
    host public keys ("type base64" lines). ssh-keygen -A makes the host keys it lacks
    (the image ships none; site.yml's base role has made them already)."""
    out = on_node(host, f"""set -e
        ssh-keygen -A >/dev/null
        install -d -m 0700 /root/.ssh
        printf '%s\\n' '{pub}' > /root/.ssh/authorized_keys
        chmod 0600 /root/.ssh/authorized_keys
        systemctl start ssh.service
        systemctl is-active ssh.service >/dev/null
        cat /etc/ssh/ssh_host_*_key.pub""")
    return [" ".join(line.split()[:2]) for line in out.splitlines() if line.strip()]


def stop_sshd(host: str) -> None:
    on_node(host, "systemctl stop ssh.service; rm -f /root/.ssh/authorized_keys")


def operator_hosts(lab: Mapping[str, Any]) -> dict[str, Any]:
    """hosts.yml of an operator's inventory for the lab's containers (*lab*: the lab's
    generated hosts.yml): the groups, and per host where to reach it and its addresses,
    nothing of how the lab connects."""
    groups = lab["all"]["children"]

    def host(hv: Mapping[str, Any]) -> dict[str, Any]:
        keep = {k: hv[k] for k in ("mesh_node_address", "mesh_mgmt_address") if k in hv}
        return {"ansible_host": hv["mesh_mgmt_address"], **keep}

    return {"all": {"children": {
        "mesh_nodes": {"hosts": {n: host(hv) for n, hv in groups["mesh_nodes"]["hosts"].items()}},
        "gateways": {"hosts": dict.fromkeys(groups["gateways"]["hosts"])},
        "monitor": {"hosts": {n: host(hv) for n, hv in groups["monitor"]["hosts"].items()}},
    }}}


def ssh_vars(key: Path, known_hosts: Path) -> dict[str, Any]:
    """group_vars/all/main.yml: as the starter's (SSH, the admin user), here root with
    the throwaway key, and the host keys checked against *known_hosts*."""
    return {"ansible_connection": "ansible.builtin.ssh", "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(key),
            # ansible.cfg turns the check off for the lab and molecule: on for this fleet
            "ansible_ssh_host_key_checking": True,
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} "
                                       "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"}


def write_inventory(out: Path, hosts: Mapping[str, Any], connection: Mapping[str, Any],
                    site: str) -> Path:
    (out / "group_vars" / "all").mkdir(parents=True)
    (out / "hosts.yml").write_text("---\n" + yaml.safe_dump(dict(hosts), sort_keys=False))
    (out / "group_vars" / "all" / "main.yml").write_text(
        "---\n" + yaml.safe_dump(dict(connection), sort_keys=False))
    (out / "group_vars" / "all" / "site.yml").write_text(site)
    return out


def all_hosts(hosts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    groups = hosts["all"]["children"]
    return {**groups["mesh_nodes"]["hosts"], **groups["monitor"]["hosts"]}


def ansible_ping(inventory: Path, host: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("ansible")), "-i", str(inventory), host,
         "-m", "ansible.builtin.ping", *extra], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                          "ANSIBLE_FORCE_COLOR": "0"})


def ssh_sessions(events: list[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per host, the SSH_CONNECTION its "Gather facts" ran in ("client port server
    port"; absent over any other connection)."""
    seen: dict[str, list[str]] = {}
    for ev in events:
        data = ev.get("event_data") or {}
        if ev.get("event") == "runner_on_ok" and data.get("task") == "Gather facts":
            env = ((data.get("res") or {}).get("ansible_facts") or {}).get("ansible_env") or {}
            seen.setdefault(str(data.get("host")), []).append(str(env.get("SSH_CONNECTION")))
    return seen


def test_the_operator_inventory_carries_no_lab_connection() -> None:
    """Without a lab: from a lab inventory as labctl writes it, only addresses and groups
    reach the operator's, and group_vars/all connects over SSH with host keys checked."""
    link = {"ifname": "mesh0", "address": "10.78.0.0", "peer": "node02",
            "peer_address": "10.78.0.1", "cost": 1}
    lab = {"all": {"vars": {"mesh_agent_hello_interval_ms": 50},
                   "hosts": {"localhost": {"ansible_connection": "local"}},
                   "children": {
                       "mesh_nodes": {"hosts": {"node01": {
                           "ansible_host": "meshcore-lab-node01", "mesh_node_address": "10.77.0.1",
                           "mesh_mgmt_address": "10.79.0.11", "ansible_nsenter_pid": 4242,
                           "mesh_links": [link]}}},
                       "gateways": {"hosts": {"node01": None}},
                       "monitor": {"hosts": {"monitor01": {
                           "ansible_host": "meshcore-lab-monitor01", "ansible_nsenter_pid": 4243,
                           "mesh_mgmt_address": "10.79.0.2"}}}}}}
    hosts = operator_hosts(lab)
    assert hosts == {"all": {"children": {
        "mesh_nodes": {"hosts": {"node01": {"ansible_host": "10.79.0.11",
                                            "mesh_node_address": "10.77.0.1",
                                            "mesh_mgmt_address": "10.79.0.11"}}},
        "gateways": {"hosts": {"node01": None}},
        "monitor": {"hosts": {"monitor01": {"ansible_host": "10.79.0.2",
                                            "mesh_mgmt_address": "10.79.0.2"}}}}}}
    conn = ssh_vars(Path("/k/id"), Path("/k/known_hosts"))
    assert conn["ansible_connection"] == "ansible.builtin.ssh"
    assert conn["ansible_ssh_host_key_checking"] is True
    assert "StrictHostKeyChecking=yes" in conn["ansible_ssh_common_args"]
    assert "nsenter" not in json.dumps([hosts, conn])
    # the lab's connection lives in its group_vars, which the operator's does not copy
    lab_vars = yaml.safe_load((INVENTORY.parent / "group_vars/all/main.yml").read_text())
    assert lab_vars["ansible_connection"] == "community.docker.nsenter"
    assert "site" in yaml.safe_load(LAB_SITE.read_text())


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (podman, netns)")
@pytest.mark.skipif(shutil.which("podman") is None, reason="the lab needs podman")
def test_good_release_rolls_out_over_ssh_from_a_fresh_inventory(
        lab4: None, tmp_path: Path) -> None:
    t0 = time.monotonic()
    lab = yaml.safe_load(INVENTORY.read_text())
    hosts = operator_hosts(lab)
    nodes = list(hosts["all"]["children"]["mesh_nodes"]["hosts"])
    assert len(nodes) == 4
    key, pub, fingerprint = throwaway_ssh_key(tmp_path)
    reach = all_hosts(hosts)
    known = tmp_path / "known_hosts"
    # the image's sshd is off on every lab container until a test starts it
    for h in reach:
        state = on_node(h, "systemctl is-enabled ssh.service ssh.socket; "
                           "systemctl is-active ssh.service ssh.socket; true").split()
        assert state == ["disabled", "disabled", "inactive", "inactive"], (h, state)
    try:
        lines = [f"{hv['ansible_host']} {k}" for h, hv in reach.items()
                 for k in start_sshd(h, pub)]
        known.write_text("\n".join(lines) + "\n")
        inventory = write_inventory(tmp_path / "inventory", hosts, ssh_vars(key, known),
                                    LAB_SITE.read_text())
        sshd_s = time.monotonic() - t0

        # host keys are checked: a node missing from known_hosts is refused
        (tmp_path / "known_hosts.empty").write_text("")
        empty = ssh_vars(key, tmp_path / "known_hosts.empty")["ansible_ssh_common_args"]
        refused = ansible_ping(inventory, nodes[0], "-e",
                               json.dumps({"ansible_ssh_common_args": empty}))
        assert refused.returncode != 0, refused.stdout
        assert "Host key verification failed" in refused.stdout + refused.stderr, refused.stdout
        ping = ansible_ping(inventory, "all")
        assert ping.returncode == 0, ping.stdout[-3000:] + ping.stderr[-2000:]

        keys = throwaway_keys()
        keys_file = tmp_path / "release-keys.json"
        keys_file.write_text(keys_json(keys))
        good = lab_release(tmp_path, GOOD_ID, GOOD_VERSION, keys)
        events: list[Mapping[str, Any]] = []
        t1 = time.monotonic()
        rc, report = rollout.run(inventory, good, keys_file, extravars=LAB_ROLLOUT_VARS,
                                 hosts_all=nodes, on_event=events.append)
        rollout_s = time.monotonic() - t1
        (tmp_path / "good.json").write_text(json.dumps(report, indent=2))
        assert rc == 0 and report["status"] == "completed", json.dumps(report, indent=2)[-4000:]
        assert [len(w["hosts"]) for w in report["waves"]] == [1, 3]
        assert all(w["status"] == "passed" for w in report["waves"]), report["waves"]
        assert all(w["gate"]["probes_checked"] > 0 for w in report["waves"]), report["waves"]
        assert report["target"] == GOOD_ID
        assert all(report["hosts"][n]["status"] == "upgraded" for n in nodes), report["hosts"]
        assert all(current(n) == GOOD_ID for n in nodes)
        # over SSH: each node's facts came from a session to port 22 of its address
        sessions = ssh_sessions(events)
        for n in nodes:
            addr = reach[n]["ansible_host"]
            assert sessions.get(n), (n, sessions)
            assert all(s.split()[2:] == [addr, "22"] for s in sessions[n]), (n, sessions[n])

        # the same release again: nothing to switch, and still completed
        t2 = time.monotonic()
        rc2, again = rollout.run(inventory, good, keys_file, extravars=LAB_ROLLOUT_VARS,
                                 hosts_all=nodes)
        again_s = time.monotonic() - t2
        (tmp_path / "again.json").write_text(json.dumps(again, indent=2))
        assert rc2 == 0 and again["status"] == "completed", json.dumps(again, indent=2)[-4000:]
        assert all(again["hosts"][n]["before"] == GOOD_ID for n in nodes), again["hosts"]
        assert all(again["hosts"][n]["switch"]["changed"] is False for n in nodes), again["hosts"]
        assert again["stats"]["changed"] == {}, again["stats"]  # no task changed anything
        assert all(current(n) == GOOD_ID for n in nodes)
    finally:
        logins = {}
        for h in reach:
            logins[h] = int(on_node(h, "journalctl -u ssh.service -o cat --no-pager | grep -c "
                                       f"'Accepted publickey for root .* {fingerprint}$' || true")
                            .strip() or 0)
            stop_sshd(h)
    # and sshd let the throwaway key in, on every container
    assert all(n > 0 for n in logins.values()), logins
    print(json.dumps({"sshd_setup_s": round(sshd_s, 1), "rollout_s": round(rollout_s, 1),
                      "waves_s": [w["duration_s"] for w in report["waves"]],
                      "stage_s": report["stage"]["duration_s"],
                      "changed_per_host": report["stats"]["changed"],
                      "again_s": round(again_s, 1), "ssh_logins": logins}))
