from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pki import CA


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA.create()


@pytest.fixture(scope="session")
def other_ca() -> CA:
    return CA.create("rogue-ca")
