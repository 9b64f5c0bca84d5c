"""mesh-core's controller-side tools: what runs on the operator's machine or CI, never on a node.

- :mod:`meshcore_tools.netns`   network namespaces and veth links (lab, benchmarks, tests);
- :mod:`meshcore_tools.lab`     the local lab mesh (``labctl``);
- :mod:`meshcore_tools.grafana` the Grafana dashboard, generated as code;
- :mod:`meshcore_tools.image`   image build helpers (manifest, ext4 timestamps, QEMU boot test).

What is installed on the nodes lives elsewhere: the agent in ``files/mesh_agent``,
everything else in the roles.
"""

from pathlib import Path

# The checkout these tools run from: make setup installs them editable, so the
# lab's state (build/), its inventory and the roles are found next to them.
ROOT = Path(__file__).resolve().parents[2]
