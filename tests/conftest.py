"""Shared pytest setup for the repo-level tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshcore_testkit.containerlab import make

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


@pytest.fixture(scope="session")
def lab() -> Iterator[dict[str, object]]:
    """`make lab` (10-node grid) once per session, destroyed at the end; slow tests only."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (podman, netns)")
    res = make("lab", "NODES=10", "TOPOLOGY=grid", timeout=1800)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    report = json.loads((ROOT / "build" / "lab" / "status.json").read_text())
    yield report
    make("lab-destroy", timeout=1800)
