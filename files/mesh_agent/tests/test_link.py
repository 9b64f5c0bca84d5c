"""Link sensing core: no sockets, no sleeps; time is a number we advance."""

from __future__ import annotations

import contextlib
import itertools
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshcore_testkit.pki import PairKeysForTests

from mesh_agent.link import (
    Hello,
    LinkSensor,
    NeighborDown,
    NeighborUp,
    WireError,
    decode_hello,
    encode_hello,
)
from mesh_agent.link.sensor import COUNTS_KEEP_S
from mesh_agent.link.wire import Echo
from mesh_agent.mapek.monitor import LOSS_MIN_HELLOS, LinkSample, Monitor, Observation, Signal

IV = 0.05


def sensor(name: str, session: int = 1) -> LinkSensor:
    addr = {"a": "10.77.0.1", "b": "10.77.0.2"}[name]
    return LinkSensor(name, addr, IV, 3, keys=PairKeysForTests(name), session=session)


def pair() -> tuple[LinkSensor, LinkSensor]:
    a = sensor("a")
    b = sensor("b")
    a.add_interface("mesh0")
    b.add_interface("mesh0")
    return a, b


def exchange(a: LinkSensor, b: LinkSensor, now: float, delay: float = 0.0) -> list[object]:
    """a and b hello each other at *now*; each hello is delivered after *delay*."""
    events: list[object] = []
    ha = a.build_hello("mesh0", now)
    hb = b.build_hello("mesh0", now)
    events += b.receive("mesh0", ha, "10.0.0.0", now + delay)
    events += a.receive("mesh0", hb, "10.0.0.1", now + delay)
    return events


def test_wire_roundtrip() -> None:
    h = Hello(7, 123456, 50, "10.77.0.9", "node-9", (Echo("x", 3, 99, 10),), session=77)
    got = decode_hello(encode_hello(h, [("x", b"k" * 32)]))
    assert (got.seq, got.tx_ts_us, got.interval_ms, got.node_address, got.name) == (
        7,
        123456,
        50,
        "10.77.0.9",
        "node-9",
    )
    assert got.echoes == h.echoes and got.session == 77
    assert [n for n, _ in got.auth] == ["x"] and len(got.digest) == 32


def test_neighbor_up_needs_two_way() -> None:
    a, b = pair()
    # b hears a, but a has not heard b yet, so a's hello has no tag for b: b
    # only notes a candidate (no neighbour state) and asks a for its certificate.
    assert b.receive("mesh0", a.build_hello("mesh0", 0.0), "10.0.0.0", 0.0) == []
    assert b.neighbors() == [] and b.drops["unauthenticated"] == 1
    assert [(s.ifname, s.link_address) for s in b.take_solicits()] == [("mesh0", "10.0.0.0")]
    # a hears b (b's hello lists a): a declares b up.
    ev = a.receive("mesh0", b.build_hello("mesh0", 0.01), "10.0.0.1", 0.01)
    assert ev == [NeighborUp("mesh0", "b", "10.0.0.1", "10.77.0.2", 0.01)]
    ev = b.receive("mesh0", a.build_hello("mesh0", 0.05), "10.0.0.0", 0.05)
    assert len(ev) == 1 and isinstance(ev[0], NeighborUp) and ev[0].name == "a"
    assert a.best_links()["b"].link_address == "10.0.0.1"


def test_rtt_from_echo() -> None:
    a, b = pair()
    now = 0.0
    for _ in range(10):
        exchange(a, b, now, delay=0.002)  # 2 ms one way
        now += IV
    nb = a.neighbors()[0]
    assert nb.rtt_last_s == pytest.approx(0.004, abs=1e-5)
    assert nb.rtt_s == pytest.approx(0.004, abs=1e-4)


