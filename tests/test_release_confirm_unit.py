"""The commit-confirm unit and settings the mesh_agent role writes, against meshctl.

The unit runs `meshctl release confirm-watch` from the confirm-runner link while a
switch is pending (and resumes after a reboot); the settings file parses with the
same loader `meshctl release use` reads it with and keeps the core's bound."""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path

import pytest
from mesh_agent.ctl.main import build_parser
from mesh_agent.release import watch
from mesh_agent.release.confirm import MAX_WINDOW_S
from meshcore_testkit.roles import defaults, render


def unit(**overrides: object) -> configparser.ConfigParser:
    text = render("mesh_agent", "mesh-release-confirm.service.j2", mesh_node_address="10.77.0.9",
                  **overrides)
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


def test_unit_shape() -> None:
    u = unit(mesh_agent_install_root="/srv/agent")
    root = Path("/srv/agent")
    assert u["Unit"]["ConditionPathExists"] == str(root / watch.PENDING_FILE)
    assert u["Install"]["WantedBy"] == "multi-user.target"  # a reboot resumes the window
    svc = u["Service"]
    assert svc["Type"] == "simple" and svc["Restart"] == "on-failure"  # kill -9 resumes too
    argv = shlex.split(svc["ExecStart"])
    assert argv[0] == str(root / watch.RUNNER_LINK / "bin" / "meshctl")
    args = build_parser().parse_args(argv[1:])  # meshctl itself accepts the command line
    assert (args.command, args.release_command, args.root) == ("release", "confirm-watch", root)
    assert "User" not in svc  # root: it switches current and restarts mesh-agent
    assert watch.CONFIRM_UNIT == "mesh-release-confirm.service"


@pytest.mark.parametrize("overrides", [
    {},
    {"mesh_agent_confirm_window_s": 45, "mesh_agent_confirm_expect_neighbors": 2,
     "mesh_agent_confirm_reach": ["10.99.0.1:9090", "10.99.0.254"], "mesh_agent_confirm_hold_s": 3},
])
def test_settings_file_is_what_meshctl_reads(tmp_path: Path, overrides: dict[str, object]) -> None:
    path = tmp_path / "release-confirm.json"
    path.write_text(render("mesh_agent", "release-confirm.json.j2", mesh_node_address="10.77.0.9",
                           **overrides))
    s = watch.Settings.load(path)
    d = {**defaults("mesh_agent"), **overrides}
    assert s == watch.Settings(float(d["mesh_agent_confirm_window_s"]),  # type: ignore[arg-type]
                               int(d["mesh_agent_confirm_expect_neighbors"]),  # type: ignore[call-overload]
                               tuple(d["mesh_agent_confirm_reach"]),  # type: ignore[arg-type]
                               float(d["mesh_agent_confirm_hold_s"]))  # type: ignore[arg-type]
    assert 0 < s.window_s <= MAX_WINDOW_S
    assert json.loads(path.read_text())  # plain JSON, no template residue


def test_role_default_window_is_meshctls() -> None:
    assert defaults("mesh_agent")["mesh_agent_confirm_window_s"] == watch.Settings().window_s
    assert defaults("mesh_agent")["mesh_agent_confirm_hold_s"] == watch.Settings().hold_s
