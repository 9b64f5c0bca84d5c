"""labctl realtime's plan: the order of the writes the kernel accepts, with no cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshcore_tools.lab import realtime


def test_grants_lower_everything_first_then_raise_parents_before_children() -> None:
    cgroups = {"node01": "/libpod_parent/libpod-a", "node02": "/libpod_parent/libpod-b",
               "node03": "/libpod_parent/libpod-c"}
    writes = realtime.plan_writes({"node01": 450000, "node03": 400000}, cgroups)
    lowered = [w for w in writes if w[1] == 0]
    raised = writes[len(lowered):]
    assert [p for p, _ in lowered][-1] == "/libpod_parent"  # children before their parent
    assert {p for p, _ in lowered} == {*cgroups.values(), "/libpod_parent"}
    assert raised == [("/libpod_parent", 850000), ("/libpod_parent/libpod-a", 450000),
                      ("/libpod_parent/libpod-c", 400000)]
    assert all(v == 0 for _, v in realtime.plan_writes({}, cgroups))  # no grant: all zero


def test_bad_grants_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    for bad in (["node01"], ["node01=lots"], ["=5"]):
        with pytest.raises(realtime.RealtimeError):
            realtime.parse_grants(bad)
    assert realtime.parse_grants(["node01=450000"]) == {"node01": 450000}
    # No RT group scheduling (cgroup v2): nothing is needed, nothing written.
    assert realtime.apply({"node01": 1}, root=tmp_path)["needed"] is False
