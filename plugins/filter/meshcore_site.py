"""Site config rules that an argument spec cannot express, as Ansible filters.

playbooks/site-config/check.yml validates the shape of ``site`` against
playbooks/site-config/spec.yml (ansible.builtin.validate_argument_spec), then
calls these on the controller before any task of site.yml, image.yml or
flash.yml touches anything:

* ``meshcore_site_errors(site, hostvars, groups)``: cross-field rules (a
  radio for wireless interfaces, a batman section for the batman backend,
  every mesh node's address unique and inside the mesh prefix, time servers
  and the monitoring host present in the inventory...).
* ``meshcore_site_conflicts(derived, hostvars, host)``: role variables that the
  site config owns (playbooks/site-config/role-vars.yml) but the inventory or
  the command line also sets, to another value.
* ``meshcore_time_sources(servers, hostvars, groups, host)``: the addresses a
  host takes its time from (the site's time servers, not itself).
* ``meshcore_site_key(inventory_dir)``: a hash of the inventory's group_vars
  (the site config and every fleet-wide role variable), the key of the image's
  roles stage and the proof, in its manifest, of which site an image is for.

Each returns plain data and raises nothing on bad input: every problem becomes
one message that names the key, so the operator sees all of them at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
# Wi-Fi channel centre frequencies (MHz): 2.4 GHz channels 1-14, 5 GHz, 6 GHz.
_BANDS = ((2412, 2484), (5160, 5885), (5955, 7115))


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _address(value: Any) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(str(value).removesuffix("/32"))
    except ValueError:
        return None


def site_errors(site: Any, hostvars: Mapping[str, Any], groups: Mapping[str, list[str]]) -> list[str]:
    """Every cross-field problem of *site* against the inventory, one message each."""
    inventory = {
        host: {
            "groups": [g for g, members in groups.items() if host in members and g != "all"],
            "mesh_node_address": hostvars[host].get("mesh_node_address") if host in hostvars else None,
        }
        for host in groups.get("all", [])
    }
    if not isinstance(site, Mapping):
        return ["site: missing (inventories/<site>/group_vars/all/site.yml)"]
    errors: list[str] = []
    name = _get(site, "name")
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        errors.append(f"site.name: {name!r} must be lower-case letters, digits and dashes (at most 32)")

    mesh = _get(site, "mesh") or {}
    backend = _get(mesh, "backend")
    interfaces = _get(mesh, "interfaces") or []
    names = [str(_get(i, "name")) for i in interfaces]
    for ifname in names:
        if not _IFNAME.match(ifname) or ifname == "lo":
            errors.append(f"site.mesh.interfaces: {ifname!r} is not a usable interface name")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        errors.append(f"site.mesh.interfaces: {', '.join(dupes)} listed twice")
    if not interfaces and not _get(mesh, "interface_prefix"):
        errors.append("site.mesh.interfaces: empty (list the mesh interfaces, or set site.mesh.interface_prefix)")
    wireless = [n for n, i in zip(names, interfaces, strict=True) if _get(i, "wireless") is True]
    radio = _get(mesh, "radio")
    if wireless and not isinstance(radio, Mapping):
        errors.append(f"site.mesh.radio: required, {', '.join(wireless)} is wireless")
    if isinstance(radio, Mapping):
        freq = radio.get("frequency")
        if not isinstance(freq, int) or not any(lo <= freq <= hi for lo, hi in _BANDS):
            errors.append(f"site.mesh.radio.frequency: {freq!r} MHz is not a Wi-Fi channel")
        if not _COUNTRY.match(str(radio.get("country", ""))):
            errors.append(f"site.mesh.radio.country: {radio.get('country')!r} is not an ISO 3166 code (e.g. DE)")
        if not _MAC.match(str(radio.get("bssid", ""))):
            errors.append(f"site.mesh.radio.bssid: {radio.get('bssid')!r} is not a lower-case MAC address")
        ssid = str(radio.get("ssid", ""))
        if not 1 <= len(ssid.encode()) <= 32:
            errors.append(f"site.mesh.radio.ssid: {ssid!r} must be 1 to 32 bytes")
    if backend == "batman":
        batman = _get(mesh, "batman")
        if not isinstance(batman, Mapping):
            errors.append("site.mesh.batman: required with site.mesh.backend batman")
        elif batman.get("bridge") and not _IFNAME.match(str(batman["bridge"])):
            errors.append(f"site.mesh.batman.bridge: {batman['bridge']!r} is not an interface name")
        if _get(mesh, "interface_prefix"):
            errors.append("site.mesh.interface_prefix: batman needs the hard interfaces listed in site.mesh.interfaces")

    try:
        prefix = ipaddress.IPv4Network(str(_get(site, "addresses", "mesh_prefix")), strict=True)
    except ValueError as exc:
        errors.append(f"site.addresses.mesh_prefix: {exc}")
        prefix = None
    seen: dict[ipaddress.IPv4Address, str] = {}
    for host, info in sorted(inventory.items()):
        if "mesh_nodes" not in info.get("groups", ()):
            continue
        raw = info.get("mesh_node_address")
        if raw in (None, ""):
            errors.append(f"{host}: mesh_node_address is not set (every mesh node needs its address in the inventory)")
            continue
        addr = _address(raw)
        if addr is None:
            errors.append(f"{host}: mesh_node_address {raw!r} is not an IPv4 address")
            continue
        if prefix is not None and (
            addr not in prefix or addr in (prefix.network_address, prefix.broadcast_address)
        ):
            errors.append(f"{host}: mesh_node_address {addr} is not a host address of site.addresses.mesh_prefix {prefix}")
        if addr in seen:
            errors.append(f"{host}: mesh_node_address {addr} is also {seen[addr]}'s")
        seen.setdefault(addr, host)

    identity = _get(site, "identity") or {}
    domain = str(identity.get("trust_domain", ""))
    if not _DNS_NAME.match(domain):
        errors.append(f"site.identity.trust_domain: {domain!r} must be a lower-case domain name (no scheme, no path)")
    if identity.get("source") == "spire" and not identity.get("spire_attestor"):
        errors.append("site.identity.spire_attestor: required with site.identity.source spire (x509pop or join_token)")
    if identity.get("source") == "spire" and not [h for h, i in inventory.items() if "spire_servers" in i.get("groups", ())]:
        errors.append("site.identity.source: spire needs a host in the inventory group spire_servers")

    for server in _get(site, "time", "servers") or []:
        if server in inventory:
            member_of = inventory[server].get("groups", ())
            if "mesh_nodes" not in member_of and "monitor" not in member_of:
                errors.append(f"site.time.servers: {server} is in neither mesh_nodes nor monitor, so nothing configures it")
        elif _address(server) is None and not _DNS_NAME.match(str(server)):
            errors.append(f"site.time.servers: {server!r} is not an inventory host, an address or a host name")
        elif _address(server) is None and "." not in str(server):
            # One label: an inventory name most likely (a host renamed in hosts.yml and not
            # here); as a DNS name nothing on the mesh would resolve it.
            errors.append(f"site.time.servers: {server!r} is not an inventory host (renamed?); give an inventory"
                          " host, an address or a fully qualified DNS name")

    host = _get(site, "monitoring", "host")
    if host and (host not in inventory or "monitor" not in inventory[host].get("groups", ())):
        errors.append(f"site.monitoring.host: {host!r} is not a host of the inventory group monitor")
    interval = str(_get(site, "monitoring", "scrape_interval") or "")
    if not _DURATION.match(interval):
        errors.append(f"site.monitoring.scrape_interval: {interval!r} is not a Prometheus duration (e.g. 30s)")
    return errors


def site_conflicts(derived: Mapping[str, Any], hostvars: Mapping[str, Any], host: str) -> list[str]:
    """Role variables the site config owns that *hostvars* also sets, to another value."""
    out = []
    for key in sorted(derived):
        if key not in hostvars:
            continue
        mine, theirs = derived[key], hostvars[key]
        if mine != theirs:
            out.append(
                f"{host}: {key} is {theirs!r} in the inventory (or -e) but the site config makes it {mine!r};"
                " set it in site.yml only"
            )
    return out


def _host_address(name: str, hostvars: Mapping[str, Any], mesh: set[str]) -> str:
    """Where other nodes reach *name*: its mesh address, else its management address."""
    if name not in hostvars:
        return name
    hv = hostvars[name]
    if name in mesh:
        return str(hv.get("mesh_node_address") or "")
    return str(hv.get("mesh_mgmt_address") or hv.get("ansible_host") or name)


def time_sources(
    servers: list[str], hostvars: Mapping[str, Any], groups: Mapping[str, list[str]], host: str
) -> list[str]:
    """The addresses *host* takes its time from: each time server's, never its own."""
    mesh = set(groups.get("mesh_nodes", []))
    own = _host_address(host, hostvars, mesh) if host in hostvars else host
    sources: list[str] = []
    for server in servers:
        address = _host_address(server, hostvars, mesh)
        if server != host and address and address != own and address not in sources:
            sources.append(address)
    return sources


