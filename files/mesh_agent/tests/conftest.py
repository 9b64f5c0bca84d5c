from __future__ import annotations

import pytest
from meshcore_testkit.pki import CA


def pytest_configure(config: pytest.Config) -> None:
    # The repo's tests/conftest.py skips these unless --run-slow (make test-full-lab);
    # run from this directory alone, they run.
    config.addinivalue_line("markers", "slow: a slow namespace scenario, run by make test-full")


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA.create()


@pytest.fixture(scope="session")
def other_ca() -> CA:
    return CA.create("rogue-ca")
