"""The agent's one configuration model, loaded once from YAML.

:class:`AgentConfig` (with its sections :class:`IdentityConfig`, :class:`LinkConfig`,
:class:`MapekConfig` and its :class:`LeaseConfig`) is the single owner of every key: its
name, its default and its allowed values or range live in one field declaration,
``field(default=..., metadata=check(<check>))``. :func:`parse_config` walks those fields, so there
is no second list of keys, defaults or ranges to keep in step; the role's
template is tested against the same fields (``tests/test_agent_config_role.py``)
and :func:`schema` lists them for that test. Rules that tie keys together are
checked when the dataclasses are built (``__post_init__``).

Every component receives the slice of :class:`AgentConfig` it needs; nothing
reads the file or a global again.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh_agent.addressing import unusable_reason
from mesh_agent.identity.clock import POLICIES as CLOCK_POLICIES
from mesh_agent.identity.clock import TIMESYNCD_FLAG

DEFAULT_CONFIG_PATH = Path("/etc/mesh-agent/agent.yml")
# Never mesh interfaces: the management network and loopback.
MANAGEMENT_IFNAMES = frozenset({"eth0", "lo"})

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


# -- checks: each turns one YAML value into the field's value or names the key --------
@dataclass(frozen=True)
class Integer:
    lo: int
    hi: int

    def __call__(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if not self.lo <= value <= self.hi:
            raise ConfigError(f"{key}: {value} is outside {self.lo}..{self.hi}")
        return value


@dataclass(frozen=True)
class Number:
    lo: float
    hi: float

    def __call__(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not self.lo <= float(value) <= self.hi:
            raise ConfigError(f"{key}: {value} is outside {self.lo}..{self.hi}")
        return float(value)


@dataclass(frozen=True)
class Text:
    pattern: re.Pattern[str] | None = None
    what: str = ""  # what the pattern means, for the message

    def __call__(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        if self.pattern is not None and not self.pattern.match(value):
            what = self.what or f"must match {self.pattern.pattern}"
            raise ConfigError(f"{key}: {value!r} {what}")
        return value


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def __call__(self, key: str, value: Any) -> str:
        text = Text()(key, value)
        if text not in self.choices:
            raise ConfigError(f"{key}: {text!r} is not one of {', '.join(self.choices)}")
        return text


@dataclass(frozen=True)
class Boolean:
    def __call__(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value


@dataclass(frozen=True)
class FilePath:
    what: str = "file"

    def __call__(self, key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a {self.what} path")
        return Path(value)


def _node_address(key: str, value: Any) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(str(value).removesuffix("/32"))
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an IPv4 address") from None
    why = unusable_reason(address)
    if why is not None:
        raise ConfigError(f"{key}: {why}")
    return address


def _trust_domain(key: str, value: Any) -> str:
    domain = Text()(key, value)
    if "/" in domain or ":" in domain:
        raise ConfigError(f"{key}: {domain!r} must be a bare domain")
    return domain


def _interfaces(key: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise ConfigError(f"{key}: expected a list of interface names")
    for ifname in value:
        if not _IFNAME_RE.match(ifname):
            raise ConfigError(f"{key}: {ifname!r} is not a valid interface name")
        if ifname == "eth0":
            raise ConfigError(f"{key}: eth0 is the management network, not a mesh link")
    return tuple(value)


def _api_listen(key: str, value: Any) -> tuple[str, ...]:
    """One HOST:PORT or a list of them; HOST an IP address ([v6] in brackets)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{key}: expected HOST:PORT or a non-empty list of them")
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{key}: {item!r} must be HOST:PORT")
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{key}: {item!r} must be HOST:PORT")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(f"{key}: {host!r} in {item!r} is not an IP address") from None
    return tuple(items)


def check(parse: Any) -> dict[str, Any]:
    """A config key's field metadata: the check its YAML value goes through."""
    return {"check": parse}


# -- the model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IdentityConfig:
    cert: Path = field(default=Path("/etc/mesh-agent/pki/node.crt"), metadata=check(FilePath()))
    key: Path = field(default=Path("/etc/mesh-agent/pki/node.key"), metadata=check(FilePath()))
    ca: Path = field(default=Path("/etc/mesh-agent/pki/ca.crt"), metadata=check(FilePath()))


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

    backend: str = field(default="native", metadata=check(OneOf(("native", "batman"))))
    echo: bool = field(default=True, metadata=check(Boolean()))
    mesh_interface: str = field(
        default="bat0", metadata=check(Text(_IFNAME_RE, "is not a valid interface name"))
    )
    poll_interval_ms: int = field(default=1000, metadata=check(Integer(100, 60000)))
    dead_after_ms: int = field(default=5000, metadata=check(Integer(200, 600000)))
    batctl: Path = field(default=Path("/usr/sbin/batctl"), metadata=check(FilePath()))
    bat_hosts: Path = field(default=Path("/etc/bat-hosts"), metadata=check(FilePath()))
    reference_mbit: int = field(default=100, metadata=check(Integer(1, 100000)))

    def __post_init__(self) -> None:
        if self.dead_after_ms <= self.poll_interval_ms:
            raise ConfigError("link.dead_after_ms: must be larger than link.poll_interval_ms")