def test_loss_over_window() -> None:
    a, b = pair()
    now = 0.0
    exchange(a, b, now)
    for i in range(1, 41):
        now += IV
        hb = b.build_hello("mesh0", now)
        if i % 4 != 0:  # drop every 4th hello of b
            a.receive("mesh0", hb, "10.0.0.1", now)
        b.receive("mesh0", a.build_hello("mesh0", now), "10.0.0.0", now)
    nb = a.neighbors()[0]
    assert nb.loss() == pytest.approx(0.25, abs=0.05)
    assert nb.cost() == 3.0
    assert nb.state == "up"


def test_hello_counts_take_late_hellos_once_and_no_duplicate() -> None:
    a, b = pair()
    exchange(a, b, 0.0)
    held = []
    for i in range(1, 42):
        hb = b.build_hello("mesh0", i * IV)
        if i % 4 == 0:
            held.append(hb)  # lost for now
        else:
            a.receive("mesh0", hb, "10.0.0.1", i * IV)
            a.receive("mesh0", hb, "10.0.0.1", i * IV)  # a duplicate counts nothing
        b.receive("mesh0", a.build_hello("mesh0", i * IV), "10.0.0.0", i * IV)
    nb = a.neighbors()[0]
    # b's hello at 0 did not list a yet (not authenticated): the session starts at 1;
    # 31 of its 41 hellos since arrived.
    assert nb.hello_counts() == (31, 41)
    # Two of the held ones arrive late: the last is inside the sensor's window and
    # counts; the first is older than it and is dropped.
    for late in (held[-1], held[0], held[-1]):
        a.receive("mesh0", late, "10.0.0.1", 42 * IV)
    assert nb.hello_counts() == (32, 41)


def lossy_link_run(seconds: float, loss: float, seed: int = 5, sample_every: float = 5.0,
                   cut: tuple[float, float] | None = None,
                   ) -> list[tuple[tuple[int, int], int] | None]:
    """a and b hello each other every IV; a hears b's hellos with *loss* (b hears all),
    and with *cut* = (period, length) none at all for *length* s of every *period* s.
    Returns, every *sample_every*, b's hello counts as a reports them and the hellos
    expected in b's current session alone (None: b was not up then)."""
    rng = random.Random(seed)
    a, b = pair()
    samples: list[tuple[tuple[int, int], int] | None] = []
    steps = int(seconds / IV)
    every = int(sample_every / IV)
    for i in range(steps):
        now = i * IV
        hb = b.build_hello("mesh0", now)
        cut_now = cut is not None and now % cut[0] >= cut[0] - cut[1]
        if not cut_now and rng.random() >= loss:
            a.receive("mesh0", hb, "10.0.0.1", now)
        b.receive("mesh0", a.build_hello("mesh0", now), "10.0.0.0", now)
        a.tick(now + IV / 2)
        b.tick(now + IV / 2)
        if i % every == every - 1:
            up = [nb for nb in a.up_neighbors() if nb.name == "b"]
            counts = up[0].hello_counts() if up else None
            samples.append((counts, up[0].last_seq - up[0].first_seq + 1)
                           if up and counts is not None else None)
    return samples


def test_hello_counts_run_on_across_sessions_that_end_between_samples() -> None:
    """40 % loss, and the link gone for 0.7 s of every 2.2 s: a times b out every 2.2 s
    (held down for a second after each, as it flaps), so most of b's sessions begin and
    end between two samples 5 s apart. The counts a reports run on across them (they
    never go back), so the hellos of every session count: over the run they read the
    loss (40 % of the 1.5 s it is there, all of the rest: 59 %), where the sessions up
    at the samples alone never held the 100 hellos the MAPE-K monitor's loss reading
    needs. Fed to the monitor, the link reads lossy."""
    samples = lossy_link_run(120.0, 0.4, cut=(2.2, 0.7))
    seen = [c for c in samples if c is not None]
    assert len(seen) >= 6
    counts = [c for c, _ in seen]
    assert all(x[0] <= y[0] and x[1] <= y[1] for x, y in itertools.pairwise(counts))
    heard, expected = counts[-1]
    assert expected >= 0.8 * 120.0 / IV  # nearly every hello b sent since the first session
    assert 0.45 <= 1 - heard / expected <= 0.65
    # The session up at a sample alone mostly holds too few hellos for a reading.
    assert statistics.median(own for _, own in seen) < LOSS_MIN_HELLOS / 2
    m = Monitor()
    readings = []
    for k, sample in enumerate(samples):
        links = (LinkSample("b", 0.0, None, sample[0], "mesh0"),) if sample else ()
        out = m.sample(Observation(5.0 * k, links))
        readings += [r for r in out if r.signal is Signal.LOSS]
    assert len(readings) >= 8 and all(r.crossed for r in readings[-5:]), readings