def site_key(inventory_dir: str) -> str:
    """16 hex digits of sha256 over every file under <inventory_dir>/group_vars, names included."""
    root = Path(str(inventory_dir)) / "group_vars"
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def spire_archives_missing(
    host: str, hostvars: Mapping[str, Any], groups: Mapping[str, list[str]]
) -> list[str]:
    """The ``*_archive_sha256`` variables a SPIRE site's host still needs.

    A host in ``spire_servers`` installs spire-server and one in ``mesh_nodes``
    spire-agent, each from a release archive: downloaded, which needs the
    64-hex sha256, or copied from ``*_archive_src`` on the controller (its sha256
    then either empty or the 64-hex value: a malformed one is refused as well).
    Checked before any task so a missing value cannot fail midway. The rule is
    the one roles/spire_release asserts, and a test holds the two together.
    """
    missing = []
    for role, group in (("spire_server", "spire_servers"), ("spire_agent", "mesh_nodes")):
        if host not in groups.get(group, []):
            continue
        sha = str(hostvars.get(f"{role}_archive_sha256") or "")
        src = str(hostvars.get(f"{role}_archive_src") or "")
        if not (re.fullmatch(r"[0-9a-f]{64}", sha) or (src and not sha)):
            missing.append(f"{role}_archive_sha256")
    return missing


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "meshcore_site_errors": site_errors,
            "meshcore_site_conflicts": site_conflicts,
            "meshcore_time_sources": time_sources,
            "meshcore_site_key": site_key,
            "meshcore_spire_archives_missing": spire_archives_missing,
        }
