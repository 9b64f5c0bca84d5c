from __future__ import annotations

import pytest
from meshcore_testkit.pki import CA


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA.create()


@pytest.fixture(scope="session")
def other_ca() -> CA:
    return CA.create("rogue-ca")
