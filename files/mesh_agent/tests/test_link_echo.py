"""Echo mode of the link sensor (BFD's echo function): no sockets, time is a number.

The neighbour's kernel is played by :func:`meshcore_testkit.inprocess.kernel_reply`,
which turns an ICMP echo request into the IPv4 echo reply a raw socket would read.
"""

from __future__ import annotations

import copy
import itertools
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from meshcore_testkit.inprocess import kernel_reply
from meshcore_testkit.pki import PairKeysForTests

from mesh_agent.link import LinkSensor, NeighborDown
from mesh_agent.link.sensor import (
    ECHO_ADAPT_MAX_FACTOR,
    ECHO_CONTROL_MIN_S,
    ECHO_RTT_SAMPLES,
)
from mesh_agent.link.wire import (
    EchoProbe,
    WireError,
    _inet_checksum,
    decode_echo_reply,
    encode_echo_request,
)

IV = 0.05


def up_pair() -> tuple[LinkSensor, LinkSensor]:
    """a and b, two-way on mesh0 at t = 0.01."""
    a = LinkSensor("a", "10.77.0.1", IV, 3, keys=PairKeysForTests("a"))
    b = LinkSensor("b", "10.77.0.2", IV, 3, keys=PairKeysForTests("b"))
    a.add_interface("mesh0")
    b.add_interface("mesh0")
    b.receive("mesh0", a.build_hello("mesh0", 0.0), "10.78.0.0", 0.0)
    a.receive("mesh0", b.build_hello("mesh0", 0.01), "10.78.0.1", 0.01)
    b.receive("mesh0", a.build_hello("mesh0", 0.01), "10.78.0.0", 0.01)
    assert [n.state for n in a.neighbors()] == ["up"]
    return a, b


def probe_and_answer(a: LinkSensor, now: float, answered: bool = True) -> None:
    """a's tick at *now*: one probe to b, answered by b's kernel 0.1 ms later (or lost)."""
    requests = a.echo_requests("mesh0", now)
    assert [dest for dest, _ in requests] == ["10.78.0.1"]
    if answered:
        assert a.receive_echo("mesh0", kernel_reply(requests[0][1]), now + 0.0001)


def test_request_is_a_valid_icmp_echo_and_the_reply_decodes() -> None:
    req = encode_echo_request(EchoProbe(0x1234, 70000, 123456789))
    assert req[0] == 8 and _inet_checksum(req) == 0
    assert decode_echo_reply(kernel_reply(req)) == EchoProbe(0x1234, 70000 & 0xFFFF, 123456789)


def test_foreign_ping_reply_is_not_ours() -> None:
    # The same shape with another payload: a ping(8) from the same host.
    req = bytearray(encode_echo_request(EchoProbe(1, 1, 1)))
    req[8:12] = b"ping"
    req[2:4] = b"\0\0"
    req[2:4] = struct.pack("!H", _inet_checksum(bytes(req)))
    try:
        decode_echo_reply(kernel_reply(bytes(req)))
    except WireError as exc:
        assert "foreign" in str(exc)
    else:
        raise AssertionError("a foreign payload was accepted")


def test_no_probes_before_the_neighbour_is_up() -> None:
    a = LinkSensor("a", "10.77.0.1", IV, 3, keys=PairKeysForTests("a"))
    b = LinkSensor("b", "10.77.0.2", IV, 3, keys=PairKeysForTests("b"))
    a.add_interface("mesh0")
    b.add_interface("mesh0")
    a.receive("mesh0", b.build_hello("mesh0", 0.0), "10.78.0.1", 0.0)  # init, not two-way
    assert a.echo_requests("mesh0", 0.0) == []


def test_late_neighbour_process_is_not_dead_while_its_kernel_answers() -> None:
    """b's agent stops sending hellos for 0.6 s (starved); its kernel still answers."""
    a, _ = up_pair()
    probe_and_answer(a, 0.02)
    assert a.neighbors()[0].echo_active
    t = 0.02
    while t < 0.62:
        t += IV
        probe_and_answer(a, t)
        assert a.tick(t) == [], f"killed at {t:.2f} s"
    # The same silence on hello timing alone (no echo answered) kills b at 3 intervals.
    h, _ = up_pair()
    assert h.tick(0.01 + 3 * IV + 0.001) == [
        NeighborDown("mesh0", "b", "10.78.0.1", "timeout", 0.01 + 3 * IV + 0.001)
    ]


