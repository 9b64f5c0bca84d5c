"""Leases without I/O: the cap, the neighbourhood rule, fencing, the refusals and their reasons.

:class:`FakeEtcd` answers the four requests :class:`EtcdLeases` makes (lease grant and
revoke, the grant and validate transactions) with the v3 JSON gateway's semantics as
far as they are used (compares on ``create_revision``, puts on a lease, prefix ranges,
one revision per writing transaction, keys deleted with their lease). The same
requests go to a real 3-member etcd in ``test_mapek_etcd.py``.
"""

from __future__ import annotations

import math
import random
from typing import Any

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_agent.mapek import MapeK, Observation
from mesh_agent.mapek.etcd import EtcdLeases, Unreachable, parse_endpoint
from mesh_agent.mapek.execute import Executor
from mesh_agent.mapek.lease import (
    DEFAULT_PREFIX,
    Fence,
    LeaseKeys,
    Refusal,
    Retry,
    b64,
    fleet_cap,
    neighbourhood,
    unb64,
)
from mesh_agent.mapek.monitor import LinkSample, Target
from mesh_agent.mapek.plan import ActionKind
from mesh_agent.mapek.safety import Lease, Safety


class FakeEtcd:
    def __init__(self) -> None:
        self.now = 0.0
        self.revision = 1
        self.kv: dict[str, tuple[str, int, int]] = {}  # key: (value, create_rev, lease)
        self.leases: dict[int, float] = {}  # id: expiry
        self.next_lease = 100
        self.up = True
        self.posts = 0

    def expire(self) -> None:
        for lid in [lid for lid, at in self.leases.items() if at <= self.now]:
            self.revoke(lid)

    def revoke(self, lid: int) -> None:
        self.leases.pop(lid, None)
        for key in [k for k, (_v, _r, lease) in self.kv.items() if lease == lid]:
            del self.kv[key]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        self.posts += 1
        if not self.up:
            raise Unreachable("127.0.0.1:2379: ConnectionTimeoutError")
        self.expire()
        if path == "/lease/grant":
            self.next_lease += 1
            self.leases[self.next_lease] = self.now + body["TTL"]
            return {"ID": str(self.next_lease), "TTL": str(body["TTL"])}
        if path == "/kv/lease/revoke":
            self.revoke(int(body["ID"]))
            return {}
        assert path == "/kv/txn", path
        ok = all(c["target"] == "CREATE" and c["result"] == "EQUAL"
                 and self.kv.get(unb64(c["key"]), ("", 0, 0))[1] == int(c["create_revision"])
                 for c in body["compare"])
        ops = body["success"] if ok else body["failure"]
        if any("request_put" in op for op in ops):
            self.revision += 1
        responses = []
        for op in ops:
            if "request_put" in op:
                put = op["request_put"]
                assert int(put["lease"]) in self.leases
                key = unb64(put["key"])
                self.kv[key] = (unb64(put["value"]), self.revision, int(put["lease"]))
                responses.append({"response_put": {}})
            else:
                start = unb64(op["request_range"]["key"])
                kvs = [{"key": b64(k), "value": b64(v), "create_revision": str(r)}
                       for k, (v, r, _lease) in sorted(self.kv.items()) if k.startswith(start)]
                responses.append({"response_range": {"kvs": kvs} if kvs else {}})
        answer: dict[str, Any] = {"header": {"revision": str(self.revision)},
                                  "responses": responses}
        if ok:  # the gateway omits false fields
            answer["succeeded"] = True
        return answer


def provider(etcd: FakeEtcd, graph: nx.Graph, node: str, cap_pct: float = 5.0) -> EtcdLeases:
    p = EtcdLeases(["http://127.0.0.1:2379"], lambda: neighbourhood(graph, node),
                   cap_pct=cap_pct, retry_s=10.0)
    p._post = etcd.post  # type: ignore[method-assign]
    return p


# -- the pure parts -----------------------------------------------------------------------
def test_fleet_cap_examples() -> None:
    assert [fleet_cap(n, 5.0) for n in (1, 10, 20, 21, 50, 100, 1000)] == [1, 1, 1, 2, 3, 5, 50]
    assert fleet_cap(4, 75.0) == 3 and fleet_cap(3, 100.0) == 3
    for bad in ((0, 5.0), (10, 0.0), (10, 101.0)):
        with pytest.raises(ValueError):
            fleet_cap(*bad)


