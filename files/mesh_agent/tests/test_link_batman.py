"""batman-adv backend: recorded batctl JSON into the shared neighbour table.

The kernel here has no batman-adv, so batctl's output is replayed from
fixtures in the documented shape (tests/fixtures/batctl/README.md); the
subprocess layer runs a real process that stands in for batctl.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshcore_testkit.pki import CA
from starlette.testclient import TestClient

from mesh_agent.agent import Agent
from mesh_agent.api import create_app
from mesh_agent.config import ConfigError, parse_config
from mesh_agent.link import LinkSensor, NeighborDown, NeighborUp
from mesh_agent.link.batman import (
    BatmanNeighbor,
    BatmanSensor,
    parse_bat_hosts,
    parse_neighbors,
    parse_originators,
)
from mesh_agent.link.batman_io import BatctlError, batctl_json, batman_sensor, poll_batctl

FIXTURES = Path(__file__).parent / "fixtures" / "batctl"
IFNAMES = {3: "wlan0", 4: "wlan1"}
HOSTS = {"02:00:00:00:00:02": "node02", "02:00:00:00:00:03": "node03"}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def ifname_of(index: int) -> str:
    return IFNAMES.get(index, f"ifindex{index}")


def sensor(dead_after_s: float = 5.0) -> BatmanSensor:
    return BatmanSensor("node01", "10.77.0.1", dead_after_s, 3, hosts=HOSTS)


def test_iv_fixture_fills_the_neighbour_table() -> None:
    s = sensor()
    events = s.update(load("neighbors_iv.json"), load("originators_iv.json"), 100.0, ifname_of)
    ups = sorted((e.ifname, e.name) for e in events if isinstance(e, NeighborUp))
    assert ups == [("wlan0", "node02"), ("wlan0", "node03"), ("wlan1", "node03")]
    table = {(n.ifname, n.name): n for n in s.neighbors()}
    # 05 is heard but has no originator entry: not bidirectional yet.
    assert table[("wlan0", "02:00:00:00:00:05")].state == "init"
    # 09 was last seen 9 s ago, beyond dead_after (5 s): not in the table.
    assert all("09" not in name for _, name in table)
    tq = {k: n.tq for k, n in table.items() if isinstance(n, BatmanNeighbor)}
    assert tq[("wlan0", "node02")] == 251
    assert tq[("wlan0", "node03")] == 180
    assert tq[("wlan1", "node03")] == 120
    # Same quantised cost as the native backend: 1 + one per started 10 % of loss.
    assert table[("wlan0", "node02")].cost() == 1.0  # loss 1.6 %
    assert table[("wlan0", "node03")].cost() == 3.0  # loss 29.4 %
    assert table[("wlan1", "node03")].cost() == 6.0  # loss 52.9 %
    # Link age comes from batman's last-seen time.
    assert table[("wlan0", "node03")].last_rx == pytest.approx(100.0 - 0.48)
    # The cheapest link per neighbour node, as the native sensor picks it.
    best = s.best_links()
    assert sorted(best) == ["node02", "node03"]
    assert best["node03"].ifname == "wlan0"
    assert s.drops["malformed"] == 0
    # The whole mesh as batman sees it: 04 is two hops away via node02.
    best_origs = {o.mac: o.next_hop for o in s.originators if o.best}
    assert best_origs["02:00:00:00:00:04"] == "02:00:00:00:00:02"


def test_unnamed_neighbours_are_known_by_mac() -> None:
    s = BatmanSensor("node01", "10.77.0.1", 5.0)
    s.update(load("neighbors_iv.json"), load("originators_iv.json"), 1.0, ifname_of)
    assert "02:00:00:00:00:02" in s.best_links()


def test_v_fixture_uses_throughput() -> None:
    s = BatmanSensor("node01", "10.77.0.1", 5.0, hosts=HOSTS, reference_mbit=100.0)
    events = s.update(load("neighbors_v.json"), load("originators_v.json"), 10.0)
    assert sorted(e.name for e in events if isinstance(e, NeighborUp)) == ["node02", "node03"]
    table = {n.name: n for n in s.neighbors()}
    assert isinstance(table["node02"], BatmanNeighbor)
    assert table["node02"].throughput_mbit == pytest.approx(72.0)
    assert table["node02"].loss() == pytest.approx(0.28)
    assert table["node03"].cost() == 9.0  # 12.5 of 100 Mbit/s
    assert table["node02"].ifname == "wlan0"  # from hard_ifname, no index lookup


def test_neighbour_that_leaves_the_dump_goes_down() -> None:
    s = sensor()
    s.update(load("neighbors_iv.json"), load("originators_iv.json"), 100.0, ifname_of)
    neigh = [e for e in load("neighbors_iv.json") if e["neigh_address"] != "02:00:00:00:00:02"]
    events = s.update(neigh, load("originators_iv.json"), 101.0, ifname_of)
    assert events == [NeighborDown("wlan0", "node02", "02:00:00:00:00:02", "timeout", 101.0)]
    assert "node02" not in s.best_links()


def test_neighbour_not_heard_for_dead_after_goes_down() -> None:
    s = sensor(dead_after_s=2.0)
    s.update(load("neighbors_iv.json"), load("originators_iv.json"), 100.0, ifname_of)
    stale = [
        dict(e, last_seen_msecs=2500) if e["neigh_address"].endswith("03") else e
        for e in load("neighbors_iv.json")
    ]
    events = s.update(stale, load("originators_iv.json"), 101.0, ifname_of)
    downs = sorted((e.ifname, e.name) for e in events if isinstance(e, NeighborDown))
    assert downs == [("wlan0", "node03"), ("wlan1", "node03")]


def test_polling_stops_then_tick_ages_neighbours_out() -> None:
    s = sensor(dead_after_s=3.0)
    s.update(load("neighbors_iv.json"), load("originators_iv.json"), 100.0, ifname_of)
    assert s.tick(102.0) == []
    events = s.tick(103.5)  # node02 last seen at 99.88: 3.62 s ago
    assert ("wlan0", "node02") in {(e.ifname, e.name) for e in events}
    assert all(isinstance(e, NeighborDown) and e.reason == "timeout" for e in events)


def test_unchanged_dump_gives_no_events() -> None:
    s = sensor()
    s.update(load("neighbors_iv.json"), load("originators_iv.json"), 100.0, ifname_of)
    assert s.update(load("neighbors_iv.json"), load("originators_iv.json"), 101.0, ifname_of) == []


def test_hellos_are_ignored_in_batman_mode() -> None:
    s = sensor()
    assert s.receive("wlan0", b"MH\x01anything", "10.0.0.2", 1.0) == []
    assert s.drops["batman_backend"] == 1
    assert isinstance(s, LinkSensor)


def test_malformed_entries_are_counted_and_skipped() -> None:
    neigh = [*load("neighbors_iv.json"), {"neigh_address": "zz"}, 7, {"hard_ifindex": 3}]
    links, bad = parse_neighbors(neigh, ifname_of)
    assert (len(links), bad) == (5, 3)
    origs, bad = parse_originators({"not": "a list"}, ifname_of)
    assert (origs, bad) == ([], 1)
    origs, bad = parse_originators([dict(load("originators_iv.json")[0], tq=300)], ifname_of)
    assert bad == 0 and origs[0].tq is None  # out-of-range TQ is dropped, not trusted


def test_bat_hosts_file() -> None:
    text = "# batctl names\n02:00:00:00:00:02 node02\nnot-a-mac x\n02:00:00:00:00:03\tnode03 # c\n"
    assert parse_bat_hosts(text) == HOSTS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.sampled_from(
                [
                    "neigh_address",
                    "orig_address",
                    "hard_ifindex",
                    "hard_ifname",
                    "last_seen_msecs",
                    "tq",
                    "throughput",
                    "best",
                    "x",
                ]
            ),
            children,
            max_size=8,
        )
    ),
    max_leaves=30,
)
mac_like = st.sampled_from(["02:00:00:00:00:02", "02:00:00:00:00:0A", "zz", "", "02:00:00:00:00"])
entry = st.fixed_dictionaries(
    {},
    optional={
        "neigh_address": mac_like,
        "orig_address": mac_like,
        "hard_ifindex": st.integers(-5, 2**33),
        "hard_ifname": st.text(max_size=20),
        "last_seen_msecs": st.integers(-5, 2**33) | st.floats() | st.text(max_size=3),
        "tq": st.integers(-5, 600) | st.booleans(),
        "throughput": st.integers(-5, 2**33),
        "best": st.booleans() | st.integers(),
    },
)


@given(json_values | st.lists(entry, max_size=8), json_values | st.lists(entry, max_size=8))
@settings(max_examples=400, deadline=None)
def test_garbage_json_never_crashes(neighbors: Any, originators: Any) -> None:
    s = sensor()
    for now in (1.0, 2.0):
        for event in s.update(neighbors, originators, now, ifname_of):
            assert isinstance(event, NeighborUp | NeighborDown)
    for nb in s.neighbors():
        assert 0.0 <= nb.loss() <= 1.0
        assert 1.0 <= nb.cost() <= 11.0
        assert nb.state in ("init", "up")
    s.tick(100.0)
    assert s.up_neighbors() == []


@given(st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_garbage_bytes_from_batctl_never_crash(raw: bytes) -> None:
    try:
        data = json.loads(raw)
    except ValueError:
        return  # batctl_json turns this into BatctlError (tested below)
    sensor().update(data, data, 1.0, ifname_of)


def fake_batctl(tmp_path: Path, script: str) -> Path:
    """A stand-in batctl: the real one needs a batman-adv kernel."""
    path = tmp_path / "batctl"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_batctl_json_runs_the_command(tmp_path: Path) -> None:
    batctl = fake_batctl(
        tmp_path,
        f'[ "$1 $2" = "meshif bat0" ] || exit 3\ncat "{FIXTURES}/$3.json" 2>/dev/null '
        f'|| cat "{FIXTURES}/$(echo $3 | sed s/_json/_iv.json/)"\n',
    )
    data = asyncio.run(batctl_json(str(batctl), "bat0", "neighbors_json", 5.0))
    assert data == load("neighbors_iv.json")


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("echo 'Error - mesh interface bat0 does not exist' >&2; exit 1", "does not exist"),
        ("echo '[{\"neigh_address\": '", "not JSON"),
        ("sleep 5", "timed out"),
    ],
)
def test_batctl_failures_raise_batctl_error(tmp_path: Path, script: str, message: str) -> None:
    batctl = fake_batctl(tmp_path, script + "\n")
    with pytest.raises(BatctlError, match=message):
        asyncio.run(batctl_json(str(batctl), "bat0", "neighbors_json", 0.5))


def test_poll_feeds_events_and_survives_failures(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    batctl = fake_batctl(
        tmp_path,
        f'[ -e "{flag}" ] && exit 1\ncase "$3" in neighbors_json) f=neighbors_v;; '
        f'*) f=originators_v;; esac\ncat "{FIXTURES}/$f.json"\n',
    )
    cfg = parse_config(
        {
            "node_name": "node01",
            "node_address": "10.77.0.1",
            "link": {
                "backend": "batman",
                "batctl": str(batctl),
                "poll_interval_ms": 100,
                "bat_hosts": str(tmp_path / "bat-hosts"),
            },
        }
    )
    (tmp_path / "bat-hosts").write_text("02:00:00:00:00:02 node02\n")
    s = batman_sensor(cfg)
    seen: list[object] = []

    async def run() -> None:
        flag.touch()
        task = asyncio.create_task(poll_batctl(s, cfg.link, lambda: 1.0, seen.extend))
        await asyncio.sleep(0.35)
        assert s.drops["batctl_error"] >= 1 and seen == []
        flag.unlink()
        for _ in range(50):
            await asyncio.sleep(0.05)
            if seen:
                break
        task.cancel()

    asyncio.run(run())
    assert sorted(e.name for e in seen if isinstance(e, NeighborUp)) == [
        "02:00:00:00:00:03",
        "node02",
    ]


def test_config_link_backend() -> None:
    base = {"node_name": "n1", "node_address": "10.77.0.1"}
    assert parse_config(base).link.backend == "native"
    cfg = parse_config({**base, "link": {"backend": "batman", "mesh_interface": "bat1"}})
    assert (cfg.link.backend, cfg.link.mesh_interface) == ("batman", "bat1")
    for link, key in [
        ({"backend": "babel"}, "link.backend"),
        ({"poll_interval_ms": "1000"}, "link.poll_interval_ms"),
        ({"dead_after_ms": 500, "poll_interval_ms": 1000}, "link.dead_after_ms"),
        ({"mesh_interface": "bat 0"}, "link.mesh_interface"),
        ({"colour": "blue"}, "link.colour"),
        ("batman", "link"),
    ]:
        with pytest.raises(ConfigError, match=f"^{key}"):
            parse_config({**base, "link": link})
    with pytest.raises(ConfigError, match=r"^link\.backend: .*observe"):
        parse_config({**base, "mode": "enforce", "link": {"backend": "batman"}})


def test_agent_serves_the_batman_table(ca: CA, tmp_path: Path) -> None:
    """The agent picks the batman table from config; the API shows it like native neighbours."""
    (tmp_path / "bat-hosts").write_text("02:00:00:00:00:02 node02\n")
    cfg = parse_config(
        {
            "node_name": "node01",
            "node_address": "10.77.0.1",
            "link": {"backend": "batman", "bat_hosts": str(tmp_path / "bat-hosts")},
        }
    )
    agent = Agent(cfg, ca.identity("node01"))
    assert isinstance(agent.sensor, BatmanSensor)
    agent.sensor.update(load("neighbors_iv.json"), load("originators_iv.json"),
                        time.monotonic(), ifname_of)
    app = create_app(agent.view, agent.metrics.registry, agent.events)
    body = TestClient(app).get("/v1/neighbors").json()
    rows = {(n["interface"], n["name"]): n for n in body["neighbors"]}
    assert rows[("wlan0", "node02")]["state"] == "up"
    assert rows[("wlan0", "node02")]["echo_mode"] == "batman"  # batman-adv judges, no probes
    assert rows[("wlan0", "node02")]["link_address"] == "02:00:00:00:00:02"
    assert rows[("wlan1", "02:00:00:00:00:03")]["cost"] == 6.0
    assert rows[("wlan0", "02:00:00:00:00:05")]["state"] == "init"


# -- naming by derived MACs, flooding over the batman mesh, the netlink source ----
def derived(index: int, address: str) -> str:
    return f"02:{index:02x}:" + ":".join(f"{int(b):02x}" for b in address.split("."))


def test_address_of_mac_reads_derived_macs_only() -> None:
    from mesh_agent.link.batman import address_of_mac

    assert address_of_mac(derived(2, "10.77.0.3")) == "10.77.0.3"
    assert address_of_mac("02:00:00:00:00:02") is None  # index 0: not derived
    assert address_of_mac("52:54:00:12:34:56") is None  # a vendor MAC
    assert address_of_mac("not-a-mac") is None


def test_neighbours_are_named_by_the_advert_of_their_address() -> None:
    """Known by MAC until the signed advert for the address in the MAC arrives,
    then up under the advert's origin name (and only then in our advert's links)."""
    s = BatmanSensor("node01", "10.77.0.1", 5.0, 3)
    mac = derived(1, "10.77.0.2")
    neigh = [{"hard_ifname": "eth1", "neigh_address": mac, "last_seen_msecs": 100}]
    origs = [{"orig_address": mac, "neigh_address": mac, "hard_ifname": "eth1",
              "last_seen_msecs": 100, "tq": 250, "best": True}]  # fmt: skip
    events = s.update(neigh, origs, 10.0)
    assert [(e.name, e.node_address) for e in events if isinstance(e, NeighborUp)] == [
        (mac, "10.77.0.2")
    ]
    s.set_addresses({"node01": "10.77.0.1", "node02": "10.77.0.2"})
    events = s.update(neigh, origs, 11.0)
    assert [e.name for e in events if isinstance(e, NeighborUp)] == ["node02"]
    assert set(s.best_links()) == {"node02"}
    assert s.update(neigh, origs, 12.0) == []  # renamed once


def test_batman_floods_by_broadcast_and_relays_nothing() -> None:
    s = BatmanSensor("node01", "10.77.0.1", 5.0, 3)
    s.add_interface("br-lan")
    assert s.hello_interfaces() == []
    assert s.flood_targets() == [("br-lan", "255.255.255.255")]
    assert s.flood_targets(("br-lan", "10.77.0.2")) == []
    assert s.exchange_targets(NeighborUp("eth1", "node02", "02:01:0a:4d:00:02", "", 1.0)) == []


def test_native_floods_to_neighbours_but_the_sender() -> None:
    s = LinkSensor("node01", "10.77.0.1", 0.05, 3)
    s.add_interface("mesh0")
    assert s.hello_interfaces() == ["mesh0"]
    assert s.flood_targets() == []  # nobody up yet
    ev = NeighborUp("mesh0", "node02", "10.78.0.1", "10.77.0.2", 1.0)
    assert s.exchange_targets(ev) == [("mesh0", "10.78.0.1")]


def test_the_backend_names_neighbours_from_the_adverts_it_is_given() -> None:
    """The batman backend's poller feeds the core the LSDB's addresses before each
    update, so the shell never asks which backend it runs."""
    from mesh_agent.link.backend import make_backend
    from mesh_agent.link.batman_io import batman_backend

    cfg = parse_config({"node_name": "node01", "node_address": "10.77.0.1",
                        "link": {"backend": "batman", "poll_interval_ms": 100}})
    mac = derived(1, "10.77.0.2")
    neigh = [{"hard_ifname": "eth1", "neigh_address": mac, "last_seen_msecs": 100}]
    origs = [{"orig_address": mac, "neigh_address": mac, "hard_ifname": "eth1",
              "last_seen_msecs": 100, "tq": 250, "best": True}]  # fmt: skip
    known: dict[str, str] = {}

    async def fetch() -> tuple[object, object]:
        return neigh, origs

    backend = batman_backend(cfg, lambda: 1.0, lambda: known, fetch)
    assert not backend.echo and len(backend.pollers) == 1
    chosen = make_backend(cfg, None, lambda: 1.0, lambda: known)  # type: ignore[arg-type]
    assert chosen.sensor.hello_interfaces() == []  # no hellos: batman-adv senses the links
    seen: list[object] = []

    async def run() -> None:
        task = asyncio.create_task(backend.pollers[0](seen.extend))
        await asyncio.sleep(0.05)
        known.update({"node01": "10.77.0.1", "node02": "10.77.0.2"})  # its advert arrived
        await asyncio.sleep(0.15)
        task.cancel()

    asyncio.run(run())
    assert [e.name for e in seen if isinstance(e, NeighborUp)] == [mac, "node02"]


def test_netlink_dump_entries_read_like_batctl_json() -> None:
    """The kernel's batadv messages become batctl's JSON objects (encoded and
    decoded by pyroute2 here; the live dump runs in the emulated Pis)."""
    from mesh_agent.link.batman_netlink import BATADV_CMD_GET_ORIGINATORS, batadv_msg, entry

    msg = batadv_msg()
    msg["cmd"] = BATADV_CMD_GET_ORIGINATORS
    msg["version"] = 1
    msg["attrs"] = [
        ["BATADV_ATTR_ORIG_ADDRESS", "02:01:0a:4d:00:03"],
        ["BATADV_ATTR_NEIGH_ADDRESS", "02:02:0a:4d:00:02"],
        ["BATADV_ATTR_HARD_IFINDEX", 3],
        ["BATADV_ATTR_LAST_SEEN_MSECS", 420],
        ["BATADV_ATTR_TQ", 201],
        ["BATADV_ATTR_FLAG_BEST", None],
    ]
    msg.encode()
    parsed = batadv_msg(msg.data)
    parsed.decode()
    got = entry(parsed)
    assert got == {
        "orig_address": "02:01:0a:4d:00:03", "neigh_address": "02:02:0a:4d:00:02",
        "hard_ifindex": 3, "last_seen_msecs": 420, "tq": 201, "best": True,
    }  # fmt: skip
    origs, bad = parse_originators([got], ifname_of)
    assert bad == 0 and origs[0].tq == 201 and origs[0].best
