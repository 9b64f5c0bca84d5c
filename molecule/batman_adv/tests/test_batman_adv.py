"""Real state after the batman_adv role, as far as this machine allows.

The kernel here has no batman-adv and there is no radio, so bat0 itself is
never created. What is checked: every rendered file parses and carries the
chosen settings; systemd-networkd 252 itself loads the files without one
unknown key; the units pass `systemd-analyze verify`; wpa_supplicant parses its
mesh configuration; and networkd really builds the LAN bridge with its port.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner

testinfra_hosts = [
    f"podman://{name}"
    for name in testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    ).get_hosts("all")
]

NETDIR = "/etc/systemd/network"
# Keys this role may write, per section, from systemd.netdev(5) and
# systemd.network(5) of systemd 252 (bookworm). test_allow_list_matches_man_page
# checks them against the controller's man pages when those are installed.
ALLOWED = {
    "Match": {"Name"},
    "NetDev": {"Name", "Kind", "MTUBytes"},
    "BatmanAdvanced": {
        "GatewayMode", "Aggregation", "BridgeLoopAvoidance", "DistributedArpTable",
        "Fragmentation", "HopPenalty", "OriginatorIntervalSec", "GatewayBandwidthDown",
        "GatewayBandwidthUp", "RoutingAlgorithm",
    },
    "Link": {"MTUBytes", "RequiredForOnline"},
    "Network": {
        "BatmanAdvanced", "Bridge", "Address", "DHCP", "LinkLocalAddressing",
        "IPv6AcceptRA", "ConfigureWithoutCarrier",
    },
}
MAN_PAGES = {
    "systemd.netdev": ("NetDev", "BatmanAdvanced", "Match"),
    "systemd.network": ("Network", "Link", "Match"),
}


def parse_ini(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; networkd allows repeated keys."""
    entries, section = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def ini(host, path: str) -> dict[str, dict[str, list[str]]]:
    f = host.file(path)
    assert f.exists, path
    assert f.user == "root" and f.mode == 0o644, path
    out: dict[str, dict[str, list[str]]] = {}
    for section, key, value in parse_ini(f.content_string):
        assert key in ALLOWED.get(section, set()), f"{path}: [{section}] {key} not allowed"
        out.setdefault(section, {}).setdefault(key, []).append(value)
    return out


def test_packages_installed(host):
    for pkg in ("batctl", "wpasupplicant", "iw"):
        assert host.package(pkg).is_installed, pkg
    assert host.run("batctl -v").stdout.startswith("batctl debian-2023")


def test_module_loads_on_boot(host):
    conf = host.file("/etc/modules-load.d/batman-adv.conf")
    lines = [ln for ln in conf.content_string.splitlines() if ln and not ln.startswith("#")]
    assert lines == ["batman-adv"]


def test_bat0_netdev_carries_the_settings(host):
    netdev = ini(host, f"{NETDIR}/50-meshcore-bat0.netdev")
    assert netdev["NetDev"] == {"Name": ["bat0"], "Kind": ["batadv"], "MTUBytes": ["1500"]}
    assert netdev["BatmanAdvanced"] == {
        "RoutingAlgorithm": ["batman-v"],
        "OriginatorIntervalSec": ["2000ms"],
        "HopPenalty": ["40"],
        "GatewayMode": ["client"],
        "BridgeLoopAvoidance": ["yes"],
        "DistributedArpTable": ["no"],
        "Fragmentation": ["yes"],
        "Aggregation": ["yes"],
    }


def test_hard_interfaces_join_bat0_with_room_for_the_header(host):
    for name in ("wlan0", "meshwire0"):
        net = ini(host, f"{NETDIR}/50-meshcore-hardif-{name}.network")
        assert net["Match"] == {"Name": [name]}
        assert net["Network"]["BatmanAdvanced"] == ["bat0"]
        assert net["Link"]["MTUBytes"] == ["1532"]  # 1500 LAN + 32 batman-adv


def test_bridge_from_bat0_to_the_lan(host):
    assert ini(host, f"{NETDIR}/50-meshcore-bat0.network")["Network"]["Bridge"] == ["br-lan"]
    assert ini(host, f"{NETDIR}/50-meshcore-br-lan.netdev")["NetDev"]["Kind"] == ["bridge"]
    # The node's address is per node: a drop-in beside the image-wide network file.
    assert ini(host, f"{NETDIR}/50-meshcore-br-lan.network.d/50-meshcore-address.conf")[
        "Network"]["Address"] == ["192.0.2.1/24"]
    assert "Address" not in ini(host, f"{NETDIR}/50-meshcore-br-lan.network")["Network"]
    assert ini(host, f"{NETDIR}/50-meshcore-lan-lan0.network")["Network"]["Bridge"] == ["br-lan"]
    names = sorted(host.file(NETDIR).listdir())
    assert names == sorted([
        "50-meshcore-bat0.netdev", "50-meshcore-bat0.network",
        "50-meshcore-hardif-wlan0.network", "50-meshcore-hardif-meshwire0.network",
        "50-meshcore-br-lan.netdev", "50-meshcore-br-lan.network",
        "50-meshcore-br-lan.network.d", "50-meshcore-lan-lan0.network",
    ])