@given(st.integers(1, 5000), st.floats(0.1, 100.0))
def test_fleet_cap_is_the_ceiling_and_at_least_one(fleet: int, pct: float) -> None:
    cap = fleet_cap(fleet, pct)
    exact = pct * fleet / 100
    assert cap >= 1 and cap >= exact - 1e-6 and (cap == 1 or cap < exact + 1)


@given(st.lists(st.integers(0, 10**6), max_size=50))
def test_fence_admits_only_a_non_decreasing_sequence(tokens: list[int]) -> None:
    f = Fence()
    verdicts = [f.admit(t) for t in tokens]
    # Admitted exactly when no earlier token was newer.
    assert verdicts == [t >= max([0, *tokens[:i]]) for i, t in enumerate(tokens)]
    assert not f.admit(None)


def test_neighbourhood_counts_hops_not_costs() -> None:
    g = nx.path_graph(["a", "b", "c", "d", "e"])
    g["a"]["b"]["weight"] = 100
    assert neighbourhood(g, "a") == (5, frozenset({"a", "b", "c"}))
    assert neighbourhood(g, "c") == (5, frozenset({"a", "b", "c", "d", "e"}))
    assert neighbourhood(nx.Graph(), "z") == (1, frozenset({"z"}))


def test_grant_txn_compares_the_slot_and_every_neighbour_and_puts_on_the_lease() -> None:
    keys = LeaseKeys()
    claim = keys.claim("b", 1, {"a", "c"}, 3)
    txn = keys.grant_txn(claim, 42)
    assert [unb64(c["key"]) for c in txn["compare"]] == [
        f"{DEFAULT_PREFIX}slot/1", *(f"{DEFAULT_PREFIX}holder/{n}" for n in "abc")]
    assert all(c["create_revision"] == "0" for c in txn["compare"])
    assert [(unb64(p["request_put"]["key"]), p["request_put"]["lease"]) for p in txn["success"]] \
        == [(f"{DEFAULT_PREFIX}slot/1", "42"), (f"{DEFAULT_PREFIX}holder/b", "42")]
    with pytest.raises(ValueError):
        keys.claim("b", 3, {"a"}, 3)  # outside the cap
    with pytest.raises(ValueError):
        keys.claim("b", 0, {f"n{i}" for i in range(200)}, 3)  # beyond etcd's txn size


def test_decide_names_the_reason() -> None:
    keys = LeaseKeys()
    claim = keys.claim("b", 0, {"a", "c"}, 2)

    def failed(slots: list[int], holders: list[str]) -> dict[str, Any]:
        def kvs(keys_: list[str]) -> dict[str, Any]:
            return {"response_range": {"kvs": [{"key": b64(k)} for k in keys_]}}
        return {"header": {"revision": "9"},
                "responses": [kvs([keys.slot(s) for s in slots]),
                              kvs([keys.holder(h) for h in holders])]}

    assert keys.decide(claim, {"succeeded": True, "header": {"revision": "17"}}) == 17
    assert keys.decide(claim, failed([0], ["a"])) == Refusal("neighbourhood", "a")
    assert keys.decide(claim, failed([0, 1], ["x", "y"])) == Refusal("fleet_cap",
                                                                     "2 of 2 slots held")
    assert keys.decide(claim, failed([0], ["x"])) == Retry(1)
    with pytest.raises(ValueError):
        Refusal("because")