def test_hello_counts_start_anew_after_the_link_was_gone_for_long() -> None:
    a, b = pair()
    for i in range(20):
        exchange(a, b, i * IV)
    (nb,) = a.up_neighbors()
    assert nb.hello_counts() == (19, 19)  # b's first hello did not list a yet
    assert [type(e) for e in a.tick(20 * IV + 3 * IV + 0.01)] == [NeighborDown]
    # Back 2 s later, it counts on: the 10 hellos of the new session, and the 4 b should
    # have sent between the last one heard (at 19 IV) and its timeout (at 23 IV).
    for i in range(60, 70):
        exchange(a, b, i * IV)
    (nb,) = a.up_neighbors()
    assert nb.hello_counts() == (19 + 10, 19 + 4 + 10)
    # Gone longer than COUNTS_KEEP_S: a new session starts from nothing.
    a.tick(70 * IV + 3 * IV + 0.01)
    later = 70 * IV + COUNTS_KEEP_S + 1.0
    for k in range(10):
        exchange(a, b, later + k * IV)
    (nb,) = a.up_neighbors()
    assert nb.hello_counts()[1] <= 10  # type: ignore[index]


def test_a_penalty_raises_the_advertised_cost_until_removed() -> None:
    """The self-healing loop's input (quarantine): an extra cost per neighbour node."""
    a, b = pair()
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    assert a.advert_costs() == {"b": 1.0}
    assert a.set_penalty("b", 100.0)  # changed: the shell re-originates
    assert a.advert_costs() == {"b": 101.0}
    assert not a.set_penalty("b", 100.0)  # the same again: nothing to flood
    assert a.neighbors()[0].cost() == 1.0  # the measured cost is untouched
    assert not a.set_penalty("c", 50.0)  # not a neighbour (yet): kept, nothing to flood
    assert a.set_penalty("b", 0.0) and a.advert_costs() == {"b": 1.0}
    assert a.penalties == {"c": 50.0}


def test_dead_after_multiplier_misses() -> None:
    a, b = pair()
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    assert a.tick(IV + 3 * IV - 0.001) == []
    ev = a.tick(IV + 3 * IV + 0.001)
    assert len(ev) == 1 and isinstance(ev[0], NeighborDown)
    assert ev[0].reason == "timeout" and ev[0].name == "b"
    assert a.neighbors() == [] and a.tick(10.0) == []


def test_next_deadline_is_when_tick_would_kill() -> None:
    a, b = pair()
    assert a.next_deadline() is None
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    deadline = a.next_deadline()
    assert deadline == pytest.approx(IV + 3 * IV)
    assert a.tick(deadline - 1e-6) == []
    assert [type(e) for e in a.tick(deadline + 1e-6)] == [NeighborDown]
    assert a.next_deadline() is None


def test_carrier_lost_kills_at_once() -> None:
    a, b = pair()
    a.add_interface("mesh1")
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    ev = a.carrier_lost("mesh0", IV + 0.001)
    assert [(e.name, e.reason) for e in ev if isinstance(e, NeighborDown)] == [("b", "carrier")]
    assert a.up_neighbors() == []
    assert a.carrier_lost("mesh1", 1.0) == []


