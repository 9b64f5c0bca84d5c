"""Sans-I/O link sensing: hellos in, neighbour events out.

:class:`LinkSensor` never touches a socket or a clock. The caller passes the
bytes it received, the interface and source address, and ``now`` (monotonic
seconds); the sensor returns :class:`NeighborUp` / :class:`NeighborDown`
events. Liveness is BFD-like (RFC 5880 section 6.8.4): a neighbour is dead
when nothing was heard for ``dead_multiplier`` times *its* advertised hello
interval.

Loss-aware liveness. A link that loses a share p of its probes loses k of them in
a row now and then, at a rate of about ``rate * (1 - p) * p**k``: with 10 % loss
each way (p = 0.19 for an echo round trip) and 50 ms probes, three in a row come
every 7 s or so, so a fixed "dead after 3" made every such link flap every few
seconds, each flap a re-flood and a recompute at every node (docs/mapek.md). So
the run of misses that kills a neighbour is the shortest that a link with its
*measured* loss (the last :data:`LOSS_SAMPLES` probes or hellos, carried across
its sessions) reaches by chance at most once per :data:`FALSE_DEATH_S`
(:func:`misses_to_kill`): ``dead_multiplier`` on a clean link, 7 probes (350 ms)
at 10 % each way, and never more than :data:`ECHO_ADAPT_MAX_FACTOR` times
``dead_multiplier``. A link that dies outright is still caught in that many
probes: the misses of the run in progress never count towards the loss.

Cost. A link costs 1 plus one per started 10 % of loss, with the loss taken over
the last :data:`LOSS_SAMPLES` hellos; a level rises at once and falls only half a
step (:data:`COST_HYSTERESIS`) under its band: over 20 hellos a 10 % link read
anywhere from 0 to 25 % and its cost moved at most advert refreshes, each a flood
and a recompute at every node.

Echo mode (RFC 5880 section 6.4, BFD's echo function). Hellos are sent and
read by the neighbour's agent process, so a neighbour whose process runs late
(a CPU-starved host: 50 agents on 2 cores) looks dead while its kernel still
forwards every packet. Once a neighbour is up the agent also sends it, every
hello interval, an ICMP echo request that the neighbour's *kernel* answers
(:meth:`LinkSensor.echo_requests` / :meth:`LinkSensor.receive_echo`). After the
first answer the neighbour is in echo mode: it is dead when ``dead_multiplier``
probes in a row went unanswered and the last answer is ``dead_multiplier``
intervals old (the hello rule, with answers for hellos). Only probes actually
sent count, so our own lateness delays detection but never fakes it, and the
neighbour's lateness does not matter at all. Its hellos then only need to
arrive within the much longer control timeout (:data:`ECHO_CONTROL_MULT`). A
neighbour that never answers (ICMP filtered) stays on hello timing.

Authentication and bounds (hostile input). A hello changes state only when a
tag for us in it verifies under the pair key of the name it claims
(:mod:`mesh_agent.identity.hellokeys`): the name must match the identity
proven by that node's signed adverts. Until then:

* a name whose certificate we do not know, or a hello with no tag for us (the
  sender does not know *our* certificate yet), yields a :class:`Solicit`: the
  agent unicasts our own signed advert to that link address, rate-limited, so
  two fresh nodes learn each other's certificate in one exchange;
* an unauthenticated hello from a known name (not an established neighbour)
  only records a *candidate* (bounded per interface, oldest first out), which
  our hellos list with a tag so the sender can authenticate us in turn.

A wrong tag, a hello from another session (agent start) of an established
neighbour that does not echo one of our recent hellos (a replay of an old
session), a hello not sent with TTL 255 (GTSM, RFC 5082), and a new neighbour
beyond :data:`MAX_NEIGHBORS_PER_IF` are dropped and counted by reason in
``drops``; an established, authenticated neighbour is never evicted.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol

from mesh_agent.link.wire import (
    MAX_ECHO,
    Echo,
    EchoProbe,
    Hello,
    WireError,
    decode_echo_reply,
    decode_hello,
    encode_echo_request,
    encode_hello,
    tag_valid,
)

LOSS_WINDOW = 20
# Loss-aware liveness and cost (module docstring). The outcomes of a neighbour's last
# LOSS_SAMPLES echo probes and hellos are kept; a share is read once LOSS_MIN_SAMPLES are.
LOSS_SAMPLES = 256
LOSS_MIN_SAMPLES = 64
FALSE_DEATH_S = 3600.0
COST_HYSTERESIS = 0.05
# Flap damping, a much simplified RFC 2439: a neighbour that went down
# FLAP_THRESHOLD times within FLAP_WINDOW_S must stay two-way for HOLD_DOWN_S
# before it is up again. Without it a CPU-starved host (or a marginal radio)
# flaps every few hundred ms, and every flap re-floods, recomputes and
# reprograms, which starves the host further.
FLAP_WINDOW_S = 10.0
FLAP_THRESHOLD = 3
HOLD_DOWN_S = 1.0
# The reason of a session ended by the self-healing loop's hold-down (set_hold).
HOLD_DOWN_REASON = "hold-down"
# RTT smoothing as TCP's SRTT (RFC 6298 section 2): alpha = 1/8.
RTT_ALPHA = 0.125
# A neighbour that times us out puts us back in init and lists us again in its
# very next hello. Killing it on the first hello that lacks us turned every
# one-sided timeout into a two-sided flap (and a cascade on a starved host);
# a link is one-way only when this many hellos in a row lack us.
ONE_WAY_HELLOS = 2
# In echo mode the hellos only carry discovery, RTT and the two-way check, so a
# neighbour's agent may fall this many times its usual dead time behind (at
# least ECHO_CONTROL_MIN_S) before its hellos alone kill the link.
ECHO_CONTROL_MULT = 4
ECHO_CONTROL_MIN_S = 1.0
# Echo mode carries the liveness, so on an interface where every neighbour is up
# and answers our probes (and no candidate waits) our hellos only carry
# discovery, RTT, loss and the two-way check: they go out every
# ECHO_HELLO_EVERY-th hello interval and announce that interval (a peer whose
# probes to us go unanswered then detects us in dead_multiplier times it). The
# echo probes, and so the detection, keep the full rate. An interface goes back
# to every interval as soon as a neighbour or candidate there is not in echo mode.
# The slower interval is announced *before* the hellos slow down: the hello that
# last went out may have announced the full rate, and a peer not yet in echo mode
# with us (its probe answered but not read yet: a late agent) would time us out
# after dead_multiplier times that, inside the first slow gap.
ECHO_HELLO_EVERY = 5
# Sent-but-unanswered probes remembered per neighbour.
ECHO_WINDOW = 32
# The hello counts of a neighbour's ended sessions on an interface are kept this long
# after the last one ended, and a new session there counts on from them
# (:meth:`Neighbor.hello_counts`): a link losing 40 % times out about once a second, so
# most of its sessions begin and end between two samples of the MAPE-K monitor (5 s),
# whose loss reading needs 100 hellos and saw only the session up at its sample.
COUNTS_KEEP_S = 120.0
# Echo detection adapts to the jitter it measures (issue 16). A neighbour in echo
# mode is dead once its answers are ``dead_multiplier`` hello intervals late, or
# ECHO_JITTER_FACTOR times the 99th percentile of its last ECHO_RTT_SAMPLES echo
# round trips if that is longer, at most ECHO_ADAPT_MAX_FACTOR times the
# configured dead time. An answer's time is the kernel's receive timestamp, so the
# round trip is the link and the peer's kernel, never our own lateness: in a
# namespace lab (sub-millisecond round trips) nothing changes. On emulated Pis,
# whose cores a loaded host deschedules for 150 ms and more, and on radios that
# retransmit, the answers come late now and then, and a fixed 150 ms called one
# such stall a dead link every 20-40 s per link (docs/hw-lab.md).
ECHO_RTT_SAMPLES = 256
ECHO_RTT_QUANTILE = 0.99
ECHO_JITTER_FACTOR = 2.0
ECHO_ADAPT_MAX_FACTOR = 4.0
# Bounds (module docstring). Neighbours plus candidates fit one hello's echo list.
MAX_NEIGHBORS_PER_IF = 48
MAX_CANDIDATES_PER_IF = MAX_ECHO - MAX_NEIGHBORS_PER_IF
CANDIDATE_TTL_S = 5.0
# At most one solicitation per link address per second, SOLICIT_RATE per
# interface and second overall.
SOLICIT_INTERVAL_S = 1.0
SOLICIT_RATE = 10.0
# GTSM (RFC 5082): link-local protocol packets are sent with TTL 255, so one
# that arrives with less was forwarded by a router on its way.
GTSM_TTL = 255


class PairKeys(Protocol):
    def keys(self, name: str, now: float) -> list[bytes]: ...


class NoKeys:
    """No hello keys at all (a backend that never reads hellos)."""

    def keys(self, name: str, now: float) -> list[bytes]:
        return []


@dataclass(frozen=True)
class NeighborUp:
    ifname: str
    name: str
    link_address: str
    node_address: str
    at: float


@dataclass(frozen=True)
class NeighborDown:
    ifname: str
    name: str
    link_address: str
    reason: str  # timeout | echo | carrier | one-way | restart | removed
    at: float


Event = NeighborUp | NeighborDown


@dataclass(frozen=True)
class Solicit:
    """An on-link node cannot be authenticated yet: send it our own signed advert."""

    ifname: str
    link_address: str
    name: str
    at: float


@dataclass
class LossWindow:
    """The outcomes (lost or not) of the last :data:`LOSS_SAMPLES` probes or hellos."""

    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=LOSS_SAMPLES))
    lost: int = 0

    def note(self, lost: int) -> None:
        """*lost* missed, then one that arrived (one per hello or answer: no allocation)."""
        for _ in range(min(lost, LOSS_SAMPLES)):
            self._push(True)
        self._push(False)

    def _push(self, miss: bool) -> None:
        if len(self.outcomes) == LOSS_SAMPLES and self.outcomes[0]:
            self.lost -= 1
        self.outcomes.append(miss)
        self.lost += miss

    def share(self) -> float | None:
        """The share lost, or None before :data:`LOSS_MIN_SAMPLES` outcomes."""
        n = len(self.outcomes)
        return self.lost / n if n >= LOSS_MIN_SAMPLES else None


# What a neighbour's ended session leaves for its next one: (heard, expected) hellos,
# and the hello and echo outcome windows.
Ended = tuple[tuple[int, int], LossWindow, LossWindow]


def misses_to_kill(loss: float | None, rate_hz: float, floor: int, cap: int) -> int:
    """How many probes in a row, sent at *rate_hz*, must go unanswered before a link that
    loses a share *loss* of them is dead: the shortest run, at least *floor* and at most
    *cap*, that such a link reaches by chance at most once per :data:`FALSE_DEATH_S` (a
    run of k misses starts at a probe with probability at most ``loss**k``).

    >>> misses_to_kill(0.0, 20, 3, 12), misses_to_kill(0.19, 20, 3, 12)
    (3, 7)
    >>> misses_to_kill(0.64, 20, 3, 12), misses_to_kill(None, 20, 3, 12)
    (12, 3)
    """
    if loss is None or loss <= 0.0 or rate_hz <= 0.0:
        return floor
    if loss >= 1.0:
        return cap
    budget = 1.0 / (FALSE_DEATH_S * rate_hz)
    if budget >= 1.0:
        return floor
    return min(cap, max(floor, math.ceil(math.log(budget) / math.log(loss))))


@dataclass
class Candidate:
    """Heard but not authenticated (or recently dead): listed with a tag, never routed."""

    link_address: str
    last_seq: int
    last_peer_ts_us: int
    heard_at: float
    peer_interval_s: float


@dataclass
class Neighbor:
    ifname: str
    name: str
    node_address: str
    link_address: str
    first_seen: float
    last_rx: float
    peer_interval_s: float
    last_seq: int
    last_peer_ts_us: int
    session: int = 0
    # The newest of our hellos it echoed (our tx timestamp): a hello of another
    # session must echo a newer one to count as its restart (no replay).
    echoed_us_ts: int = -1
    state: str = "init"  # init (heard, not two-way) | up
    up_since: float | None = None
    rtt_s: float | None = None
    rtt_last_s: float | None = None
    received: set[int] = field(default_factory=set)
    first_seq: int = 0
    heard_total: int = 0  # distinct hellos received this session (late ones included)
    # (heard, expected) of this neighbour's earlier sessions on this interface that
    # ended less than COUNTS_KEEP_S before this one began.
    counts_before: tuple[int, int] = (0, 0)
    # Outcomes of its last hellos and of our last echo probes to it, carried on from
    # those sessions too (module docstring: loss-aware liveness and cost).
    hello_window: LossWindow = field(default_factory=LossWindow)
    echo_window: LossWindow = field(default_factory=LossWindow)
    cost_steps: int | None = None  # the cost's level (cost() - 1), with hysteresis
    missing_us: int = 0  # consecutive hellos from it that did not list us
    # Echo probes (module docstring): ICMP identifier, last seq sent, last seq
    # answered and when, send times of the unanswered ones, and whether any
    # was ever answered (echo mode).
    echo_ident: int = 0
    echo_seq: int = 0
    echo_acked: int = 0
    echo_last_rx: float = 0.0
    echo_sent: dict[int, float] = field(default_factory=dict)
    echo_active: bool = False
    # The last ECHO_RTT_SAMPLES echo round trips, in arrival order and sorted.
    echo_rtts: deque[float] = field(default_factory=lambda: deque(maxlen=ECHO_RTT_SAMPLES))
    echo_rtts_sorted: list[float] = field(default_factory=list)

    def note_echo_rtt(self, rtt: float) -> None:
        if len(self.echo_rtts) == ECHO_RTT_SAMPLES:
            del self.echo_rtts_sorted[bisect.bisect_left(self.echo_rtts_sorted,
                                                         self.echo_rtts[0])]
        self.echo_rtts.append(rtt)
        bisect.insort(self.echo_rtts_sorted, rtt)

    def echo_rtt_quantile(self) -> float:
        """The ECHO_RTT_QUANTILE of the recent echo round trips (0 before the first)."""
        xs = self.echo_rtts_sorted
        return xs[int(ECHO_RTT_QUANTILE * (len(xs) - 1))] if xs else 0.0

    def echo_pending(self) -> int:
        """Probes sent since the last answer."""
        return self.echo_seq - self.echo_acked

    def loss(self) -> float:
        """Fraction of the last :data:`LOSS_WINDOW` expected hellos not received."""
        expected = min(LOSS_WINDOW, self.last_seq - self.first_seq + 1)
        if expected <= 0:
            return 0.0
        lo = self.last_seq - expected + 1
        got = sum(1 for s in self.received if s >= lo)
        return max(0.0, 1.0 - got / expected)

    def hello_counts(self) -> tuple[int, int] | None:
        """(heard, expected) hellos of this session and the earlier ones it counts on from
        (:data:`COUNTS_KEEP_S`), for a loss over a longer window than :meth:`loss` (the
        MAPE-K monitor's); None where the quality has another source."""
        h, e = self.counts_before
        return h + self.heard_total, e + self.last_seq - self.first_seq + 1

    def cost_loss(self) -> float:
        """The loss the cost comes from: over the last :data:`LOSS_SAMPLES` hellos once
        :data:`LOSS_MIN_SAMPLES` were expected, before that :meth:`loss`."""
        share = self.hello_window.share()
        return self.loss() if share is None else share

    def cost(self) -> float:
        """Link cost: 1 plus one per started 10 % of loss (so 0-9 % costs 1, 25 % costs 3).

        Quantised, and quick to penalise, slow to forgive (as RFC 2439's damping): a
        level rises as soon as :meth:`cost_loss` reaches it, and falls only once the
        loss is :data:`COST_HYSTERESIS` under its band (from 2 back to 1 under 5 %), so
        a link whose loss jitters about a band's edge keeps the higher cost instead of
        re-flooding adverts and moving routes. A symmetric band let a link that had been
        clean keep cost 1 up to 15 % loss. The level is remembered; reading it again
        with the same loss changes nothing.
        """
        loss = self.cost_loss()
        steps = math.floor(loss * 10)
        cur = self.cost_steps
        if cur is None or steps > cur or loss < cur / 10 - COST_HYSTERESIS:
            cur = self.cost_steps = steps
        return 1.0 + cur

    def age(self, now: float) -> float:
        return now - (self.up_since if self.up_since is not None else self.first_seen)


class LinkSensor:
    """Neighbour table of all mesh interfaces of one node."""

    def __init__(
        self,
        node_name: str,
        node_address: str,
        hello_interval_s: float,
        dead_multiplier: int,
        keys: PairKeys | None = None,
        session: int = 0,
    ) -> None:
        self.node_name = node_name
        self.keys: PairKeys = keys if keys is not None else NoKeys()
        self.session = session
        self.node_address = node_address
        self.hello_interval_s = hello_interval_s
        # What our hellos announce; peers declare us dead after
        # dead_multiplier times this. The agent stretches it while its own
        # timers run late (a starved host), so peers do not flap us.
        self.advertised_interval_s = hello_interval_s
        self.dead_multiplier = dead_multiplier
        self._seq: dict[str, int] = {}
        self._table: dict[tuple[str, str], Neighbor] = {}
        self.rx_total = 0
        self.tx_total = 0
        self.drops: Counter[str] = Counter()
        self._flaps: dict[tuple[str, str], list[float]] = {}
        self.damped_total = 0
        # Per neighbour node, how often a session of it that was up ended (any interface,
        # any reason): the MAPE-K monitor's link-downs rate (flapping links) reads it.
        # Keys are names that passed the pair-key check: bounded by the fleet.
        self.downs: Counter[str] = Counter()
        # Per neighbour node, until when the self-healing loop holds its link down
        # (set_hold): no session of it comes up before then.
        self.holds: dict[str, float] = {}
        # Per (interface, name): what its last session ended with (its hello counts,
        # hello and echo outcomes), and when.
        self._ended: dict[tuple[str, str], tuple[Ended, float]] = {}
        # When each interface last lost carrier: a hello that arrived before
        # that (still queued when the kernel's event was read) is stale and
        # must not bring the neighbour straight back up.
        self._carrier_lost_at: dict[str, float] = {}
        # Echo probes: ICMP identifier -> neighbour key.
        self._echo_idents: dict[int, tuple[str, str]] = {}
        self._next_ident = 0x6D63  # "mc"; then +1 per neighbour, skipping live ones
        self.echo_tx_total = 0
        self.echo_rx_total = 0
        self._candidates: dict[tuple[str, str], Candidate] = {}
        self._solicited: dict[tuple[str, str], float] = {}
        self._solicit_tokens: dict[str, tuple[float, float]] = {}
        self._solicits: list[Solicit] = []
        self._next_hops: dict[str, tuple[str, str]] = {}
        # Extra cost per neighbour node on top of the loss-derived one: the
        # self-healing loop's quarantine input (mesh_agent.mapek, set_penalty).
        self.penalties: dict[str, float] = {}
        self._hello_at: dict[str, float] = {}  # when we last built a hello, per interface
        self._announced_ms: dict[str, int] = {}  # the interval it announced, per interface

    # -- interfaces -------------------------------------------------------
    def add_interface(self, ifname: str) -> None:
        self._seq.setdefault(ifname, 0)

    def remove_interface(self, ifname: str, now: float) -> list[Event]:
        events = self.carrier_lost(ifname, now, reason="removed")
        self._seq.pop(ifname, None)
        self._hello_at.pop(ifname, None)
        self._announced_ms.pop(ifname, None)
        for key in [k for k in self._candidates if k[0] == ifname]:
            del self._candidates[key]
        return events

    @property
    def interfaces(self) -> list[str]:
        return sorted(self._seq)

    # -- sending ----------------------------------------------------------
    def echo_only(self, ifname: str) -> bool:
        """Every neighbour on *ifname* is up and in echo mode, and no candidate waits."""
        nbs = [nb for (ifn, _), nb in self._table.items() if ifn == ifname]
        return (
            bool(nbs)
            and all(nb.state == "up" and nb.echo_active for nb in nbs)
            and not any(ifn == ifname for ifn, _ in self._candidates)
        )

    def hello_due(self, ifname: str, now: float) -> bool:
        """Whether a hello goes out on *ifname* at this tick (every tick, but every
        :data:`ECHO_HELLO_EVERY`-th in echo mode). A hello that would announce a
        longer interval than the last one there did is due at once: peers judge
        our silence by the last interval they heard, so we never fall quieter
        than that before saying so (entering echo mode, or a stretch)."""
        last = self._hello_at.get(ifname)
        if last is None or not self.echo_only(ifname):
            return True
        if self._announce_ms(ifname) > self._announced_ms.get(ifname, 0):
            return True
        return now - last >= (ECHO_HELLO_EVERY - 0.5) * self.hello_interval_s

    def _announce_ms(self, ifname: str) -> int:
        """The hello interval a hello on *ifname* announces now, as the wire carries it."""
        interval_s = self.advertised_interval_s * (
            ECHO_HELLO_EVERY if self.echo_only(ifname) else 1
        )
        return max(1, min(65535, round(interval_s * 1000)))

    def build_hello(self, ifname: str, now: float) -> bytes:
        seq = self._seq.get(ifname, 0) + 1
        self._seq[ifname] = seq
        self._hello_at[ifname] = now
        interval_ms = self._announced_ms[ifname] = self._announce_ms(ifname)
        now_us = int(now * 1e6)
        mine = [n for (ifn, _), n in sorted(self._table.items()) if ifn == ifname]
        listed = {n.name for n in mine}
        echoes = [
            Echo(n.name, n.last_seq, n.last_peer_ts_us, max(0, now_us - int(n.last_rx * 1e6)))
            for n in mine
        ]
        tagged = [n.name for n in mine]
        for (ifn, name), c in sorted(self._candidates.items()):
            if ifn != ifname or name in listed:
                continue
            if now - c.heard_at > CANDIDATE_TTL_S:
                continue
            tagged.append(name)
            # Listed as heard only while its hellos still arrive (not a dead neighbour).
            if now - c.heard_at <= self.dead_multiplier * c.peer_interval_s:
                held = max(0, now_us - int(c.heard_at * 1e6))
                echoes.append(Echo(name, c.last_seq, c.last_peer_ts_us, held))
        self.tx_total += 1
        return encode_hello(
            Hello(
                seq=seq,
                tx_ts_us=now_us,
                interval_ms=interval_ms,
                node_address=self.node_address,
                name=self.node_name,
                echoes=tuple(echoes[:MAX_ECHO]),
                session=self.session,
            ),
            [(name, key) for name in tagged for key in self.keys.keys(name, now)],
        )

    # -- receiving --------------------------------------------------------
    def receive(
        self, ifname: str, data: bytes, src: str, now: float, ttl: int | None = None
    ) -> list[Event]:
        """Handle one datagram. Malformed or unauthenticated input is counted and never raises.

        *ttl* is the IP TTL it arrived with, when the caller knows it (GTSM).
        """
        if src == "0.0.0.0":  # sender's interface has no address yet: no usable next hop
            self.drops["no_source_address"] += 1
            return []
        if ifname not in self._seq:
            self.drops["unknown_interface"] += 1
            return []
        if ttl is not None and ttl != GTSM_TTL:
            self.drops["ttl"] += 1
            return []
        try:
            hello = decode_hello(data)
        except WireError:
            self.drops["malformed"] += 1
            return []
        if hello.name == self.node_name:
            self.drops["self"] += 1
            return []
        if now <= self._carrier_lost_at.get(ifname, -1.0):
            self.drops["before_carrier_loss"] += 1
            return []
        key = (ifname, hello.name)
        keys = self.keys.keys(hello.name, now)
        if not keys:
            self.drops["unknown_identity"] += 1
            self._solicit(ifname, src, hello.name, now)
            return []
        if not tag_valid(hello, self.node_name, keys):
            if any(n == self.node_name for n, _ in hello.auth):
                self.drops["bad_auth"] += 1
                return []
            self.drops["unauthenticated"] += 1
            if key not in self._table:
                self._note_candidate(key, src, hello, now)
            self._solicit(ifname, src, hello.name, now)
            return []
        events: list[Event] = []
        nb = self._table.get(key)
        if nb is not None and hello.session != nb.session:
            # Another agent start of this neighbour, or a replay of an earlier
            # one: only a hello that echoes one of our recent hellos, newer than
            # any the current session echoed, is new.
            mine = next((e for e in hello.echoes if e.name == self.node_name), None)
            if mine is None or mine.echo_ts_us <= nb.echoed_us_ts or not self._fresh(hello, now):
                self.drops["stale_session"] += 1
                return []
            events.extend(self._kill(key, "restart", now))
            nb = None
        elif nb is not None and hello.seq <= nb.last_seq:
            if hello.seq > nb.last_seq - LOSS_WINDOW and hello.seq not in nb.received:
                nb.received.add(hello.seq)  # late; helps loss, not liveness
                nb.heard_total += 1
            self.drops["old_seq"] += 1
            return events
        if nb is None:
            if sum(1 for k in self._table if k[0] == ifname) >= MAX_NEIGHBORS_PER_IF:
                self.drops["table_full"] += 1
                return events
            nb = Neighbor(
                ifname=ifname,
                name=hello.name,
                node_address=hello.node_address,
                link_address=src,
                first_seen=now,
                last_rx=now,
                peer_interval_s=hello.interval_ms / 1000.0,
                last_seq=hello.seq,
                last_peer_ts_us=hello.tx_ts_us,
                session=hello.session,
                first_seq=hello.seq,
            )
            ended = self._ended.pop(key, None)
            if ended is not None and now - ended[1] <= COUNTS_KEEP_S:
                nb.counts_before, nb.hello_window, nb.echo_window = ended[0]
            nb.hello_window.note(0)
            self._table[key] = nb
            self._candidates.pop(key, None)
        else:
            nb.hello_window.note(hello.seq - nb.last_seq - 1)
        self.rx_total += 1
        nb.last_rx = now
        nb.last_seq = hello.seq
        nb.last_peer_ts_us = hello.tx_ts_us
        nb.peer_interval_s = hello.interval_ms / 1000.0
        nb.link_address = src
        nb.node_address = hello.node_address
        nb.received.add(hello.seq)
        nb.received = {s for s in nb.received if s > hello.seq - LOSS_WINDOW}
        nb.heard_total += 1

        mine = next((e for e in hello.echoes if e.name == self.node_name), None)
        if mine is not None and mine.echo_ts_us:
            rtt = now - mine.echo_ts_us / 1e6 - mine.delay_us / 1e6
            if 0.0 <= rtt < 60.0:
                nb.rtt_last_s = rtt
                nb.rtt_s = rtt if nb.rtt_s is None else nb.rtt_s + RTT_ALPHA * (rtt - nb.rtt_s)
        nb.missing_us = 0 if mine is not None else nb.missing_us + 1
        if mine is not None:
            nb.echoed_us_ts = max(nb.echoed_us_ts, mine.echo_ts_us)
        if (
            nb.state == "init"
            and mine is not None
            and self._fresh(hello, now)
            and not self._held_down(key, nb, now)
        ):
            nb.state = "up"
            nb.up_since = now
            events.append(NeighborUp(ifname, nb.name, src, nb.node_address, now))
        elif nb.state == "up" and nb.missing_us >= ONE_WAY_HELLOS:
            events.extend(self._kill(key, "one-way", now))
        return events

    def _fresh(self, hello: Hello, now: float) -> bool:
        """True when *hello* echoes a hello we sent recently (so it is no replay)."""
        mine = next((e for e in hello.echoes if e.name == self.node_name), None)
        if mine is None:
            return False
        age = now - mine.echo_ts_us / 1e6
        interval = max(self.hello_interval_s, hello.interval_ms / 1000.0)
        window = max(ECHO_CONTROL_MIN_S, ECHO_CONTROL_MULT * self.dead_multiplier * interval)
        return -0.001 <= age <= window

    def _note_candidate(self, key: tuple[str, str], src: str, hello: Hello, now: float) -> None:
        c = self._candidates.get(key)
        if c is None:
            on_if = [k for k in self._candidates if k[0] == key[0]]
            if len(on_if) >= MAX_CANDIDATES_PER_IF:
                del self._candidates[min(on_if, key=lambda k: self._candidates[k].heard_at)]
        self._candidates[key] = Candidate(
            src, hello.seq, hello.tx_ts_us, now, hello.interval_ms / 1000.0
        )

    def _solicit(self, ifname: str, src: str, name: str, now: float) -> None:
        last = self._solicited.get((ifname, src))
        if last is not None and now - last < SOLICIT_INTERVAL_S:
            return
        tokens, at = self._solicit_tokens.get(ifname, (SOLICIT_RATE, now))
        tokens = min(SOLICIT_RATE, tokens + (now - at) * SOLICIT_RATE)
        if tokens < 1.0:
            self._solicit_tokens[ifname] = (tokens, now)
            self.drops["solicit_limited"] += 1
            return
        self._solicit_tokens[ifname] = (tokens - 1.0, now)
        if len(self._solicited) >= 1024:
            self._solicited = {
                k: t for k, t in self._solicited.items() if now - t < SOLICIT_INTERVAL_S
            }
        self._solicited[(ifname, src)] = now
        self._solicits.append(Solicit(ifname, src, name, now))

    def take_solicits(self) -> list[Solicit]:
        """The solicitations since the last call (the caller sends our advert to each)."""
        out, self._solicits = self._solicits, []
        return out

    # -- echo probes (module docstring) -----------------------------------
    def echo_requests(self, ifname: str, now: float) -> list[tuple[str, bytes]]:
        """One ICMP echo request per up neighbour on *ifname*: (link address, packet)."""
        out: list[tuple[str, bytes]] = []
        for (ifn, _), nb in self._table.items():
            if ifn != ifname or nb.state != "up":
                continue
            if not nb.echo_ident:
                nb.echo_ident = self._new_ident((ifn, nb.name))
            nb.echo_seq += 1
            nb.echo_sent[nb.echo_seq] = now
            if len(nb.echo_sent) > ECHO_WINDOW:
                del nb.echo_sent[min(nb.echo_sent)]
            probe = EchoProbe(nb.echo_ident, nb.echo_seq, int(now * 1e6))
            out.append((nb.link_address, encode_echo_request(probe)))
        self.echo_tx_total += len(out)
        return out

    def receive_echo(self, ifname: str, packet: bytes, now: float) -> bool:
        """An IPv4 packet from the raw ICMP socket on *ifname*; True if it answered one of ours.

        Anything else (a foreign ping, a malformed packet, a late answer to a
        dead session) is ignored and changes nothing.
        """
        try:
            reply = decode_echo_reply(packet)
        except WireError:
            return False
        key = self._echo_idents.get(reply.ident)
        nb = self._table.get(key) if key is not None else None
        if nb is None or key is None or key[0] != ifname:
            return False
        # The wire carries seq mod 2**16: find the remembered probe it answers.
        seq = next((s for s in nb.echo_sent if s & 0xFFFF == reply.seq), None)
        if seq is None or seq <= nb.echo_acked:
            return False
        sent = nb.echo_sent[seq]
        if int(sent * 1e6) != reply.tx_ts_us:
            return False
        nb.note_echo_rtt(max(0.0, now - sent))
        nb.echo_window.note(seq - nb.echo_acked - 1)
        for s in [s for s in nb.echo_sent if s <= seq]:
            del nb.echo_sent[s]
        nb.echo_acked = seq
        nb.echo_last_rx = now
        nb.echo_active = True
        self.echo_rx_total += 1
        return True

    def _new_ident(self, key: tuple[str, str]) -> int:
        while True:
            self._next_ident = (self._next_ident + 1) & 0xFFFF or 1
            if self._next_ident not in self._echo_idents:
                self._echo_idents[self._next_ident] = key
                return self._next_ident

    def _dead_reason(self, nb: Neighbor, now: float) -> str | None:
        """Why *nb* is dead at *now*, or None (module docstring)."""
        if not nb.echo_active:
            return "timeout" if now - nb.last_rx > self.hello_dead_s(nb) else None
        dead_s = self._echo_dead_s_if_due(nb)
        if dead_s is not None and now - nb.echo_last_rx >= dead_s:
            return "echo"
        return "timeout" if now - nb.last_rx > self._control_s(nb) else None

    def _control_s(self, nb: Neighbor) -> float:
        """In echo mode, how long its hellos alone may be silent (:data:`ECHO_CONTROL_MULT`)."""
        return max(ECHO_CONTROL_MULT * self.dead_multiplier * nb.peer_interval_s,
                   ECHO_CONTROL_MIN_S)

    def _deadline(self, nb: Neighbor) -> float:
        if not nb.echo_active:
            return nb.last_rx + self.hello_dead_s(nb)
        control = nb.last_rx + self._control_s(nb)
        dead_s = self._echo_dead_s_if_due(nb)
        if dead_s is None:
            return control  # the next probes go out on hello ticks, which judge anyway
        return min(control, nb.echo_last_rx + dead_s)

    def _echo_dead_s_if_due(self, nb: Neighbor) -> float | None:
        """:meth:`echo_dead_s` once *nb* has as many probes unanswered as the rule allows
        (:meth:`echo_misses`), else None: it cannot be dead by its echoes yet. The rule
        never allows fewer than ``dead_multiplier``, so below that (a healthy link, nearly
        every tick) it is not worked out at all."""
        pending = nb.echo_pending()
        if pending < self.dead_multiplier:
            return None
        misses, dead_s = self._echo_rule(nb)
        return dead_s if pending >= misses else None

    def _max_misses(self) -> int:
        return int(ECHO_ADAPT_MAX_FACTOR * self.dead_multiplier)

    def hello_dead_s(self, nb: Neighbor) -> float:
        """How long *nb*'s hellos may be silent before it is dead (not in echo mode): its
        interval times the run of misses its hello loss allows (:func:`misses_to_kill`)."""
        rate = 1.0 / nb.peer_interval_s if nb.peer_interval_s > 0 else 0.0
        misses = misses_to_kill(nb.hello_window.share(), rate, self.dead_multiplier,
                                self._max_misses())
        return misses * nb.peer_interval_s

    def echo_misses(self, nb: Neighbor) -> int:
        """How many echo probes in a row *nb* may leave unanswered (:func:`misses_to_kill`)."""
        return self._echo_rule(nb)[0]

    def detection_s(self, nb: Neighbor) -> float:
        """How long *nb* may be silent before it is dead, as judged now: its echo answers
        in echo mode, else its hellos."""
        return self.echo_dead_s(nb) if nb.echo_active else self.hello_dead_s(nb)

    def echo_dead_s(self, nb: Neighbor) -> float:
        """How late *nb*'s echo answers may be before it is dead: the run of misses its
        probe loss allows, or twice the jitter it shows (:data:`ECHO_RTT_SAMPLES`) if
        that is longer, never more than :data:`ECHO_ADAPT_MAX_FACTOR` times the
        configured dead time."""
        return self._echo_rule(nb)[1]

    def _echo_rule(self, nb: Neighbor) -> tuple[int, float]:
        """(:meth:`echo_misses`, :meth:`echo_dead_s`), computed once for a judgement."""
        misses = misses_to_kill(nb.echo_window.share(), 1.0 / self.hello_interval_s,
                                self.dead_multiplier, self._max_misses())
        base = self.dead_multiplier * self.hello_interval_s
        jitter = ECHO_JITTER_FACTOR * nb.echo_rtt_quantile()
        return misses, min(max(misses * self.hello_interval_s, jitter),
                           ECHO_ADAPT_MAX_FACTOR * base)

    # -- time and carrier -------------------------------------------------
    def tick(self, now: float) -> list[Event]:
        """Declare dead every neighbour silent for dead_multiplier intervals (or echoes)."""
        events: list[Event] = []
        for key in [k for k, c in self._candidates.items() if now - c.heard_at > CANDIDATE_TTL_S]:
            del self._candidates[key]
        for key, nb in list(self._table.items()):
            reason = self._dead_reason(nb, now)
            if reason is not None:
                events.extend(self._kill(key, reason, now))
        return events

    def next_deadline(self) -> float | None:
        """When the next neighbour will be dead if nothing more is heard (None: no neighbours).

        The caller runs :meth:`tick` then, rather than at its next hello tick:
        as BFD's per-session detection timer (RFC 5880 section 6.8.4), this
        takes up to one hello interval off the detection time.
        """
        return min((self._deadline(nb) for nb in self._table.values()), default=None)

    def carrier_lost(self, ifname: str, now: float, reason: str = "carrier") -> list[Event]:
        """The kernel says *ifname* lost carrier: its neighbours die at once."""
        if reason == "carrier":
            self._carrier_lost_at[ifname] = now
        events: list[Event] = []
        for key in [k for k in self._table if k[0] == ifname]:
            events.extend(self._kill(key, reason, now))
        return events

    def _kill(self, key: tuple[str, str], reason: str, now: float) -> list[Event]:
        nb = self._table.pop(key)
        if nb.echo_ident:
            self._echo_idents.pop(nb.echo_ident, None)
        counts = nb.hello_counts()
        if counts is not None:
            for old in [k for k, (_, t) in self._ended.items() if now - t > COUNTS_KEEP_S]:
                del self._ended[old]  # bounded: names with pair keys, for a while
            # The hellos it should have sent since the last we heard (those whose loss
            # timed it out) are expected too: else every session's fatal run went
            # uncounted, and 40 % loss read about 30 %. The outcome windows leave that
            # run out: they judge the next runs, and a dead link's run says nothing of
            # its loss while it lived.
            missed = max(0, int((now - nb.last_rx) / nb.peer_interval_s)) \
                if nb.peer_interval_s > 0 else 0
            self._ended[key] = (((counts[0], counts[1] + missed), nb.hello_window,
                                 nb.echo_window), now)
        if reason not in ("removed", "restart"):
            # Still tagged for a while, so its hellos can tell it we dropped it
            # (its one-way check) instead of going unauthenticated.
            self._candidates[key] = Candidate(
                nb.link_address, nb.last_seq, nb.last_peer_ts_us, nb.last_rx, nb.peer_interval_s
            )
        if nb.state != "up":
            return []
        if reason == HOLD_DOWN_REASON:
            return [NeighborDown(nb.ifname, nb.name, nb.link_address, reason, now)]
        self.downs[nb.name] += 1
        flaps = [t for t in self._flaps.get(key, []) if now - t < FLAP_WINDOW_S]
        flaps.append(now)
        self._flaps[key] = flaps
        return [NeighborDown(nb.ifname, nb.name, nb.link_address, reason, now)]

    def _held_down(self, key: tuple[str, str], nb: Neighbor, now: float) -> bool:
        until = self.holds.get(nb.name)
        if until is not None:
            if now < until:
                self.damped_total += 1
                return True
            del self.holds[nb.name]
        recent = [t for t in self._flaps.get(key, []) if now - t < FLAP_WINDOW_S]
        if not recent:
            self._flaps.pop(key, None)
            return False
        if len(recent) >= FLAP_THRESHOLD and now - nb.first_seen < HOLD_DOWN_S:
            self.damped_total += 1
            return True
        return False

    # -- views ------------------------------------------------------------
    def neighbors(self) -> list[Neighbor]:
        return [self._table[k] for k in sorted(self._table)]

    def up_neighbors(self) -> list[Neighbor]:
        return [n for n in self.neighbors() if n.state == "up"]

    def next_hops_moved(self) -> bool:
        """Whether a neighbour moved to another interface or link address since the last call.

        That changes no advert and no graph, but the routes' next hops must follow.
        """
        hops = {n: (nb.ifname, nb.link_address) for n, nb in self.best_links().items()}
        moved, self._next_hops = hops != self._next_hops, hops
        return moved

    def best_links(self) -> dict[str, Neighbor]:
        """Per neighbour node, the cheapest up interface (ties: interface name)."""
        best: dict[str, Neighbor] = {}
        for nb in self.up_neighbors():
            cur = best.get(nb.name)
            if cur is None or (nb.cost(), nb.ifname) < (cur.cost(), cur.ifname):
                best[nb.name] = nb
        return best

    def set_penalty(self, name: str, extra: float) -> bool:
        """Add ``extra`` to the advertised cost of the link to ``name`` (0 removes it).

        Returns whether the advertised costs changed (then the shell re-originates).
        """
        old = self.penalties.get(name, 0.0)
        if extra > 0:
            self.penalties[name] = extra
        else:
            self.penalties.pop(name, None)
        return old != max(0.0, extra) and name in self.best_links()

    def set_hold(self, name: str, until: float, now: float) -> list[Event]:
        """Hold the link to ``name`` down until ``until`` (monotonic; 0 lifts the hold): the
        self-healing loop's answer to a flapping link (mesh_agent.mapek, hold_down_link).

        Its sessions up now end at once (reason ``hold-down``: the caller handles the
        events as any neighbour down, so routes fail over to their backups), and none
        comes up again before ``until``. Its hellos still count (its loss is measured).
        The hold's own ending of a session is not a flap: not in ``downs``.
        """
        if until <= 0:
            self.holds.pop(name, None)
            return []
        self.holds[name] = until
        events: list[Event] = []
        for key in [k for k, nb in self._table.items() if nb.name == name and nb.state == "up"]:
            events.extend(self._kill(key, HOLD_DOWN_REASON, now))
        return events

    def advert_costs(self) -> dict[str, float]:
        """Per up neighbour node, the cost our advert gives its link (best interface + penalty)."""
        return {name: nb.cost() + self.penalties.get(name, 0.0)
                for name, nb in self.best_links().items()}

    # -- where the shell sends ---------------------------------------------
    def hello_interfaces(self) -> list[str]:
        """Interfaces to send hellos on: every mesh interface (hellos sense the links)."""
        return self.interfaces

    def flood_targets(self, came_from: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        """(interface, address) pairs to send an advert to: every up neighbour,
        except the one it *came_from* (RFC 2328 s13.3); None for our own."""
        return [
            (nb.ifname, nb.link_address)
            for nb in self.up_neighbors()
            if (nb.ifname, nb.link_address) != came_from
        ]

    def exchange_targets(self, ev: NeighborUp) -> list[tuple[str, str]]:
        """Where a neighbour that just came up gets our whole database: itself."""
        return [(ev.ifname, ev.link_address)]
