"""The rogue node class: a security verdict, not an MTTR.

Three enforce-mode agents in a line, n0 - n1 - n2. The chaos fault ``rogue`` on
n1 (a compromised node) floods its neighbours' advert port through the normal
fault path (journal, tag, deadline): first adverts that claim to come from a
node that does not exist and from n0 with a higher sequence number, both
without a valid signature; then adverts captured on the wire and replayed.
The verdict: no forged advert accepted (no route or topology entry for the
invented node, n0's routes and the victims' topologies unchanged), every
flood counted as rejected, and the victims' CPU bounded while flooded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_agent.topology import encode_unsigned, signature_trailer
from meshcore_testkit.agents import AgentMesh, api
from meshcore_testkit.marks import requires_root
from meshcore_testkit.pki import CA
from meshcore_tools.chaos import faults
from meshcore_tools.chaos.faults import Fault, Topo
from meshcore_tools.chaos.nodes import inject, leftovers, netns_nodes, remove

pytestmark = [requires_root, pytest.mark.slow]
EVIL = "10.77.0.99"


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentMesh]:
    with AgentMesh(3, [(0, 1), (1, 2)], tmp_path_factory.mktemp("rogue"), prefix="mcg",
                   ca=CA.create()) as mesh:
        mesh.wait_for(mesh.converged, 120, "three agents converged")
        yield mesh


def cpu(pid: int) -> float:
    import os

    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def flood(mesh: AgentMesh, fid: str, seconds: float, **params: object) -> dict[str, float]:
    """The rogue fault on n1 for ``seconds``; the victims' CPU share while it ran."""
    nodes = netns_nodes(lambda n: mesh.nodes[int(n[1:])].ns, mesh.base / "journal")
    fault = Fault("rogue", ("n1",), fid, {"rate": 1000, "seconds": seconds, **params})
    plan = faults.plan(fault, Topo(mesh.state))
    victims = {n.name: n.proc.pid for n in (mesh.nodes[0], mesh.nodes[2]) if n.proc}
    c0 = {n: cpu(p) for n, p in victims.items()}
    t0 = time.monotonic()
    res = inject(nodes, fault, plan, time.time() + seconds + 20, "rogue-test")
    assert all(r.data.get("ok") for r in res), [r.data for r in res]
    time.sleep(seconds)
    share = {n: (cpu(p) - c0[n]) / (time.monotonic() - t0) for n, p in victims.items()}
    assert all(r.data["ok"] for r in remove(nodes, fault, plan))
    assert leftovers(nodes, ["n0", "n1", "n2"]) == {}
    return share


def rejected_total(mesh: AgentMesh) -> float:
    """meshcore_adverts_rejected_total summed over its reasons, on both victims."""
    total = 0.0
    for i in (0, 2):
        _, body = api(mesh.nodes[i].ns, "/metrics")
        total += sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                     if line.startswith("meshcore_adverts_rejected_total{"))
    return total


def state(mesh: AgentMesh) -> tuple[list[str], list[str], list[str]]:
    topo = [json.loads(api(n.ns, "/v1/topology")[1]) for n in (mesh.nodes[0], mesh.nodes[2])]
    names = [",".join(sorted(x["name"] for x in t["nodes"])) for t in topo]
    return mesh.routes(0), mesh.routes(2), names


def test_forged_and_replayed_adverts_are_never_accepted(line: AgentMesh, tmp_path: Path) -> None:
    before = state(line)
    rejected0 = rejected_total(line)
    forged = [
        encode_unsigned("evil", EVIL, 1, (("n1", 1.0),), b"") + signature_trailer(b"\0" * 64),
        encode_unsigned("n0", line.nodes[0].address, 1 << 40, (("n1", 1.0), ("evil", 1.0)),
                        b"\x30\x00") + signature_trailer(b"\1" * 64),
    ]
    path = tmp_path / "forged.bin"
    with path.open("wb") as f:
        for d in forged:
            f.write(len(d).to_bytes(4, "big") + d)
    cpu_forged = flood(line, "rogue1", 6, mode="file", datagrams=str(path))
    cpu_replay = flood(line, "rogue2", 6, mode="replay")
    rejected = rejected_total(line) - rejected0
    print(json.dumps({"rejected": rejected, "cpu_share_forged": cpu_forged,
                      "cpu_share_replay": cpu_replay}))
    assert state(line) == before  # nothing forged got in, nothing real was lost
    for n in line.nodes:
        assert EVIL not in "\n".join(line.routes(n.index))
    assert rejected > 1000  # counted, not silently dropped (the log is rate-limited)
    assert max(cpu_forged.values()) < 0.6 and max(cpu_replay.values()) < 0.6