def test_hello_queued_before_carrier_loss_does_not_revive_the_neighbour() -> None:
    a, b = pair()
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    stale = b.build_hello("mesh0", 2 * IV)  # arrived at 2 IV, read after the carrier event
    a.carrier_lost("mesh0", 2 * IV + 0.002)
    assert a.receive("mesh0", stale, "10.0.0.1", 2 * IV) == []
    assert a.up_neighbors() == [] and a.drops["before_carrier_loss"] == 1
    # Carrier back: hellos that arrive from then on count again.
    exchange(a, b, 3 * IV)
    exchange(a, b, 4 * IV)
    assert [n.name for n in a.up_neighbors()] == ["b"]


def test_restart_is_a_new_session_that_echoes_us() -> None:
    a, b = pair()
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    # b restarts: new sensor, new session, seq starts again at 1.
    b2 = sensor("b", session=2)
    b2.add_interface("mesh0")
    # Its first hello cannot be authenticated (it has not heard us): no change.
    assert a.receive("mesh0", b2.build_hello("mesh0", 0.2), "10.0.0.1", 0.2) == []
    assert [n.state for n in a.neighbors()] == ["up"]
    # Once it hears us, its hello lists us, echoing a hello we just sent.
    b2.receive("mesh0", a.build_hello("mesh0", 0.25), "10.0.0.0", 0.25)
    ev = a.receive("mesh0", b2.build_hello("mesh0", 0.3), "10.0.0.1", 0.3)
    assert [type(e).__name__ for e in ev] == ["NeighborDown", "NeighborUp"]
    assert ev[0].reason == "restart"  # type: ignore[union-attr]
    assert [n.session for n in a.neighbors()] == [2]
    # A late duplicate (old seq, old timestamp) is not a restart.
    a2, b3 = pair()
    exchange(a2, b3, 0.0)
    late = b3.build_hello("mesh0", IV)
    exchange(a2, b3, 2 * IV)
    assert a2.receive("mesh0", late, "10.0.0.1", 2 * IV) == []
    assert a2.drops["old_seq"] == 1 and a2.up_neighbors()


def test_one_way_link_goes_down() -> None:
    a, b = pair()
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    # b stops hearing a (asymmetric loss) and drops it; a still hears b.
    assert [e.name for e in b.tick(1.0)] == ["a"]
    # One hello without us is not yet one-way (see the next test) ...
    assert a.receive("mesh0", b.build_hello("mesh0", 1.0), "10.0.0.1", 1.0) == []
    # ... two in a row are.
    ev = a.receive("mesh0", b.build_hello("mesh0", 1.05), "10.0.0.1", 1.05)
    assert [e.reason for e in ev if isinstance(e, NeighborDown)] == ["one-way"]


def test_one_sided_timeout_does_not_flap_the_other_side() -> None:
    """b was starved and timed a out; a must not answer with a one-way kill."""
    a, b = pair()
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    assert [e.name for e in b.tick(1.0)] == ["a"]
    assert a.receive("mesh0", b.build_hello("mesh0", 1.0), "10.0.0.1", 1.0) == []
    b.receive("mesh0", a.build_hello("mesh0", 1.01), "10.0.0.0", 1.01)  # b: a in init
    assert a.receive("mesh0", b.build_hello("mesh0", 1.05), "10.0.0.1", 1.05) == []
    assert [n.state for n in a.neighbors()] == ["up"]


def test_announced_interval_is_what_peers_wait_for() -> None:
    a, b = pair()
    a.advertised_interval_s = 0.5  # a's timers run late: it asks for patience
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    assert b.next_deadline() == pytest.approx(IV + 3 * 0.5)
    assert b.tick(IV + 3 * IV + 0.01) == []