def test_networkd_loads_every_file_without_complaint(host):
    """networkd 252 itself parsed the files: no unknown key, no invalid value."""
    assert host.service("systemd-networkd").is_running
    assert host.service("systemd-networkd").is_enabled
    log = host.check_output("journalctl -b -u systemd-networkd --no-pager -o cat")
    bad = [ln for ln in log.splitlines()
           if "50-meshcore" in ln and re.search(r"[Uu]nknown|[Ii]nvalid|ignoring|Failed to parse", ln)]
    assert bad == [], bad


def test_networkd_builds_the_bridge_for_real(host):
    """Bridges exist in this kernel: br-lan is created, addressed and gets its port."""
    out = host.check_output("ip -o addr show dev br-lan")
    assert "192.0.2.1/24" in out
    assert host.check_output("cat /sys/class/net/br-lan/mtu") == "1500"
    assert host.check_output("basename $(readlink /sys/class/net/lan0/master)") == "br-lan"


def test_kernel_lacks_batman_adv_so_bat0_is_absent(host):
    """Documents the limit, so a run on a batman-adv kernel shows up here."""
    if host.file("/sys/module/batman_adv").exists:
        pytest.fail("batman-adv is loaded: extend this scenario to check bat0 itself")
    assert not host.file("/sys/class/net/bat0").exists


def test_wpa_supplicant_mesh_config(host):
    conf = host.file("/etc/wpa_supplicant/wpa_supplicant-nl80211-wlan0.conf")
    assert conf.mode == 0o600
    text = conf.content_string
    for line in ('ssid="mc-mesh"', "mode=5", "frequency=5180", "mesh_fwding=0",
                 "key_mgmt=SAE", 'sae_password="molecule-only-password"', "country=DE"):
        assert line in text, line
    # wpa_supplicant reads the whole file before it touches the driver: a
    # config error shows as a parse failure, a good config fails only at the
    # (absent) nl80211 radio.
    run = host.run("timeout 10 wpa_supplicant -Dnl80211 -i wlan0 -c "
                   "/etc/wpa_supplicant/wpa_supplicant-nl80211-wlan0.conf")
    assert run.rc != 0
    assert "Failed to read or parse configuration" not in run.stderr + run.stdout
    assert not re.search(r"^Line \d+:", run.stderr + run.stdout, re.MULTILINE), run.stderr


def test_units_pass_systemd_analyze_verify(host):
    for unit in ("/etc/systemd/system/batman-adv-gw-client.service",
                 "/lib/systemd/system/wpa_supplicant-nl80211@wlan0.service",
                 "/lib/systemd/system/systemd-networkd.service"):
        # --man=no: the minbase image carries no man pages for Documentation= to point at.
        run = host.run(f"systemd-analyze verify --man=no {unit}")
        assert run.rc == 0, f"{unit}: {run.stdout}{run.stderr}"


def test_units_enabled(host):
    # Wanted by the radio's device, so a card without that radio boots without waiting for it.
    wants = host.file("/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/"
                      "wpa_supplicant-nl80211@wlan0.service")
    assert wants.is_symlink
    assert wants.linked_to.endswith("/lib/systemd/system/wpa_supplicant-nl80211@.service")
    assert not host.file(
        "/etc/systemd/system/multi-user.target.wants/wpa_supplicant-nl80211@wlan0.service"
    ).exists
    assert host.file(
        "/etc/systemd/system/sys-subsystem-net-devices-bat0.device.wants/"
        "batman-adv-gw-client.service"
    ).is_symlink
    unit = host.file("/etc/systemd/system/batman-adv-gw-client.service").content_string
    assert "ExecStart=/usr/sbin/batctl meshif bat0 gw_mode client 33" in unit


def test_allow_list_matches_man_page():
    """Every allowed key is documented in the controller's systemd man pages."""
    found = False
    for page, sections in MAN_PAGES.items():
        path = Path(f"/usr/share/man/man5/{page}.5.gz")
        if not path.exists():
            continue
        found = True
        text = gzip.decompress(path.read_bytes()).decode()
        for section in sections:
            for key in ALLOWED[section]:
                assert f"\\fI{key}=" in text, f"{key}= not in {page}(5)"
    if not found:
        pytest.skip("no systemd man pages on this controller to check the allow-list against")