def test_dead_after_multiplier_unanswered_probes() -> None:
    a, _ = up_pair()
    probe_and_answer(a, 0.02)  # answered at 0.0201
    # The link dies after 0.02: the probes at 0.07 and 0.12 go unanswered.
    for t in (0.07, 0.12):
        probe_and_answer(a, t, answered=False)
        assert a.tick(t) == []
    # Two pending: only the control timeout (last hello at 0.01) is a deadline yet.
    assert a.next_deadline() == pytest.approx(0.01 + ECHO_CONTROL_MIN_S)
    # The third at 0.17: dead once the last answer is 3 intervals old, as with hellos.
    probe_and_answer(a, 0.17, answered=False)
    deadline = 0.0201 + 3 * IV
    assert a.next_deadline() == pytest.approx(deadline)
    assert a.tick(deadline - 0.001) == []
    events = a.tick(deadline)
    assert events == [NeighborDown("mesh0", "b", "10.78.0.1", "echo", deadline)]
    assert a.neighbors() == []


def test_our_own_stall_never_fakes_a_death() -> None:
    """Only probes actually sent count: a host asleep for 0.4 s sent one, not eight."""
    a, _ = up_pair()
    probe_and_answer(a, 0.02)
    # Probe at 0.07 (its answer lost), then our process sleeps until 0.47.
    probe_and_answer(a, 0.07, answered=False)
    assert a.tick(0.47) == []
    # The answer to a probe sent just before the stall sits in the socket and is
    # read before judging: the link is fine.
    a2, _ = up_pair()
    requests = a2.echo_requests("mesh0", 0.07)
    a2.receive_echo("mesh0", kernel_reply(requests[0][1]), 0.0701)
    assert a2.tick(0.47) == []


def test_neighbour_that_never_answers_stays_on_hello_timing() -> None:
    a, b = up_pair()
    for t in (0.02, 0.07):  # probes sent, ICMP filtered: never answered
        a.echo_requests("mesh0", t)
        a.receive("mesh0", b.build_hello("mesh0", t), "10.78.0.1", t)
    assert not a.neighbors()[0].echo_active
    assert a.tick(0.07 + 3 * IV - 0.001) == []
    assert [e.reason for e in a.tick(0.07 + 3 * IV + 0.001)] == ["timeout"]  # type: ignore[union-attr]


def test_hellos_still_matter_after_the_control_timeout() -> None:
    """Echoes answered but no hello for ECHO_CONTROL_MIN_S: the agent there is gone."""
    a, _ = up_pair()
    t = 0.02
    while t < 0.01 + ECHO_CONTROL_MIN_S - IV:
        probe_and_answer(a, t)
        assert a.tick(t) == []
        t += IV
    t = 0.01 + ECHO_CONTROL_MIN_S + 0.001
    probe_and_answer(a, t)
    assert [e.reason for e in a.tick(t)] == ["timeout"]  # type: ignore[union-attr]


def test_stale_duplicate_and_cross_interface_replies_change_nothing() -> None:
    a, _ = up_pair()
    a.add_interface("mesh1")
    ((_, req1),) = a.echo_requests("mesh0", 0.02)
    reply1 = kernel_reply(req1)
    assert not a.receive_echo("mesh1", reply1, 0.021)  # wrong interface
    assert a.receive_echo("mesh0", reply1, 0.021)
    assert not a.receive_echo("mesh0", reply1, 0.022)  # duplicate / replay
    nb = a.neighbors()[0]
    assert (nb.echo_seq, nb.echo_acked) == (1, 1)
    # A late answer for a neighbour that has since died is ignored too.
    ((_, req2),) = a.echo_requests("mesh0", 0.07)
    a.carrier_lost("mesh0", 0.08)
    assert not a.receive_echo("mesh0", kernel_reply(req2), 0.09)


@given(st.binary(max_size=120))
@settings(max_examples=500, deadline=None)
def test_random_packets_never_raise_or_change_state(data: bytes) -> None:
    a, _ = up_pair()
    a.echo_requests("mesh0", 0.02)
    before = copy.deepcopy(a.neighbors())
    assert a.receive_echo("mesh0", data, 0.03) is False
    assert a.neighbors() == before


