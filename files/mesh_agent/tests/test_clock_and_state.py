"""Time without a trustworthy clock (issue 14): the clock-trust rule, certificate
validity under it, and the persisted sequence-number reservation."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from meshcore_testkit.pki import CA, TRUST_DOMAIN

from mesh_agent.agent import Agent
from mesh_agent.config import parse_config
from mesh_agent.identity import Identity, IdentityError
from mesh_agent.identity.clock import ClockTrust, refresh
from mesh_agent.store.seq import FileSeqStore
from mesh_agent.topology import LinkStateDB, decode_advert

UTC = dt.UTC
FLOOR = dt.datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("policy", "now", "synced", "trusted"),
    [
        ("synchronized", FLOOR + dt.timedelta(days=30), False, False),  # no time source yet
        ("synchronized", FLOOR + dt.timedelta(days=30), True, True),
        ("synchronized", FLOOR - dt.timedelta(days=365), True, False),  # a year behind the CA
        ("always", FLOOR + dt.timedelta(days=1), False, True),
        ("always", FLOOR - dt.timedelta(days=1), False, False),
        ("never", FLOOR + dt.timedelta(days=1), True, False),
    ],
)
def test_clock_trust_rule(policy: str, now: dt.datetime, synced: bool, trusted: bool) -> None:
    rule = ClockTrust(policy, FLOOR)
    assert rule.update(now, synced) is trusted
    assert (rule.reason(now) == "") is trusted


def test_trust_latches_until_the_clock_falls_below_the_floor() -> None:
    rule = ClockTrust("synchronized", FLOOR)
    assert rule.update(FLOOR + dt.timedelta(days=1), True)
    assert rule.update(FLOOR + dt.timedelta(days=2), False)  # the flag went away: still trusted
    assert not rule.update(FLOOR - dt.timedelta(days=1), False)  # stepped back before the CA


def test_validity_window_checked_only_when_the_clock_is_trusted(ca: CA) -> None:
    """A node whose clock is a year behind sees every peer certificate as not yet
    valid; until its clock is trusted it must accept them on chain, name and key."""
    future = dt.datetime.now(UTC) + dt.timedelta(days=365)
    key, cert = ca.issue("b", addresses=["10.77.0.2"], days=400,
                         not_before=future - dt.timedelta(hours=1))
    b_der = Identity("b", TRUST_DOMAIN, key, cert, ca.cert, check_validity=False).cert_der
    me = ca.identity("a", "10.77.0.1")
    me.check_validity = False
    assert me.verify_cert(b_der, "b").name == "b"
    me.check_validity = True
    with pytest.raises(IdentityError, match="validity"):
        me.verify_cert(b_der, "b")
    # Our own not-yet-valid certificate does not stop us starting while untrusted.
    with pytest.raises(IdentityError):
        Identity("b", TRUST_DOMAIN, key, cert, ca.cert, node_address="10.77.0.2")
    Identity("b", TRUST_DOMAIN, key, cert, ca.cert, node_address="10.77.0.2",
             check_validity=False)


def test_agent_follows_the_sync_flag(ca: CA, tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    cfg = parse_config({"node_name": "a", "node_address": "10.77.0.1",
                        "clock_sync_file": str(flag)})
    agent = Agent(cfg, ca.identity("a", "10.77.0.1"))
    refresh(agent.view.clock_trust, agent.identity, time.time(), cfg.clock_sync_file)
    assert not agent.identity.check_validity
    assert agent.metrics.registry.get_sample_value("meshcore_clock_trusted") == 0
    flag.touch()
    refresh(agent.view.clock_trust, agent.identity, time.time(), cfg.clock_sync_file)
    assert agent.identity.check_validity
    assert agent.metrics.registry.get_sample_value("meshcore_clock_trusted") == 1


def test_file_seq_store_is_crash_safe_and_survives_restarts(ca: CA, tmp_path: Path) -> None:
    store = FileSeqStore(tmp_path)
    assert store.load() == 0
    db = LinkStateDB(ca.identity("a", "10.77.0.1"), "10.77.0.1", 60.0, store)
    first = decode_advert(db.originate({}, 1.0)[0]).seq
    assert first == 1
    saved = json.loads((tmp_path / "advert-seq.json").read_text())
    assert saved["reserved"] >= first
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed over
    # The next life starts after everything reserved, never reusing a seq.
    db2 = LinkStateDB(ca.identity("a", "10.77.0.1"), "10.77.0.1", 60.0, FileSeqStore(tmp_path))
    assert decode_advert(db2.originate({}, 1.0)[0]).seq > saved["reserved"]
    # A torn or foreign file reads as nothing reserved (state lost: the own-advert jump heals it).
    for junk in (b"", b"{not json", b'{"reserved": -5}', b'{"reserved": true}', b"\xff\xfe"):
        (tmp_path / "advert-seq.json").write_bytes(junk)
        assert FileSeqStore(tmp_path).load() == 0


def test_unwritable_state_dir_does_not_stop_origination(ca: CA, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    db = LinkStateDB(ca.identity("a", "10.77.0.1"), "10.77.0.1", 60.0, FileSeqStore(missing))
    assert decode_advert(db.originate({}, 1.0)[0]).seq == 1
    assert decode_advert(db.originate({}, 2.0)[0]).seq == 2
