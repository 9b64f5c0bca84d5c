"""Modules that are files, not packages: Ansible's filter plugins and the scripts the
playbooks copy to nodes are loaded by path, and so are they in the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_path(name: str, path: Path, register: bool = False) -> ModuleType:
    """The module in the file *path*, under *name*; added to ``sys.modules`` only with
    *register* (a module whose dataclasses look their module up, as the benches')."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