def _optional_path(key: str, value: Any) -> Path | None:
    """A file path, or none (null or an empty string: the default applies)."""
    return None if value in (None, "") else FilePath()(key, value)


def _lease_endpoints(key: str, value: Any) -> tuple[str, ...]:
    """etcd client URLs, ``http[s]://HOST:PORT`` each; none: no lease service."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise ConfigError(f"{key}: expected a list of http[s]://HOST:PORT")
    for item in value:
        scheme, sep, rest = item.partition("://")
        host, colon, port = rest.rpartition(":")
        if (not sep or scheme not in ("http", "https") or not host or not colon
                or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest):
            raise ConfigError(f"{key}: {item!r} must be http[s]://HOST:PORT")
    return tuple(value)


@dataclass(frozen=True)
class LeaseConfig:
    """Leases for the loop's disruptive actions (:mod:`mesh_agent.mapek.lease`).

    ``endpoints``: the etcd members' client URLs (the gateways); none: no lease is
    ever granted, so only local actions run. ``ttl_s``: a lease's life (a dead
    holder blocks nobody longer). ``cap_pct``: at most ``max(1, ceil(cap_pct % x
    fleet))`` disruptive leases at once, fleet-wide (and one per 2-hop
    neighbourhood). ``timeout_s``: how long one etcd request may take. ``ca``: the
    authority that signed the etcd members' server certificates, for ``https``
    endpoints (none: ``identity.ca``, the mesh CA, which signs them under lab_pki; a
    SPIRE node has no mesh CA file and is given the site CA here). The client
    certificate is the node's own (``identity.cert``, or the Workload API's SVID as
    :mod:`mesh_agent.identity.export` writes it).
    """

    endpoints: tuple[str, ...] = field(default=(), metadata=check(_lease_endpoints))
    ca: Path | None = field(default=None, metadata=check(_optional_path))
    ttl_s: int = field(default=30, metadata=check(Integer(2, 3600)))
    cap_pct: float = field(default=5.0, metadata=check(Number(0.1, 100.0)))
    timeout_s: float = field(default=1.0, metadata=check(Number(0.05, 30.0)))


_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@-]{1,200}\.service$")
# Never restarted by the loop: the agent itself (systemd's watchdog restarts a hung
# agent) and what the node cannot be reached or keep time without.
NEVER_RESTARTED = frozenset({"mesh-agent.service", "mesh-release-confirm.service",
                             "ssh.service", "sshd.service", "systemd-networkd.service",
                             "systemd-journald.service", "dbus.service"})


def _restart_units(key: str, value: Any) -> tuple[str, ...]:
    """systemd service names the loop may restart on a starved node (an allowlist)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise ConfigError(f"{key}: expected a list of systemd service names (NAME.service)")
    for unit in value:
        if not _UNIT_RE.match(unit):
            raise ConfigError(f"{key}: {unit!r} is not a systemd service name (NAME.service)")
        if unit in NEVER_RESTARTED:
            raise ConfigError(f"{key}: {unit} is never restarted by the loop"
                              + (" (systemd's watchdog restarts a hung agent)"
                                 if unit == "mesh-agent.service" else ""))
    return tuple(dict.fromkeys(value))


@dataclass(frozen=True)
class MapekConfig:
    """The self-healing loop (:mod:`mesh_agent.mapek`, docs/mapek.md).

    ``enabled``: run it at all. ``mode``: ``observe`` records what it would do,
    ``enforce`` also does it (disruptive actions only under a lease:
    ``lease``). ``policy``: ``fixed`` (the rule table) or ``learned`` (Thompson
    sampling over Knowledge). ``interval_s``: how often it samples.
    ``loss_min_hellos``: a link's loss is judged over at least this many of its
    hellos (:data:`mesh_agent.mapek.monitor.LOSS_MIN_HELLOS`; 5 s at 50 ms hellos).
    ``restart_units``: the services a ``restart_unit`` decision may restart on a
    starved node (the busiest of them by CPU; none: the action is never chosen).
    """

    enabled: bool = field(default=False, metadata=check(Boolean()))
    mode: str = field(default="observe", metadata=check(OneOf(("observe", "enforce"))))
    policy: str = field(default="fixed", metadata=check(OneOf(("fixed", "learned"))))
    interval_s: float = field(default=5.0, metadata=check(Number(0.5, 600.0)))
    loss_min_hellos: int = field(default=100, metadata=check(Integer(10, 100000)))
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    restart_units: tuple[str, ...] = field(default=(), metadata=check(_restart_units))


