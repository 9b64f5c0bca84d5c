"""Real state after the base role: user, sysctls, drop-ins, handlers."""

from __future__ import annotations

import os

import pytest
import testinfra.utils.ansible_runner

# The podman backend execs straight into the container; the default ansible
# backend spawns an ansible run per check and made verify take minutes.
testinfra_hosts = [
    f"podman://{name}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    ).get_hosts("all")
]


def test_service_user_is_a_nologin_system_user(host):
    user = host.user("meshcore")
    assert user.exists
    assert user.uid < 1000
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == "/var/lib/meshcore"
    assert user.group == "meshcore"
    home = host.file("/var/lib/meshcore")
    assert home.is_directory
    assert home.user == "meshcore"
    assert home.group == "meshcore"
    assert home.mode == 0o750


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("net.ipv4.ip_forward", 1),
        ("net.ipv6.conf.all.forwarding", 1),
        ("net.ipv4.conf.all.rp_filter", 2),
        ("net.ipv4.conf.default.rp_filter", 2),
    ],
)
def test_sysctl_live_and_persisted(host, key, value):
    assert host.sysctl(key) == value
    conf = host.file("/etc/sysctl.d/60-meshcore.conf")
    assert conf.mode == 0o644
    assert conf.user == "root"
    assert f"{key}={value}" in conf.content_string


def test_hostname_file_written_in_container(host):
    # The live name belongs to podman; the role only writes the file there.
    assert host.file("/etc/hostname").content_string.strip() == "meshbase01"


@pytest.mark.parametrize(
    "package", ["ca-certificates", "iproute2", "iputils-ping", "nftables", "procps", "python3-apt"]
)
def test_base_packages_installed(host, package):
    assert host.package(package).is_installed


def test_sshd_dropin_hardened_and_reloaded(host):
    dropin = host.file("/etc/ssh/sshd_config.d/60-meshcore.conf")
    assert dropin.user == "root"
    assert dropin.mode == 0o644
    content = dropin.content_string
    assert content.startswith("#")  # ansible_managed header
    for line in (
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "X11Forwarding no",
        "MaxAuthTries 3",
    ):
        assert line in content.splitlines()
    # The handler reloaded ssh.service exactly once (first converge only;
    # the idempotence run must not notify it again).
    reloads = host.file("/run/ssh-stub-reloads")
    assert reloads.exists
    assert len(reloads.content_string.split()) == 1


def test_journald_capped_and_running(host):
    conf = host.file("/etc/systemd/journald.conf.d/60-meshcore.conf")
    assert conf.mode == 0o644
    assert "SystemMaxUse=64M" in conf.content_string
    assert "Storage=volatile" in conf.content_string
    journald = host.service("systemd-journald")
    assert journald.is_running
    # The handler restarted journald after the drop-in was written.
    started = host.check_output(
        "systemctl show systemd-journald -p ActiveEnterTimestamp --timestamp=unix --value"
    )
    assert int(started.lstrip("@")) >= int(conf.mtime.timestamp())