def test_parse_endpoint() -> None:
    assert parse_endpoint("http://10.0.0.1:2379") == ("http", "10.0.0.1", 2379)
    assert parse_endpoint("10.0.0.1:2379") == ("http", "10.0.0.1", 2379)
    for bad in ("ftp://x:1", "http://x", "http://:80"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


# -- the provider over the fake ----------------------------------------------------------
def test_grant_refuse_expire_and_the_token_grows() -> None:
    etcd = FakeEtcd()
    g = nx.path_graph(["a", "b", "c", "d", "e", "f"])
    a, b, f = (provider(etcd, g, n, cap_pct=34.0) for n in "abf")  # cap 3 of 6
    la = a.acquire("a", "restart_unit", 30, 0.0)
    assert isinstance(la, Lease) and la.token > 0 and la.expires_at == 30.0
    assert b.acquire("b", "restart_unit", 30, 1.0) == Refusal("neighbourhood", "a")
    lf = f.acquire("f", "restart_unit", 30, 1.0)  # 5 hops away: its own slot
    assert isinstance(lf, Lease) and lf.token > la.token
    assert a.validate(la, 2.0) and not a.validate(la, 30.0)  # the holder's own deadline
    etcd.now = 31.0  # the TTL ran out in etcd: nothing blocks b any longer
    assert not a.validate(Lease(la.token, "a", 1e9, la.lease_id), 31.0)
    lb = b.acquire("b", "restart_unit", 30, 31.0)
    assert isinstance(lb, Lease) and lb.token > lf.token
    b.release(lb)
    assert not any(k.endswith("/holder/b") for k in etcd.kv)


def test_no_quorum_refuses_with_a_reason_and_backs_off() -> None:
    etcd = FakeEtcd()
    etcd.up = False
    a = provider(etcd, nx.path_graph(["a", "b"]), "a")
    got = a.acquire("a", "restart_unit", 30, 0.0)
    assert isinstance(got, Refusal) and got.reason == "no_quorum" and "Timeout" in got.detail
    posts = etcd.posts
    assert a.acquire("a", "restart_unit", 30, 5.0).reason == "no_quorum"  # type: ignore[union-attr]
    assert etcd.posts == posts  # within retry_s: not even tried
    etcd.up = True
    assert isinstance(a.acquire("a", "restart_unit", 30, 10.0), Lease)
    # In the loop: the decision waits for the call (made off the event loop), the refusal
    # becomes the verdict with its reason, and the local actions still run meanwhile.
    etcd.up = False
    p = provider(etcd, nx.path_graph(["a", "b"]), "a")
    s = Safety("a", "enforce", p)
    assert s.check(ActionKind.ISOLATE_ORIGIN, 100.0).outcome == "pending:lease"
    v = Safety.settle(p.acquire("a", "isolate_origin", 30, 100.0))
    assert (v.allowed, v.outcome) == (False, "refused:no_lease")
    assert v.reason.startswith("no_quorum")
    assert s.check(ActionKind.QUARANTINE_LINK, 100.0).allowed


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 120), st.floats(0.02, 0.3), st.sampled_from([1.0, 5.0, 10.0]),
       st.randoms(use_true_random=False))
def test_the_cap_holds_when_75_percent_of_nodes_raise_the_trigger(
        n: int, p: float, cap_pct: float, rnd: random.Random) -> None:
    """draino #89: most nodes meet the condition at once; few may act, never neighbours."""
    g = nx.gnp_random_graph(n, p, seed=rnd.randrange(2**32))
    g = nx.relabel_nodes(g, {i: f"n{i}" for i in g})
    etcd = FakeEtcd()
    nodes = list(g)
    rnd.shuffle(nodes)
    raising = nodes[: math.ceil(0.75 * n)]
    holders = []
    for i, node in enumerate(raising):
        got = provider(etcd, g, node, cap_pct).acquire(node, "restart_unit", 30, i * 0.01)
        if isinstance(got, Lease):
            holders.append((node, got.token))
        else:
            assert got.reason in ("fleet_cap", "neighbourhood"), got
    cap = fleet_cap(n, cap_pct)
    assert 1 <= len(holders) <= cap
    tokens = [t for _n, t in holders]
    assert tokens == sorted(set(tokens))  # distinct and growing in grant order
    names = [h for h, _t in holders]
    for x in names:
        near = nx.single_source_shortest_path_length(g, x, cutoff=2)
        assert not (set(near) - {x}) & set(names), (x, names)


# -- the fence in the loop --------------------------------------------------------------
def test_the_executor_refuses_a_token_older_than_the_newest_it_has_seen() -> None:
    ex = Executor(0.05)
    node = Target("node", "rogue")
    newer = ex.build(ActionKind.ISOLATE_ORIGIN, node, 1, 0.0, lease_token=9)
    older = ex.build(ActionKind.ISOLATE_ORIGIN, node, 2, 1.0, lease_token=5)
    assert [o.op for o in ex.start(newer, 0.0)] == ["apply"]
    assert ex.start(older, 1.0) == []
    unleased = ex.build(ActionKind.RESTART_UNIT, Target("self", ""), 3, 2.0)
    assert ex.start(unleased, 2.0) == []  # no token at all


class Always:
    def __init__(self, kind: ActionKind) -> None:
        self.kind = kind

    def choose(self, cls: str, stats: object, available: object = None) -> str:
        return str(self.kind)


def lossy(at: float) -> Observation:
    return Observation(at=at, links=(LinkSample("b", 0.5, 0.002),))


def ask(loop: MapeK, p: EtcdLeases, steps: list[Any], now: float) -> list[Any]:
    """What the shell does with a step's lease requests (there in a worker thread)."""
    return [loop.leased(r.incident, p.acquire(r.holder, r.action, r.ttl_s, now), now)
            for s in steps for r in s.lease_requests]


