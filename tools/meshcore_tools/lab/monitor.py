"""Where the host reaches the lab monitor's web services, from the lab's own config.

The monitor container has an address on the lab's management network
(``state['monitor']['mgmt_address']``, 10.79.0.2 by default), which the host reaches
directly: no port is published. Each service's port is its role's default unless
the lab's inventory (``inventories/lab/group_vars/all/*.yml``) sets it, exactly as
Ansible resolves it for the monitor, so what ``labctl status`` prints is what
``site.yml`` configured. Grafana is not in Debian and the lab has no internet:
with ``grafana_install: false`` (the lab's setting) its URL is reported as not served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshcore_tools import ROOT
from meshcore_tools.lab.state import MONITOR

LAB_VARS_DIR = ROOT / "inventories" / "lab" / "group_vars" / "all"
ROLES_DIR = ROOT / "roles"
# Grafana's own first login (it then asks for a new password); the role sets no other.
GRAFANA_LOGIN = ("admin", "admin")


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    served: bool  # installed and running in this lab
    note: str = ""


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    return data if isinstance(data, dict) else {}


def lab_vars(vars_dir: Path = LAB_VARS_DIR, roles_dir: Path = ROLES_DIR) -> dict[str, Any]:
    """The monitoring roles' defaults, overridden by the lab's group_vars/all."""
    merged: dict[str, Any] = {}
    for role in ("prometheus", "alertmanager", "grafana"):
        merged.update(_yaml(roles_dir / role / "defaults" / "main.yml"))
    for path in sorted(vars_dir.glob("*.yml")):
        merged.update(_yaml(path))
    return merged


def services(state: dict[str, Any], config: dict[str, Any] | None = None) -> list[Service]:
    """Prometheus, Alertmanager and Grafana on the lab monitor, as the host reaches them."""
    v = lab_vars() if config is None else config
    host = state["monitor"]["mgmt_address"]
    sink = v.get("alertmanager_lab_sink_file", "")
    user, password = GRAFANA_LOGIN
    grafana = bool(v.get("grafana_install", True))
    return [
        Service("Prometheus", f"http://{host}:{v['prometheus_port']}", True),
        Service("Alertmanager", f"http://{host}:{v['alertmanager_port']}", True,
                f"alerts also land in {sink} on {MONITOR}"
                if v.get("alertmanager_lab_sink") else ""),
        Service("Grafana", f"http://{host}:{v['grafana_http_port']}", grafana,
                f"login {user} / {password}" if grafana else
                "not served: grafana_install is false, as Grafana is not in Debian and the lab "
                "has no internet; only its provisioning files are written"),
    ]


def url_of(state: dict[str, Any], name: str) -> str:
    return next(s.url for s in services(state) if s.name == name)


def describe(svcs: list[Service]) -> str:
    """The lines ``labctl status`` ends with."""
    lines = ["monitoring (from this host):"]
    w = max(len(s.name) for s in svcs)
    for s in svcs:
        lines.append(f"  {s.name:<{w}}  {s.url}" + (f"  ({s.note})" if s.note else ""))
    return "\n".join(lines)
