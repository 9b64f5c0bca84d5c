"""Every Debian package a role installs is pre-seeded in the images whose nodes run it.

Lab and molecule nodes run the container base image and have no apt access in the lab
(molecule's containers do: a role's apt task can pass molecule and fail on the lab, as
polkitd did in session 45); the Pi image's role stage has no network either. So the
packages of every role's ``ansible.builtin.apt`` task (literal names, or a variable the
role's defaults set to a list) must be in ``image_packages``, except the few that a node
of that image never installs, each with its reason below.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Roles whose packages an image leaves out on purpose.
NOT_IN = {
    "container-amd64": {
        # the lab has no time servers (containers share the host's clock): the chrony
        # role is left out there (playbooks/site-config/role-vars.yml)
        "chrony": "chrony",
        # Grafana comes from Grafana's own apt repository (issue 18, blocked offline)
        "grafana": "grafana",
    },
    "rpi-arm64": {
        # the monitoring host's roles: not a mesh node's
        "alertmanager": "prometheus-alertmanager",
        "prometheus": "prometheus",
        "grafana": "grafana",
        # the gateways' etcd is installed by the etcd role on the gateways only (apt)
        "etcd": "etcd-server etcd-client",
    },
}
VAR = re.compile(r"^\{\{\s*(\w+)\s*\}\}$")


def tasks(items: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    for t in items or []:
        yield t
        for key in ("block", "rescue", "always"):
            yield from tasks(t.get(key))


def role_packages() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for role in sorted((ROOT / "roles").iterdir()):
        defaults_file = role / "defaults" / "main.yml"
        defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
        for f in sorted((role / "tasks").glob("*.yml")):
            for t in tasks(yaml.safe_load(f.read_text())):
                apt = t.get("ansible.builtin.apt")
                if not isinstance(apt, dict) or "name" not in apt:
                    continue
                name = apt["name"]
                if isinstance(name, str) and (m := VAR.match(name)):
                    name = (defaults or {}).get(m.group(1), name)
                names = [name] if isinstance(name, str) else list(name)
                out.setdefault(role.name, set()).update(str(n) for n in names)
    return out


def test_the_role_packages_are_found() -> None:
    found = role_packages()
    assert {"etcd-server", "etcd-client"} <= found["etcd"]
    assert found["mesh_agent"] == {"polkitd"}
    assert "python3-apt" in found["base"]  # a list from the role's defaults


@pytest.mark.parametrize("target", sorted(NOT_IN))
def test_every_role_package_is_pre_seeded(target: str) -> None:
    spec = yaml.safe_load((ROOT / "images" / "targets" / f"{target}.yml").read_text())
    seeded = set(spec["image_packages"])
    missing = {role: sorted(pkgs - seeded) for role, pkgs in role_packages().items()
               if role not in NOT_IN[target] and pkgs - seeded}
    assert missing == {}, f"{target}: add these to image_packages (or say why not in NOT_IN)"
    for role, pkgs in NOT_IN[target].items():
        assert set(pkgs.split()) <= role_packages()[role], f"{role}: NOT_IN is out of date"


def test_no_apt_task_refreshes_the_cache_when_nothing_is_missing() -> None:
    """``cache_valid_time`` set alone turns ``update_cache`` on (the apt module), so a task
    that names it refreshes apt on every run, on lab nodes that have no apt access too
    (the mesh_agent role's polkitd task did, session 45): it must be omitted unless a
    refresh is wanted."""
    bad = []
    for f in sorted((ROOT / "roles").glob("*/tasks/*.yml")):
        for t in tasks(yaml.safe_load(f.read_text())):
            apt = t.get("ansible.builtin.apt")
            if isinstance(apt, dict) and "cache_valid_time" in apt \
                    and "omit" not in str(apt["cache_valid_time"]):
                bad.append(f"{f.relative_to(ROOT)}: {t.get('name')}")
    assert bad == []