def test_hellos_slow_down_in_echo_mode_and_speed_up_when_it_ends() -> None:
    """Once every neighbour on an interface answers our probes, hellos go out every
    ECHO_HELLO_EVERY-th tick announcing that interval; a neighbour not in echo mode
    (here: a new candidate) brings the interface back to every tick at once."""
    from mesh_agent.link.sensor import ECHO_HELLO_EVERY
    from mesh_agent.link.wire import decode_hello

    a, b = up_pair()
    assert a.hello_due("mesh0", 0.02)  # b is up but not in echo mode yet
    assert decode_hello(a.build_hello("mesh0", 0.02)).interval_ms == round(IV * 1000)
    probe_and_answer(a, 0.03)
    assert a.echo_only("mesh0")
    hello = decode_hello(a.build_hello("mesh0", 0.04))
    assert hello.interval_ms == round(ECHO_HELLO_EVERY * IV * 1000)
    sent = [t for t in (0.04 + i * IV for i in range(1, 3 * ECHO_HELLO_EVERY + 1))
            if a.hello_due("mesh0", t) and a.build_hello("mesh0", t)]
    assert len(sent) == 3
    # b still judges a by a's announced (slower) interval: not dead in between.
    b.receive("mesh0", a.build_hello("mesh0", 1.0), "10.78.0.0", 1.0)
    assert b.tick(1.0 + 3 * ECHO_HELLO_EVERY * IV - 0.001) == []
    # A stranger on the same interface: every tick again, at the full rate.
    c = LinkSensor("c", "10.77.0.3", IV, 3, keys=PairKeysForTests("c"))
    c.add_interface("mesh0")
    a.receive("mesh0", c.build_hello("mesh0", 1.01), "10.78.0.5", 1.01)
    assert not a.echo_only("mesh0") and a.hello_due("mesh0", 1.02)
    assert decode_hello(a.build_hello("mesh0", 1.02)).interval_ms == round(IV * 1000)


def a_on_time_b_late(
    b_runs_at: float, phase: float, a_late: tuple[float, ...] = (0.0,)
) -> list[NeighborDown]:
    """a and b up at 0.01; a's timer then keeps its word (as ``LinkTimer.tick``: read
    what is queued, hellos where due, probes, judge; tick k late by ``a_late[k]``, well
    under the harmless lag), b's kernel answering every probe; b's agent is starved
    and runs only at *b_runs_at*, reading a's queued hellos with their kernel arrival
    times, probing, and judging. What b declares dead."""
    a, b = up_pair()
    to_b: list[tuple[float, bytes]] = []
    to_a: list[tuple[float, bytes]] = []  # b's kernel's echo replies
    for k in itertools.count():
        t = 0.01 + phase + k * IV + a_late[k % len(a_late)]
        if t >= b_runs_at:
            break
        for at, reply in [r for r in to_a if r[0] <= t]:
            a.receive_echo("mesh0", reply, at)
            to_a.remove((at, reply))
        if a.hello_due("mesh0", t):
            to_b.append((t, a.build_hello("mesh0", t)))
        to_a += [(t + 0.0001, kernel_reply(probe)) for _, probe in a.echo_requests("mesh0", t)]
        assert a.tick(t) == []
    events = [ev for at, data in to_b for ev in b.receive("mesh0", data, "10.78.0.0", at)]
    b.echo_requests("mesh0", b_runs_at)  # answered, but read at b's next tick
    events += b.tick(b_runs_at)
    return [ev for ev in events if isinstance(ev, NeighborDown)]


@settings(max_examples=300, deadline=None)
@given(b_runs_at=st.floats(0.02, 0.9), phase=st.floats(0.0, IV - 0.001),
       a_late=st.lists(st.floats(0.0, 0.04), min_size=1, max_size=20).map(tuple))
@example(b_runs_at=0.25, phase=0.0, a_late=(0.0,))  # the first failure on the paced hellos
def test_a_late_peer_never_times_out_a_neighbour_entering_echo_mode(
    b_runs_at: float, phase: float, a_late: tuple[float, ...]
) -> None:
    """Issue 16's start-up false deaths (ringtree-72 at load 56-77: 54 timeouts, and 42
    one-way deaths at the other ends, about one per link). Once b answered a's first
    probe, a went to one hello every ECHO_HELLO_EVERY intervals, but its last hello
    had announced the full rate: b, not in echo mode with a yet (its own probe not
    sent or its answer not read: a late agent), judged a by 3 x 50 ms and timed it out
    in a's first slow gap. b's lateness must not kill a neighbour that kept its word;
    and b's own stall, below a's control timeout for it (1 s), kills nothing either."""
    assert a_on_time_b_late(b_runs_at, phase, a_late) == []