def test_self_and_unknown_interface_dropped() -> None:
    a, _ = pair()
    assert a.receive("mesh0", a.build_hello("mesh0", 0.0), "10.0.0.0", 0.0) == []
    assert a.receive("mesh9", a.build_hello("mesh0", 0.0), "10.0.0.0", 0.0) == []
    assert a.drops["self"] == 1 and a.drops["unknown_interface"] == 1
    assert a.neighbors() == []


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_decoder_only_raises_wireerror(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_hello(data)


@st.composite
def mutated_hellos(draw: st.DrawFn) -> bytes:
    h = Hello(
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(1, 65535)),
        "10.77.0.2",
        "b",
        (Echo("a", 1, 2, 3),),
    )
    raw = bytearray(encode_hello(h))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(raw)))
    return bytes(raw[:cut])


@given(st.one_of(st.binary(max_size=200), mutated_hellos()))
@settings(max_examples=500, deadline=None)
def test_random_bytes_never_raise_or_change_state(data: bytes) -> None:
    a, b = pair()
    exchange(a, b, 0.0)
    exchange(a, b, IV)
    before = [(n.name, n.state, n.last_seq, n.last_rx) for n in a.neighbors()]
    try:
        decode_hello(data)
        valid = True
    except WireError:
        valid = False
    a.receive("mesh0", data, "10.0.0.1", 2 * IV)  # must not raise
    if not valid:
        assert [(n.name, n.state, n.last_seq, n.last_rx) for n in a.neighbors()] == before
        assert a.drops["malformed"] == 1


def test_flapping_neighbor_is_held_down() -> None:
    a, b = pair()
    now = 0.0
    downs = 0
    for _ in range(3):  # three up/down cycles within the flap window
        for _ in range(2):
            exchange(a, b, now)
            now += IV
        assert a.up_neighbors()
        now += 4 * IV  # silence: b times out
        downs += len(a.tick(now))
        b.tick(now)
    assert downs == 3
    # Next time b is two-way again it stays in init for HOLD_DOWN_S.
    from mesh_agent.link.sensor import HOLD_DOWN_S

    start = now
    while now - start < HOLD_DOWN_S - 2 * IV:
        exchange(a, b, now)
        assert not a.up_neighbors()
        now += IV
    while now - start < HOLD_DOWN_S + 2 * IV:
        exchange(a, b, now)
        now += IV
    assert a.up_neighbors() and a.damped_total > 0


def test_downs_count_up_sessions_that_ended_and_a_hold_takes_the_link_down_until_it_ends(
) -> None:
    from mesh_agent.link.sensor import HOLD_DOWN_REASON

    a, b = pair()
    now = 0.0
    for _ in range(2):
        exchange(a, b, now)
        now += IV
    assert a.up_neighbors() and a.downs["b"] == 0
    # A session that ends by itself is a down.
    now += 4 * IV
    assert [e.name for e in a.tick(now) if isinstance(e, NeighborDown)] == ["b"]
    b.tick(now)
    assert a.downs["b"] == 1
    for _ in range(3):
        exchange(a, b, now)
        now += IV
    assert a.up_neighbors()
    # The loop holds b down: its session ends now, and that is not counted as a flap.
    end = now + 30.0
    events = a.set_hold("b", end, now)
    assert [(e.name, e.reason) for e in events if isinstance(e, NeighborDown)] == [
        ("b", HOLD_DOWN_REASON)]
    assert not a.up_neighbors() and a.downs["b"] == 1
    counts_before = a.neighbors()[0].hello_counts() if a.neighbors() else None
    while now < end - IV:
        exchange(a, b, now)
        assert not a.up_neighbors()
        now += IV
    counts = a.neighbors()[0].hello_counts()
    assert counts is not None and counts[0] > (counts_before or (0, 0))[0] + 100  # still heard
    while now < end + 3 * IV:
        exchange(a, b, now)
        now += IV
    assert a.up_neighbors() and "b" not in a.holds  # the sensor lifted it by itself
    # Lifted early by the loop (its undo): up again at the next two-way hellos.
    assert a.set_hold("b", now + 600.0, now) and not a.up_neighbors()
    assert a.set_hold("b", 0.0, now) == []
    exchange(a, b, now + IV)
    exchange(a, b, now + 2 * IV)
    assert a.up_neighbors() and a.downs["b"] == 1