@dataclass(frozen=True)
class AgentConfig:
    node_name: str = field(metadata=check(Text(_NAME_RE)))
    node_address: ipaddress.IPv4Address = field(metadata=check(_node_address))
    trust_domain: str = field(default="mesh.lab", metadata=check(_trust_domain))
    # Mesh interfaces by name; None: every interface whose name has the prefix.
    interfaces: tuple[str, ...] | None = field(default=None, metadata=check(_interfaces))
    interface_prefix: str = field(default="mesh", metadata=check(Text()))
    udp_port: int = field(default=6767, metadata=check(Integer(1, 65534)))
    hello_interval_ms: int = field(default=50, metadata=check(Integer(5, 60000)))
    dead_multiplier: int = field(default=3, metadata=check(Integer(2, 255)))
    # Periodic refresh only: every change is flooded at once, and a new
    # neighbour gets the whole LSDB. OSPF refreshes every 30 min (RFC 2328
    # LSRefreshTime); 10 s keeps 50 nodes at 5 verifies/s per node, not 50.
    advert_interval_s: float = field(default=10.0, metadata=check(Number(0.05, 3600.0)))
    advert_max_age_s: float = field(default=60.0, metadata=check(Number(1.0, 86400.0)))
    mode: str = field(default="observe", metadata=check(OneOf(("observe", "enforce"))))
    k: int = field(default=3, metadata=check(Integer(3, 5)))
    disjoint: str = field(default="edge", metadata=check(OneOf(("edge", "node"))))
    route_protocol: int = field(default=77, metadata=check(Integer(5, 255)))
    # A restart's hand-off (enforce mode): a stopping agent leaves its routes in the
    # kernel, and the next start keeps them until its own sync replaces each one, for at
    # most this long, then removes the rest. The node forwards through the restart of an
    # upgrade or a rollout wave. 0: flush the routes at stop and at start.
    restart_grace_s: float = field(default=30.0, metadata=check(Number(0.0, 3600.0)))
    # HOST:PORT endpoints of the API: loopback and the management address,
    # never the mesh by default (mesh_agent.api).
    api_listen: tuple[str, ...] = field(default=("127.0.0.1:9105",), metadata=check(_api_listen))
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    # What survives restarts (mesh_agent.store): the systemd unit's StateDirectory.
    state_dir: Path = field(
        default=Path("/var/lib/mesh-agent"), metadata=check(FilePath("directory"))
    )
    log_level: str = field(
        default="INFO", metadata=check(OneOf(("DEBUG", "INFO", "WARNING", "ERROR")))
    )
    link: LinkConfig = field(default_factory=LinkConfig)
    # When certificate validity windows are checked (mesh_agent.identity.clock).
    clock_trust: str = field(default="synchronized", metadata=check(OneOf(CLOCK_POLICIES)))
    clock_sync_file: Path = field(default=TIMESYNCD_FLAG, metadata=check(FilePath()))
    mapek: MapekConfig = field(default_factory=MapekConfig)

    def __post_init__(self) -> None:
        if self.advert_max_age_s <= self.advert_interval_s:
            raise ConfigError("advert_max_age_s: must be larger than advert_interval_s")
        if self.link.backend == "batman" and self.mode != "observe":
            raise ConfigError("link.backend: batman-adv routes at layer 2, so the batman "
                              "backend needs mode: observe")

    def wants_interface(self, ifname: str) -> bool:
        """A mesh interface the agent runs on: listed, or named with the prefix; never eth0/lo."""
        if ifname in MANAGEMENT_IFNAMES:
            return False
        if self.interfaces is not None:
            return ifname in self.interfaces
        return ifname.startswith(self.interface_prefix)

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
        return api_endpoints(self.api_listen)


def api_endpoints(listen: Iterable[str]) -> list[tuple[str, int]]:
    """``host:port`` / ``[v6]:port`` entries of ``api_listen`` as (host, port) pairs."""
    out = []
    for endpoint in listen:
        host, _, port = endpoint.rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


# -- parsing, from the fields ------------------------------------------------------------
def _sections(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(hints[f.name])}


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(data, dict):
        names = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"{where}: expected a mapping with {names}, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    # key=str: YAML keys may be of any type (1: x, true: y), which do not sort together.
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key")
    sections = _sections(cls)
    values: dict[str, Any] = {}
    for name, f in known.items():
        key = prefix + name
        if name in sections:
            values[name] = _build(sections[name], {} if data.get(name) is None else data[name],
                                  key + ".")
        elif name in data:
            values[name] = f.metadata["check"](key, data[name])
        elif f.default is dataclasses.MISSING:
            raise ConfigError(f"{key}: required")
    return cls(**values)


def parse_config(data: Any) -> AgentConfig:
    """Validate a mapping (the parsed YAML) into an :class:`AgentConfig`."""
    cfg: AgentConfig = _build(AgentConfig, data, "")
    return cfg


def schema(cls: type = AgentConfig, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every key as (dotted name, default or MISSING, its check), sections flattened."""
    sections = _sections(cls)
    for f in dataclasses.fields(cls):
        if f.name in sections:
            yield from schema(sections[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name, f.default, f.metadata["check"]


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