def test_entering_echo_mode_announces_the_slower_interval_before_going_quiet() -> None:
    from mesh_agent.link.sensor import ECHO_HELLO_EVERY
    from mesh_agent.link.wire import decode_hello

    a, _b = up_pair()
    probe_and_answer(a, 0.03)
    assert a.echo_only("mesh0")
    # The last hello (0.01) announced 50 ms: one more, announcing the slow rate, now.
    assert a.hello_due("mesh0", 0.04)
    hello = decode_hello(a.build_hello("mesh0", 0.04))
    assert hello.interval_ms == round(ECHO_HELLO_EVERY * IV * 1000)
    assert not a.hello_due("mesh0", 0.09)
    # A stretch (our own timers late) is announced at once as well.
    a.advertised_interval_s = 2 * IV
    assert a.hello_due("mesh0", 0.09)
    assert decode_hello(a.build_hello("mesh0", 0.09)).interval_ms == round(
        2 * ECHO_HELLO_EVERY * IV * 1000)
    a.advertised_interval_s = IV  # the stretch decays: nothing to say at once
    assert not a.hello_due("mesh0", 0.14)


def answer_after(a: LinkSensor, now: float, rtt: float) -> None:
    """a's probe at *now*, answered by b's kernel *rtt* later (the kernel's timestamp)."""
    requests = a.echo_requests("mesh0", now)
    assert a.receive_echo("mesh0", kernel_reply(requests[0][1]), now + rtt)


def test_fast_answers_keep_the_configured_detection_time() -> None:
    a, _ = up_pair()
    for i in range(300):
        answer_after(a, 0.02 + i * IV, 0.0001 * (1 + i % 7))
    nb = a.neighbors()[0]
    assert a.echo_dead_s(nb) == pytest.approx(3 * IV)
    assert len(nb.echo_rtts) == ECHO_RTT_SAMPLES == len(nb.echo_rtts_sorted)


def test_a_stall_it_has_seen_before_is_not_a_death_and_a_cut_still_is() -> None:
    """b's answers come 200 ms late now and then (a descheduled core, a retransmitting
    radio): the detection time grows to twice the 99th percentile, within its cap."""
    a, b = up_pair()
    t = 0.02
    for i in range(200):
        answer_after(a, t, 0.2 if i % 40 == 39 else 0.0002)
        if i % 5 == 0:  # b's hellos (the control timeout) keep coming
            a.receive("mesh0", b.build_hello("mesh0", t), "10.78.0.1", t)
        t += IV
    nb = a.neighbors()[0]
    assert a.echo_dead_s(nb) == pytest.approx(min(2 * 0.2, ECHO_ADAPT_MAX_FACTOR * 3 * IV))
    # The next stall: three probes unanswered for 0.25 s, then the answers arrive.
    last = t - IV + 0.0002
    pending = [a.echo_requests("mesh0", t + k * IV) for k in range(5)]
    assert a.tick(last + 0.25) == []  # the fixed 150 ms would have called it dead
    for k, requests in enumerate(pending):
        a.receive_echo("mesh0", kernel_reply(requests[0][1]), last + 0.26 + k * 1e-4)
    assert a.tick(last + 0.27) == [] and [n.name for n in a.neighbors()] == ["b"]
    # A real cut: nothing comes back; dead at the adapted time after the last answer.
    last = last + 0.26 + 4e-4
    for k in range(1, 12):
        a.echo_requests("mesh0", last + k * IV)
    deadline = last + a.echo_dead_s(nb)
    assert a.tick(deadline - 0.001) == []
    assert a.tick(deadline) == [NeighborDown("mesh0", "b", "10.78.0.1", "echo", deadline)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=600))
def test_the_adapted_detection_time_is_bounded(rtts: list[float]) -> None:
    a, _ = up_pair()
    nb = a.neighbors()[0]
    for rtt in rtts:
        nb.note_echo_rtt(rtt)
    base = 3 * IV
    assert base <= a.echo_dead_s(nb) <= ECHO_ADAPT_MAX_FACTOR * base
    assert nb.echo_rtts_sorted == sorted(nb.echo_rtts)
    assert list(nb.echo_rtts) == rtts[-ECHO_RTT_SAMPLES:]
