"""The agent's one configuration model, loaded once from YAML.

Every component receives the slice of :class:`AgentConfig` it needs; nothing
reads the file or a global again.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh_agent.addressing import unusable_reason
from mesh_agent.identity.clock import POLICIES as CLOCK_POLICIES
from mesh_agent.identity.clock import TIMESYNCD_FLAG

DEFAULT_CONFIG_PATH = Path("/etc/mesh-agent/agent.yml")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


@dataclass(frozen=True)
class IdentityConfig:
    cert: Path = Path("/etc/mesh-agent/pki/node.crt")
    key: Path = Path("/etc/mesh-agent/pki/node.key")
    ca: Path = Path("/etc/mesh-agent/pki/ca.crt")


@dataclass(frozen=True)
class LinkConfig:
    """Where the neighbour table comes from.

    ``native``: the agent's own UDP hellos on each mesh interface, plus (with
    ``echo``, the default) ICMP echo probes that the neighbours' kernels answer,
    so a late neighbour process is not mistaken for a dead link
    (:mod:`mesh_agent.link.sensor`).
    ``batman``: batman-adv's neighbours and originators (TQ), read with batctl
    from ``mesh_interface``; batman-adv routes at layer 2, so the agent only
    observes (mode must be ``observe``).
    """

    backend: str = "native"
    echo: bool = True
    mesh_interface: str = "bat0"
    poll_interval_ms: int = 1000
    dead_after_ms: int = 5000
    batctl: Path = Path("/usr/sbin/batctl")
    bat_hosts: Path = Path("/etc/bat-hosts")
    reference_mbit: int = 100


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    node_address: ipaddress.IPv4Address
    trust_domain: str = "mesh.lab"
    interfaces: tuple[str, ...] | None = None
    interface_prefix: str = "mesh"
    udp_port: int = 6767
    hello_interval_ms: int = 50
    dead_multiplier: int = 3
    # Periodic refresh only: every change is flooded at once, and a new
    # neighbour gets the whole LSDB. OSPF refreshes every 30 min (RFC 2328
    # LSRefreshTime); 10 s keeps 50 nodes at 5 verifies/s per node, not 50.
    advert_interval_s: float = 10.0
    advert_max_age_s: float = 60.0
    mode: str = "observe"
    k: int = 3
    disjoint: str = "edge"
    route_protocol: int = 77
    # HOST:PORT endpoints of the API: loopback and the management address,
    # never the mesh by default (mesh_agent.api).
    api_listen: tuple[str, ...] = ("127.0.0.1:9105",)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    state_dir: Path = Path("/var/lib/mesh-agent")
    log_level: str = "INFO"
    link: LinkConfig = field(default_factory=LinkConfig)
    # When certificate validity windows are checked (mesh_agent.identity.clock).
    clock_trust: str = "synchronized"
    clock_sync_file: Path = TIMESYNCD_FLAG

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    @property
    def hello_interval_s(self) -> float:
        return self.hello_interval_ms / 1000.0

    @property
    def advert_port(self) -> int:
        """Adverts travel on the port after the hello port."""
        return self.udp_port + 1

    @property
    def api_endpoints(self) -> list[tuple[str, int]]:
        out = []
        for endpoint in self.api_listen:
            host, _, port = endpoint.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out


_KNOWN_KEYS = {
    "node_name",
    "node_address",
    "trust_domain",
    "interfaces",
    "interface_prefix",
    "udp_port",
    "hello_interval_ms",
    "dead_multiplier",
    "advert_interval_s",
    "advert_max_age_s",
    "mode",
    "k",
    "disjoint",
    "route_protocol",
    "api_listen",
    "identity",
    "state_dir",
    "log_level",
    "link",
    "clock_trust",
    "clock_sync_file",
}
_LINK_KEYS = {
    "backend",
    "echo",
    "mesh_interface",
    "poll_interval_ms",
    "dead_after_ms",
    "batctl",
    "bat_hosts",
    "reference_mbit",
}


def _int(data: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: {value} is outside {lo}..{hi}")
    return value


def _float(data: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not lo <= float(value) <= hi:
        raise ConfigError(f"{key}: {value} is outside {lo}..{hi}")
    return float(value)


def _str(data: dict[str, Any], key: str, default: str | None) -> str:
    value = data.get(key, default)
    if value is None:
        raise ConfigError(f"{key}: required")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _choice(data: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = _str(data, key, default)
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _parse_link(raw: Any, mode: str) -> LinkConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("link: expected a mapping")
    bad = sorted(set(raw) - _LINK_KEYS, key=str)
    if bad:
        raise ConfigError(f"link.{bad[0]}: unknown key")
    # Errors name the nested key (link.x), so prefix what the helpers report.
    try:
        backend = _choice(raw, "backend", "native", ("native", "batman"))
        echo = _bool(raw, "echo", True)
        mesh_interface = _str(raw, "mesh_interface", "bat0")
        poll = _int(raw, "poll_interval_ms", 1000, 100, 60000)
        dead = _int(raw, "dead_after_ms", 5000, 200, 600000)
        reference = _int(raw, "reference_mbit", 100, 1, 100000)
        batctl = _str(raw, "batctl", str(LinkConfig.batctl))
        bat_hosts = _str(raw, "bat_hosts", str(LinkConfig.bat_hosts))
    except ConfigError as exc:
        raise ConfigError(f"link.{exc}") from None
    if not _IFNAME_RE.match(mesh_interface):
        raise ConfigError(f"link.mesh_interface: {mesh_interface!r} is not a valid interface name")
    if dead <= poll:
        raise ConfigError("link.dead_after_ms: must be larger than link.poll_interval_ms")
    if backend == "batman" and mode != "observe":
        raise ConfigError(
            "link.backend: batman-adv routes at layer 2, so the batman backend needs mode: observe"
        )
    return LinkConfig(
        backend=backend,
        echo=echo,
        mesh_interface=mesh_interface,
        poll_interval_ms=poll,
        dead_after_ms=dead,
        batctl=Path(batctl),
        bat_hosts=Path(bat_hosts),
        reference_mbit=reference,
    )


def parse_config(data: Any) -> AgentConfig:
    """Validate a mapping (the parsed YAML) into an :class:`AgentConfig`."""
    if not isinstance(data, dict):
        raise ConfigError("<top level>: expected a mapping")
    # key=str: YAML keys may be of any type (1: x, true: y), which do not sort together.
    unknown = sorted(set(data) - _KNOWN_KEYS, key=str)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key")

    node_name = _str(data, "node_name", None)
    if not _NAME_RE.match(node_name):
        raise ConfigError(f"node_name: {node_name!r} must match {_NAME_RE.pattern}")
    raw_addr = data.get("node_address")
    if raw_addr is None:
        raise ConfigError("node_address: required")
    try:
        node_address = ipaddress.IPv4Address(str(raw_addr).removesuffix("/32"))
    except ValueError as exc:
        raise ConfigError(f"node_address: {raw_addr!r} is not an IPv4 address") from exc
    why = unusable_reason(node_address)
    if why is not None:
        raise ConfigError(f"node_address: {why}")

    trust_domain = _str(data, "trust_domain", "mesh.lab")
    if "/" in trust_domain or ":" in trust_domain:
        raise ConfigError(f"trust_domain: {trust_domain!r} must be a bare domain")

    interfaces: tuple[str, ...] | None = None
    if data.get("interfaces") is not None:
        raw_ifs = data["interfaces"]
        if not isinstance(raw_ifs, list) or not all(isinstance(i, str) for i in raw_ifs):
            raise ConfigError("interfaces: expected a list of interface names")
        for ifname in raw_ifs:
            if not _IFNAME_RE.match(ifname):
                raise ConfigError(f"interfaces: {ifname!r} is not a valid interface name")
            if ifname == "eth0":
                raise ConfigError("interfaces: eth0 is the management network, not a mesh link")
        interfaces = tuple(raw_ifs)
    interface_prefix = _str(data, "interface_prefix", "mesh")

    api_listen = _parse_api_listen(data.get("api_listen", ["127.0.0.1:9105"]))

    ident = data.get("identity", {})
    if ident is None:
        ident = {}
    if not isinstance(ident, dict):
        raise ConfigError(f"identity: expected a mapping with cert, key, ca, got {ident!r}")
    bad = sorted(set(ident) - {"cert", "key", "ca"}, key=str)
    if bad:
        raise ConfigError(f"identity.{bad[0]}: unknown key")
    defaults = IdentityConfig()
    paths: dict[str, Path] = {}
    for sub in ("cert", "key", "ca"):
        value = ident.get(sub, str(getattr(defaults, sub)))
        if not isinstance(value, str) or not value:
            raise ConfigError(f"identity.{sub}: expected a file path")
        paths[sub] = Path(value)

    state_dir = data.get("state_dir", "/var/lib/mesh-agent")
    if not isinstance(state_dir, str) or not state_dir:
        raise ConfigError("state_dir: expected a directory path")

    advert_interval_s = _float(data, "advert_interval_s", 10.0, 0.05, 3600.0)
    advert_max_age_s = _float(data, "advert_max_age_s", 60.0, 1.0, 86400.0)
    if advert_max_age_s <= advert_interval_s:
        raise ConfigError("advert_max_age_s: must be larger than advert_interval_s")

    mode = _choice(data, "mode", "observe", ("observe", "enforce"))
    link = _parse_link(data.get("link"), mode)
    clock_trust = _choice(data, "clock_trust", "synchronized", CLOCK_POLICIES)
    clock_sync_file = _str(data, "clock_sync_file", str(TIMESYNCD_FLAG))

    return AgentConfig(
        node_name=node_name,
        node_address=node_address,
        trust_domain=trust_domain,
        interfaces=interfaces,
        interface_prefix=interface_prefix,
        udp_port=_int(data, "udp_port", 6767, 1, 65534),
        hello_interval_ms=_int(data, "hello_interval_ms", 50, 5, 60000),
        dead_multiplier=_int(data, "dead_multiplier", 3, 2, 255),
        advert_interval_s=advert_interval_s,
        advert_max_age_s=advert_max_age_s,
        mode=mode,
        k=_int(data, "k", 3, 3, 5),
        disjoint=_choice(data, "disjoint", "edge", ("edge", "node")),
        route_protocol=_int(data, "route_protocol", 77, 5, 255),
        api_listen=api_listen,
        identity=IdentityConfig(**paths),
        state_dir=Path(state_dir),
        log_level=_choice(data, "log_level", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        link=link,
        clock_trust=clock_trust,
        clock_sync_file=Path(clock_sync_file),
    )


def _parse_api_listen(raw: Any) -> tuple[str, ...]:
    """One HOST:PORT or a list of them; HOST an IP address ([v6] in brackets)."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise ConfigError("api_listen: expected HOST:PORT or a non-empty list of them")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"api_listen: {item!r} must be HOST:PORT")
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"api_listen: {item!r} must be HOST:PORT")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(f"api_listen: {host!r} in {item!r} is not an IP address") from None
        out.append(item)
    return tuple(out)


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and validate the YAML file at *path*."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"<file>: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"<file>: {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"<file>: {path} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"<file>: {path} nests too deeply to be an agent config") from None
    return parse_config(data)
