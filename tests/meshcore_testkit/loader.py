"""Modules that are files, not packages: Ansible's filter plugins and the scripts the
playbooks copy to nodes are loaded by path, and so are they in the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_path(name: str, path: Path) -> ModuleType:
    """The module in the file *path*, under *name* (not added to ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
