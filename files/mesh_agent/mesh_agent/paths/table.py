"""Per-node cache of primary, backup and disjoint paths to every destination.

The runtime reads it on the failover path (:meth:`PathTable.failover` does no path
computation) and refreshes it with :meth:`PathTable.update` whenever the topology changes.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx

from mesh_agent.paths.disjoint import (
    DISJOINT_MODES,
    INF,
    Network,
    PathError,
    SourceTree,
    _edge_cost,
    decompose,
    dijkstra,
    tree_path,
    tree_successive_paths,
)
from mesh_agent.paths.protection import Link, backup_vertices, bridge_set

__all__ = ["PathTable", "RouteChoice"]


@dataclass(frozen=True)
class RouteChoice:
    """Everything the agent needs to forward to, and fail over for, one destination."""

    destination: str
    primary: list[str]  # node list source..destination (cheapest path)
    backup: list[str] | None  # maximally disjoint backup, None if none
    disjoint: list[list[str]]  # up to k disjoint min-cost paths (primary first if it is one)
    primary_next_hop: str  # primary[1]
    backup_next_hop: str | None  # backup[1] if backup and backup[1] != primary[1] else None
    protected_links: dict[tuple[str, str], bool]  # each primary link -> has a detour
    cost: float
    # RFC 5286 checks of backup_next_hop N (None when there is no backup next hop):
    # loop-free, dist(N, D) < dist(N, S) + dist(S, D): N's own shortest path to D does not
    # come back through this node S, so detouring via N cannot loop.
    backup_loop_free: bool | None = None
    # node-protecting, dist(N, D) < dist(N, E) + dist(E, D) with E the primary next hop:
    # N's shortest path to D also avoids E, so the detour survives E failing, not only the link.
    backup_node_protecting: bool | None = None
    # Which rule chose the backup: "disjoint", the path sharing the fewest links with the
    # primary (then the cheapest); "lfa", this node then neighbour N's own shortest path, N
    # the best loop-free alternate, chosen because the disjoint backup's next hop was not one
    # (packets follow N's routes, not our path, and those would bring them back here).
    backup_rule: str | None = None


def _links(path: list[str]) -> set[Link]:
    return {frozenset(e) for e in itertools.pairwise(path)}


class PathTable:
    """Min-cost disjoint paths, maximally disjoint backups and link protection from ``source``.

    Batch computation for all destinations shares work per update: one full Dijkstra from the
    source gives every primary path and the first round of potentials for every Suurballe run,
    bridges are found once (``nx.bridges``), and later Suurballe rounds search backwards from
    their target, goal-directed by those potentials (:func:`~.disjoint.backward_round`), so
    each settles an ellipse around source and target rather than the whole mesh.
    The backup comes for free from the second Suurballe round whenever that round leaves the
    primary intact (then the pair {primary, second path} is min-cost, so the second path is the
    cheapest link-disjoint backup); only bridged or "trapped" destinations run a penalised
    search (A* towards the source on the same distances). ``k`` is capped per destination by
    the degrees of both ends. Per update: one ``O(E log V)`` tree, then per destination
    ``k - 1`` rounds and at most one backup search, each ``O(E log V)`` worst case.

    Incremental rule in :meth:`update` (costs compared per undirected link):

    * links and costs unchanged: nothing is recomputed;
    * only links removed or costs raised: a destination is recomputed only when one of its
      cached paths (primary, backup, disjoint) used such a link; the others keep their paths,
      which are still feasible and, since no alternative got cheaper, still optimal. Their
      ``protected_links`` are refreshed from the new bridges (a removal can create bridges);
    * any link added or cost lowered: everything is recomputed.

    Equal-cost ties may therefore resolve differently from a fresh table; costs never differ.
    """

    def __init__(
        self,
        source: str,
        k: int = 3,
        disjoint: str = "edge",
        weight: str = "cost",
        *,
        prefer_lfa: bool = True,
    ):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise PathError(f"k must be an integer >= 1, not {k!r}")
        if disjoint not in DISJOINT_MODES:
            raise PathError(f"disjoint must be 'edge' or 'node', not {disjoint!r}")
        self.source = source
        self.k = k
        self.disjoint = disjoint
        self.weight = weight
        #: replace a disjoint backup whose next hop is not loop-free by the best loop-free
        #: alternate, if there is one (:meth:`_alternates`); False keeps the disjoint backups
        #: (the control arm of tests/bench/bench_paths.py --only lfa)
        self.prefer_lfa = prefer_lfa
        self._choices: dict[str, RouteChoice] = {}
        # The choices as planned, each backup the disjoint one (before the LFA preference):
        # the incremental rule keeps these and derives _choices from them on every update.
        self._planned: dict[str, RouteChoice] = {}
        self._used: dict[str, set[Link]] = {}
        self._by_next_hop: dict[str, list[str]] = {}
        self._snapshot: dict[Link, float] | None = None
        #: destinations whose paths were recomputed by the last :meth:`update` (for metrics)
        self.last_recomputed = 0

    # -- queries -------------------------------------------------------------------------

    def get(self, destination: str) -> RouteChoice | None:
        return self._choices.get(destination)

    def choices(self) -> dict[str, RouteChoice]:
        return dict(self._choices)

    def failover(self, dead_neighbor: str) -> dict[str, str]:
        """Backup next hop for every destination whose primary next hop is ``dead_neighbor``.

        Pure lookup in an index built by :meth:`update`; destinations without a distinct
        backup next hop are omitted (they have no local repair).
        """
        out: dict[str, str] = {}
        for dst in self._by_next_hop.get(dead_neighbor, ()):
            nh = self._choices[dst].backup_next_hop
            if nh is not None:
                out[dst] = nh
        return out

    def detours(self, removed: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Backup next hop for every destination whose primary crosses a ``removed`` link.

        The remote half of fast reroute: an advert just took those links out of
        the graph somewhere else in the mesh, and until the next :meth:`update`
        every node whose primary crossed them would keep sending into the hole
        (or back and forth: a remote micro-loop). Pure lookup in the cached
        paths: a destination moves only when its backup avoids every removed
        link and leaves by another neighbour than the primary.
        """
        gone = {frozenset(link) for link in removed}
        if not gone:
            return {}
        out: dict[str, str] = {}
        for dst, ch in self._choices.items():
            nh = ch.backup_next_hop
            if nh is None or ch.backup is None or _links(ch.primary).isdisjoint(gone):
                continue
            if _links(ch.backup).isdisjoint(gone):
                out[dst] = nh
        return out

    def coverage(self) -> dict[str, float]:
        """Protection figures over reachable destinations.

        ``protectable_links_protected`` counts a non-bridge primary link as protected when the
        cache itself holds a path around it (the backup or one of the disjoint paths avoids
        it); it is 1.0 unless a primary is trapped inside a bridged segment.
        ``backup_next_hops_loop_free`` is the fraction of backup next hops that are RFC 5286
        loop-free alternates (:attr:`RouteChoice.backup_loop_free`). Both are 1.0 when vacuous.
        """
        n = len(self._choices)
        with_backup = with_k = links = protected = protectable = covered = 0
        alternates = loop_free = 0
        for ch in self._choices.values():
            with_backup += ch.backup is not None
            if ch.backup_next_hop is not None:
                alternates += 1
                loop_free += bool(ch.backup_loop_free)
            with_k += len(ch.disjoint) >= self.k
            others = [_links(p) for p in ([ch.backup] if ch.backup else []) + ch.disjoint]
            for (a, b), has_detour in ch.protected_links.items():
                links += 1
                if not has_detour:
                    continue
                protected += 1
                protectable += 1
                link = frozenset((a, b))
                covered += any(link not in o for o in others)
        return {
            "destinations_with_backup": with_backup / n if n else 0.0,
            "destinations_with_k_disjoint": with_k / n if n else 0.0,
            "primary_links_protected": protected / links if links else 0.0,
            "protectable_links_protected": covered / protectable if protectable else 1.0,
            "backup_next_hops_loop_free": loop_free / alternates if alternates else 1.0,
        }

    # -- computation ---------------------------------------------------------------------

    def update(self, graph: nx.Graph) -> set[str]:
        """Recompute for ``graph``; return the destinations whose :class:`RouteChoice` changed."""
        snapshot: dict[Link, float] = {}
        for u, v, data in graph.edges(data=True):
            if u != v:
                snapshot[frozenset((u, v))] = _edge_cost(u, v, data, self.weight)
        old = self._snapshot
        if old is not None and snapshot == old:
            self.last_recomputed = 0
            return set()
        self._snapshot = snapshot

        if self.source not in graph:
            changed = set(self._choices)
            self._choices, self._planned, self._used, self._by_next_hop = {}, {}, {}, {}
            self.last_recomputed = 0
            return changed

        todo: set[str] | None = None  # None = all destinations
        if old is not None and not any(
            key not in old or cost < old[key] for key, cost in snapshot.items()
        ):
            gone = {key for key, cost in old.items() if key not in snapshot or snapshot[key] > cost}
            todo = {dst for dst, used in self._used.items() if not used.isdisjoint(gone)}

        bridges = bridge_set(graph)
        new_choices: dict[str, RouteChoice] = {}
        new_used: dict[str, set[Link]] = {}
        if todo is None or todo:
            net = Network(graph, self.weight, self.disjoint)
            s = net.vertex(self.source, role="out")
            tree = SourceTree(net, s)
            biconnected: set[str] | None = None
            if net.split:
                # Menger: two node-disjoint paths exist iff source and destination share a
                # biconnected component (Hopcroft and Tarjan 1973, O(V + E) once per update).
                # Without one, a round that cannot succeed would search the whole mesh.
                biconnected = set()
                for block in nx.biconnected_components(graph):
                    if self.source in block:
                        biconnected |= block
            dist = tree.dist
            # Plain-graph distances from the source: the A* heuristic of the backup search.
            if net.split:
                h = [dist[2 * i] for i in range(len(net.nodes))]
                h[s >> 1] = 0.0
            else:
                h = dist
            targets: list[str] = (
                [n for n in net.nodes if n != self.source]  # type: ignore[misc]
                if todo is None
                else [n for n in todo if n in net.index]
            )
            for dst in targets:
                t = net.vertex(dst, role="in")
                if dist[t] == INF:
                    continue
                choice = self._compute(net, graph, tree, t, bridges, h, biconnected)
                new_choices[dst] = choice
                new_used[dst] = self._paths_links(choice)
            self.last_recomputed = len(targets)
        else:
            self.last_recomputed = 0
        if todo is not None:
            for dst, ch in self._planned.items():
                if dst in todo:
                    continue
                prot = {(a, b): frozenset((a, b)) not in bridges for a, b in ch.protected_links}
                if prot != ch.protected_links:
                    ch = dataclasses.replace(ch, protected_links=prot)
                new_choices[dst] = ch
                new_used[dst] = self._used[dst]
        # Distances change with every update (also for destinations whose paths were kept),
        # so the flags, and the LFA preference, are refreshed for all of them.
        final = self._alternates(graph, new_choices) if new_choices else {}

        changed = {
            d for d in self._choices.keys() | final.keys() if self._choices.get(d) != final.get(d)
        }
        self._choices, self._planned, self._used = final, new_choices, new_used
        by_nh: dict[str, list[str]] = {}
        for dst, ch in final.items():
            by_nh.setdefault(ch.primary_next_hop, []).append(dst)
        self._by_next_hop = by_nh
        return changed

    def _alternates(
        self, graph: nx.Graph, planned: dict[str, RouteChoice]
    ) -> dict[str, RouteChoice]:
        """The planned choices with RFC 5286 flags set and, where the disjoint backup's next
        hop is not loop-free, the best loop-free alternate in its place.

        Loop-Free Alternates (RFC 5286, section 3.6, inequalities 1 and 3) need distances from
        this node S and from its neighbours. A neighbour N is loop-free for destination D when
        dist(N, D) < dist(N, S) + dist(S, D) (N's shortest path to D does not come back
        through S) and node-protecting when dist(N, D) < dist(N, E) + dist(E, D), E the
        primary next hop. After a local failover packets follow N's routes, not the planned
        backup path, so a backup next hop that is not loop-free sends them back to S until N
        has reconverged: a micro-loop. Then, if another neighbour (not E) is loop-free, the
        backup becomes S followed by that neighbour's shortest path to D, the neighbour chosen
        by (node-protecting first, then the cheapest cost through it, then its name), and
        ``backup_rule`` says ``"lfa"``. With no loop-free neighbour the disjoint backup stays:
        it still helps once N has reconverged.

        One plain Dijkstra from S and one from each neighbour that is needed (the primary and
        backup next hops, and every neighbour of S once some backup is not loop-free):
        ``O(deg(S) * E log V)`` per update, then ``O(deg(S))`` per destination. Distances are
        on the plain graph in both disjointness modes. A float tolerance keeps equal-cost ties
        from counting as loop-free.
        """
        net = Network(graph, self.weight, "edge")
        index, nadj, zeros = net.index, net.nadj, [0.0] * len(net.nodes)
        trees: dict[str, tuple[list[float], list[int]]] = {}

        def from_(node: str) -> list[float]:
            if node not in trees:
                trees[node] = dijkstra(nadj, zeros, index[node])
            return trees[node][0]

        def less(a: float, b: float) -> bool:
            return a < b - 1e-9 * max(1.0, abs(b))

        s = index[self.source]
        d_s = from_(self.source)

        def flags(n: str, e: str, i: int) -> tuple[bool, bool]:
            """Neighbour *n* for destination index *i*, primary next hop *e*: (loop-free,
            node-protecting)."""
            d_n = from_(n)
            return (
                less(d_n[i], d_n[s] + d_s[i]),
                less(d_n[i], d_n[index[e]] + from_(e)[i]),
            )

        neighbours = sorted(graph.neighbors(self.source), key=str)
        out: dict[str, RouteChoice] = {}
        for dst, ch in planned.items():
            nh, e, i = ch.backup_next_hop, ch.primary_next_hop, index[dst]
            loop_free = node_protecting = None
            rule = "disjoint" if ch.backup is not None else None
            backup = ch.backup
            if nh is not None:
                loop_free, node_protecting = flags(nh, e, i)
            if not loop_free and self.prefer_lfa:
                best: tuple[tuple[bool, float, str], str] | None = None
                for n in neighbours:
                    if n == e:
                        continue
                    lf, np_ = flags(n, e, i)
                    if lf:
                        key = (not np_, nadj[s][index[n]] + from_(n)[i], str(n))
                        if best is None or key < best[0]:
                            best = (key, n)
                if best is not None:
                    (not_np, _, _), n = best
                    path = tree_path(trees[n][1], index[n], i)
                    backup = [self.source, *net.to_nodes(path)]  # type: ignore[list-item]
                    nh, loop_free, node_protecting, rule = n, True, not not_np, "lfa"
            if backup is ch.backup and (loop_free, node_protecting, rule) == (
                ch.backup_loop_free,
                ch.backup_node_protecting,
                ch.backup_rule,
            ):
                out[dst] = ch
                continue
            out[dst] = dataclasses.replace(
                ch,
                backup=backup,
                backup_next_hop=nh,
                backup_loop_free=loop_free,
                backup_node_protecting=node_protecting,
                backup_rule=rule,
            )
        return out

    @staticmethod
    def _paths_links(ch: RouteChoice) -> set[Link]:
        used = _links(ch.primary)
        if ch.backup:
            used |= _links(ch.backup)
        for p in ch.disjoint:
            used |= _links(p)
        return used

    def _compute(
        self,
        net: Network,
        graph: nx.Graph,
        tree: SourceTree,
        t: int,
        bridges: set[Link],
        h: list[float],
        biconnected: set[str] | None,
    ) -> RouteChoice:
        s = tree.source
        primary: list[str] = net.to_nodes(tree_path(tree.pred, s, t))  # type: ignore[assignment]
        dst = primary[-1]
        prot = {(a, b): frozenset((a, b)) not in bridges for a, b in itertools.pairwise(primary)}
        k = min(self.k, graph.degree(self.source), graph.degree(dst))
        if not all(prot.values()):
            k = 1  # a bridge on the primary separates source and destination: max-flow is 1
        if biconnected is not None and dst not in biconnected:
            k = 1  # a cut vertex separates them: one node-disjoint path at most
        disjoint: list[list[str]] = [primary]
        backup_v: list[int] | None = None
        need_backup = True
        if k >= 2:
            res = tree_successive_paths(net, tree, t, k)
            disjoint = decompose(net, res.flow, s, t)  # type: ignore[assignment,arg-type]
            disjoint.sort(key=lambda p: (net.cost(p), str(p)))
            if primary in disjoint:
                disjoint.remove(primary)
                disjoint.insert(0, primary)
            if len(res.augmenting) >= 2 and not res.cancelled_first and not net.split:
                # {primary, second path} is a min-cost disjoint pair, so no path avoiding the
                # primary is cheaper than the second path: it is the backup.
                backup_v = res.augmenting[1]
                need_backup = False
        if need_backup:
            index = net.index
            backup_v = backup_vertices(net, [index[n] for n in primary], bridges, h)
        backup: list[str] | None = None
        if backup_v is not None:
            backup = [net.nodes[i] for i in backup_v]  # type: ignore[misc]
        backup_nh = backup[1] if backup is not None and backup[1] != primary[1] else None
        return RouteChoice(
            destination=dst,
            primary=primary,
            backup=backup,
            disjoint=disjoint,
            primary_next_hop=primary[1],
            backup_next_hop=backup_nh,
            protected_links=prot,
            cost=net.cost(primary),
        )
