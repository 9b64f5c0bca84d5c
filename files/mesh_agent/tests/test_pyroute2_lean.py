"""The agent imports pyroute2's rtnetlink modules without the package __init__ (RSS)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import mesh_agent.agent  # the whole agent, as the unit starts it
lean = sorted(k for k in sys.modules if k.startswith("pyroute2"))
deferred = type(sys.modules["pyroute2"]).__name__
from pyroute2 import IPRoute, NDB  # other code in the process still sees the package
full = sorted(k for k in sys.modules if k.startswith("pyroute2"))
print(json.dumps({"lean": lean, "deferred": deferred, "full": len(full),
                  "iproute": IPRoute.__module__, "ndb": NDB.__module__}))
"""


def test_agent_imports_skip_the_package_init_and_the_package_still_works() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout
    r = json.loads(out)
    assert r["deferred"] == "_DeferredPackage"
    # The package-wide APIs the agent never uses are not loaded.
    for unused in ("pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.netlink.nl80211"):
        assert unused not in r["lean"]
    assert "pyroute2.iproute.linux" in r["lean"]
    # The first re-exported name ran the real __init__ in the same module object.
    assert r["full"] > len(r["lean"])
    assert r["iproute"] == "pyroute2.iproute.linux"
    assert r["ndb"] == "pyroute2.ndb.main"