def test_a_disruptive_action_waits_for_its_lease_and_carries_its_token() -> None:
    etcd = FakeEtcd()
    g = nx.path_graph(["a", "b"])
    p = provider(etcd, g, "a")
    loop = MapeK("a", "enforce", Always(ActionKind.RESTART_UNIT), 0.05, leases=p)
    steps = [loop.step(lossy(t)) for t in (0.0, 5.0)]
    inc = next(i for s in steps for i in s.opened)
    assert (inc.action, inc.action_outcome, inc.decided_at) == ("restart_unit", "pending:lease",
                                                                 None)
    assert not any(s.decided or s.ops for s in steps) and etcd.posts == 0  # no I/O in the core
    [answered] = ask(loop, p, steps, 5.5)
    assert answered.decided == [inc] and inc.decided_at == 5.5
    assert [(o.op, o.action.kind) for o in answered.ops] == [("apply", ActionKind.RESTART_UNIT)]
    token = answered.ops[0].action.lease_token
    assert token is not None and token == loop.executor.fence.newest > 0
    # One-shot: the lease goes back at once (the shell revokes it off the loop).
    assert [lease.token for lease in answered.releases] == [token]
    assert loop.actions_total == {("restart_unit", "applied"): 1}


def test_a_stale_token_is_refused_and_a_late_answer_after_recovery_does_nothing() -> None:
    etcd = FakeEtcd()
    g = nx.path_graph(["a", "b"])
    p = provider(etcd, g, "a")
    loop = MapeK("a", "enforce", Always(ActionKind.RESTART_UNIT), 0.05, leases=p)
    # A newer token was seen already (another holder, after this node's lease went stale).
    loop.executor.fence.admit(10**6)
    steps = [loop.step(lossy(t)) for t in (0.0, 5.0)]
    [answered] = ask(loop, p, steps, 5.5)
    inc = answered.decided[0]
    assert (inc.action, inc.action_outcome) == ("restart_unit", "refused:stale_token")
    assert answered.ops == [] and len(answered.releases) == 1
    assert loop.actions_total == {("restart_unit", "refused:stale_token"): 1}
    p.release(answered.releases[0])  # what the shell does with it
    # Recovered while its lease was being asked for: the grant is handed back unused.
    late = MapeK("a", "enforce", Always(ActionKind.RESTART_UNIT), 0.05, leases=p)
    steps = [late.step(lossy(t)) for t in (20.0, 25.0)]
    steps += [late.step(Observation(at=30.0 + 5 * k, links=(LinkSample("b", 0.0, 0.002),)))
              for k in range(4)]
    assert any(s.recovered for s in steps)
    [answered] = ask(late, p, steps, 50.0)
    assert answered.ops == [] and len(answered.releases) == 1
    assert answered.decided[0].action_outcome == "refused:recovered"
    assert late.actions_total == {}


def test_the_agent_gets_etcd_only_with_endpoints_and_talks_tls_with_its_own_certificate() -> None:
    from mesh_agent.config import parse_config
    from mesh_agent.mapek.safety import NoQuorum
    from mesh_agent.mapek.shell import lease_provider

    base = {"node_name": "a", "node_address": "10.77.0.1", "mapek": {"enabled": True}}
    g = nx.path_graph(["a", "b", "c", "d"])
    assert isinstance(lease_provider(parse_config(base), lambda: g), NoQuorum)
    cfg = parse_config({**base, "mapek": {"enabled": True, "lease": {
        "endpoints": ["https://10.77.0.5:2379", "https://10.77.0.9:2379"], "cap_pct": 50.0}}})
    p = lease_provider(cfg, lambda: g)
    assert isinstance(p, EtcdLeases) and p.cap_pct == 50.0
    assert [(c.protocol, c.host, c.port) for c in p.clients] == [
        ("https", "10.77.0.5", 2379), ("https", "10.77.0.9", 2379)]
    ident = cfg.identity
    assert p.clients[0].session.cert == (str(ident.cert), str(ident.key))
    assert p.clients[0].session.verify == str(ident.ca)
    assert p.topology() == (4, frozenset({"a", "b", "c"}))
    for bad in (["10.77.0.5:2379"], ["http://10.77.0.5"], ["http://10.77.0.5:2379/v3"], "x"):
        with pytest.raises(ValueError, match=r"mapek\.lease\.endpoints"):
            parse_config({**base, "mapek": {"lease": {"endpoints": bad}}})
