"""Shared pytest setup for the repo-level tests."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the slow lab scenarios")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a slow lab scenario, run by make test-full")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow lab scenario: run with `make test-full` (--run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def make(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}
    return subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def lab() -> Iterator[dict[str, object]]:
    """`make lab` (10-node grid) once per session, destroyed at the end; slow tests only."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (podman, netns)")
    res = make("lab", "NODES=10", "TOPOLOGY=grid")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    report = json.loads((ROOT / "build" / "lab" / "status.json").read_text())
    yield report
    make("lab-destroy")
