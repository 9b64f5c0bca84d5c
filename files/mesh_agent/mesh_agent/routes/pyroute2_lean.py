"""The few pyroute2 names the agent uses, imported without pyroute2's package ``__init__``.

``import pyroute2`` (and so ``from pyroute2.x import y``, which runs the package
``__init__`` first) imports every API the library has: NDB with sqlite3, IPDB,
nl80211, ipset, IPVS, conntrack, plan9 and more, 163 modules. The agent needs the
rtnetlink socket and the message classes: 99 modules. Measured with
``python -OO`` on pyroute2 0.9.7: **+11.9 MB RSS** through the package, **+6.1 MB**
this way.

How: before anything imports pyroute2, the package's module object is created
from its spec but not executed, and put in ``sys.modules``; submodule imports
work through its ``__path__`` as usual. The first access to a name the package
would re-export (``from pyroute2 import IPRoute`` anywhere else in the process)
runs the real ``__init__`` in that same module object, so other code sees the
normal package. If pyroute2 was imported before this module, nothing changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _DeferredPackage(types.ModuleType):
    """A package whose ``__init__`` runs on the first missing attribute."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        # ``from pyroute2 import config`` inside the library: a submodule.
        sub = f"{self.__name__}.{name}"
        if importlib.util.find_spec(sub) is not None:
            return importlib.import_module(sub)
        # A name re-exported by the package: become the full package.
        self.__class__ = types.ModuleType  # type: ignore[assignment]
        spec = self.__spec__
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(self)
        return getattr(self, name)


def _defer(package: str) -> None:
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not an importable package: the imports below raise the usual error
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _DeferredPackage
    sys.modules[package] = module


_defer("pyroute2")

from pyroute2.iproute.linux import AsyncIPRoute  # noqa: E402
from pyroute2.netlink import (  # noqa: E402
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.rtnl import RTMGRP_LINK  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402

__all__ = [
    "NLM_F_ACK",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_REPLACE",
    "NLM_F_REQUEST",
    "RTMGRP_LINK",
    "AsyncIPRoute",
    "NetlinkError",
    "nlmsg",
    "rtmsg",
]
