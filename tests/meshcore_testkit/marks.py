"""pytest marks shared by the test suites."""

from __future__ import annotations

import os
import shutil

import pytest

requires_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to create network namespaces",
)
