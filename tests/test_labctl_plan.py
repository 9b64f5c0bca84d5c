"""labctl's plan stamp: a lab left up by another checkout or plan is never reused."""

from __future__ import annotations

import subprocess

import labctl
import pytest


def _podman_ps(lines: list[str]):
    def fake_sh(*argv: str, check: bool = True, input: str | None = None):
        assert argv[:3] == ("podman", "ps", "-a")
        return subprocess.CompletedProcess(list(argv), 0, stdout="".join(f"{x}\n" for x in lines))
    return fake_sh


def test_plan_id_depends_on_plan_and_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"name": "grid-4", "nodes": {"node01": {}}, "links": []}
    monkeypatch.setenv("MESHCORE_CHECKOUT_ID", "aaaaaa")
    a = labctl.plan_id(state)
    assert a == labctl.plan_id(dict(state))
    assert a != labctl.plan_id({**state, "name": "grid-5"})
    monkeypatch.setenv("MESHCORE_CHECKOUT_ID", "bbbbbb")
    assert a != labctl.plan_id(state)


def test_foreign_containers_are_those_of_another_plan_or_unstamped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labctl, "sh", _podman_ps([
        "meshcore-lab-node01\tcafe01",
        "meshcore-lab-node02\tbeef02",
        "meshcore-lab-node03\t",          # started before containers were stamped
    ]))
    assert labctl.foreign_containers("cafe01") == {
        "meshcore-lab-node02": "beef02", "meshcore-lab-node03": "unknown"}


def test_no_foreign_containers_when_all_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labctl, "sh", _podman_ps(["meshcore-lab-node01\tcafe01"]))
    assert labctl.foreign_containers("cafe01") == {}
    monkeypatch.setattr(labctl, "sh", _podman_ps([]))
    assert labctl.foreign_containers("cafe01") == {}
