"""The health gate of ``playbooks/rollout.yml``, as Ansible filters (plain data in and out).

After a wave switched to the new release and soaked, the playbook collects, from
the agents' own APIs, each wave node's ``/readyz``, ``/metrics`` (at the start and
the end of the soak), its release and commit-confirm status, every mesh node's
``/v1/paths``, and the monitoring host's firing alerts before the switch and after
the soak. These filters judge them on the controller:

* ``meshcore_rollout_counters(metrics_text)``: the counters the gate bounds,
  summed over their labels, from Prometheus' text format:
  ``failovers`` (``meshcore_failovers_total``) and ``adverts_rejected``
  (``meshcore_adverts_rejected_total``).
* ``meshcore_rollout_gate(samples, wave, active, hosts_all, bounds, names, paths,
  alerts)``: the verdict ``{"ok", "failures", "hosts": {host: {"ok", "problems"}},
  "alerts_checked"}``. The wave fails when a host of the wave is no longer active or
  was unreachable (the play keeps unreachable hosts in the batch,
  ``ignore_unreachable``, and ansible's ``any_errors_fatal`` ignores them,
  ansible/ansible#82834: the gate counts them); a wave node is not ready, runs
  another release than the target or reverted itself; a node of the mesh misses a
  path to another (all pairs, from each agent's own path table); a counter grew by
  more than its bound during the soak; an alert fires that did not before the
  switch; or a data-plane probe lost more than ``bounds.probe_loss`` (a fraction).
* ``meshcore_rollout_rounds(neighbours, wave, names, max_size)``: the order in which
  the wave's nodes switch. Nodes that restart together must not be neighbours nor
  share a neighbour (a distance-2 colouring of the wave, from each wave node's own
  ``/v1/neighbors``), so no node, in the wave or not, loses two neighbours at once and
  the mesh never loses two adjacent nodes together. Greedy colouring, most conflicts
  first (Welsh and Powell 1967), ties by name: deterministic. A node whose neighbours
  are unknown (its agent did not answer) gets a round of its own. ``max_size`` > 0
  caps a round's size. Returns the rounds, lists of hosts, in order.
* ``meshcore_rollout_storms(before, after, ignore, names, hosts_all)``: the hosts on
  which ``MeshFailoverStorm`` fires after the soak but neither fired nor was pending
  before the switch. The playbook reads their failover events, and the gate does not
  blame the wave for a storm its own restarts explain: a neighbour that restarts makes
  a node fail over once (or twice), and a wave restarts many neighbours within the
  alert's 5 minutes. A wave node that restarted fails over away from its neighbours
  too, outside the wave or not, until they hear its new agent (their adverts dropped it
  meanwhile): its own failovers before the soak are its restart's doing as well. Every
  other failover away from a node outside the wave, and every failover after the soak
  started, still counts, and more than ``bounds.failovers`` of them fail the gate.
* ``meshcore_node_names(hosts, hostvars)``: host -> node name, the one mapping every
  filter's *names* takes (``playbooks/rollout.yml`` and ``site.yml``'s restart rounds):
  a host's ``mesh_agent_node_name`` where its inventory sets one (templated in that
  host's context), else its inventory name (the ``mesh_agent`` role's default).
* ``meshcore_rollout_probe_plan(paths, wave, hosts_all, names, addresses, per_node,
  max_sources)``: the pings that check the data plane through the wave, since a release
  can be ready and fill its path table while it drops traffic (a black hole). Per
  wave node W, up to *per_node* pairs of each kind: W to other nodes (its own
  output), and a node outside the wave to a destination whose primary next hop from
  that node is W (traffic W forwards). Targets are mesh addresses
  (``mesh_node_address``); hosts without one are never targets. Deterministic for a
  given input, and spread over the mesh by a hash rather than by name order.
  Returns ``{"pairs": [{src, dst, addr, via, kind}], "by_source": {src: [addr]}}``.

Self-contained (only the standard library), so the playbook runs from a release
tarball's ``ansible/`` on a controller without the repository's tools.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STORM_ALERT = "MeshFailoverStorm"
_ALERT = re.compile(r"^(?P<name>[^{]*)\{node=(?P<node>.*)\}$")
COUNTERS = {"failovers": "meshcore_failovers_total",
            "adverts_rejected": "meshcore_adverts_rejected_total"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


_REASON = re.compile(r'reason="([^"]*)"')


def _samples(text: Any) -> list[tuple[str, str, float]]:
    """(metric, labels, value) of each sample line of a Prometheus text exposition."""
    out = []
    for line in str(text or "").splitlines():
        m = _SAMPLE.match(line)
        if m:
            try:
                out.append((m.group(1), m.group(2) or "", float(m.group(3))))
            except ValueError:
                continue
    return out


def meshcore_rollout_counters(text: Any) -> dict[str, float]:
    out = dict.fromkeys(COUNTERS, 0.0)
    names = {v: k for k, v in COUNTERS.items()}
    for metric, _, value in _samples(text):
        if metric in names:
            out[names[metric]] += value
    return out


def _rejected_by_reason(text: Any) -> dict[str, float]:
    """``meshcore_adverts_rejected_total`` per ``reason`` label."""
    out: dict[str, float] = {}
    for metric, labels, value in _samples(text):
        if metric == COUNTERS["adverts_rejected"]:
            reason = _REASON.search(labels)
            key = reason.group(1) if reason else "-"
            out[key] = out.get(key, 0.0) + value
    return out


def _growth(before: float, after: float) -> float:
    """A restart resets a counter: growth since the restart is then the value."""
    return after - before if after >= before else after


def firing(data: Any, ignore: Sequence[str] = (),
           states: Sequence[str] = ("firing",)) -> list[str]:
    """The firing alerts of a Prometheus ``/api/v1/alerts`` answer's data, as
    ``Name{node=...}``, sorted; pending ones (``for:`` not over) are not firing unless
    *states* says so. The same rule as the lab's ``meshcore_tools.lab.prometheus.firing``
    (tests check they agree)."""
    skip = set(ignore)
    alerts = data.get("alerts", []) if isinstance(data, Mapping) else []
    return sorted(
        f"{a['labels'].get('alertname', '?')}{{node={a['labels'].get('node', '-')}}}"
        for a in alerts
        if isinstance(a, Mapping) and a.get("state") in states
        and isinstance(a.get("labels"), Mapping) and a["labels"].get("alertname") not in skip)


def meshcore_node_names(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> dict[str, str]:
    """Host -> node name: each host's ``mesh_agent_node_name`` (a non-empty one), else
    the host's inventory name. *hostvars*: Ansible's ``hostvars``."""
    out = {}
    for host in hosts:
        name = (hostvars.get(host) or {}).get("mesh_agent_node_name")
        out[host] = str(name) if name else host
    return out


def _neighbour_names(answer: Any) -> set[str] | None:
    """The names in an agent's ``/v1/neighbors`` answer, or None when it is not one."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("neighbors"), list):
        return None
    return {str(n["name"]) for n in answer["neighbors"]
            if isinstance(n, Mapping) and isinstance(n.get("name"), str)}


def meshcore_rollout_rounds(neighbours: Mapping[str, Any] | None, wave: Sequence[str],
                            names: Mapping[str, str] | None = None,
                            max_size: int = 0) -> list[list[str]]:
    """*neighbours*: wave host -> its agent's ``/v1/neighbors`` answer (anything else:
    unknown); *names*: host -> node name where it is not the inventory name. The rounds
    of the module docstring."""
    hosts = sorted(dict.fromkeys(wave))
    node = {h: (names or {}).get(h, h) for h in hosts}
    nbrs = {h: _neighbour_names((neighbours or {}).get(h)) for h in hosts}

    def conflict(a: str, b: str) -> bool:
        na, nb = nbrs[a], nbrs[b]
        if na is None or nb is None:
            return True
        return node[b] in na or node[a] in nb or bool(na & nb)

    conflicts = {h: {o for o in hosts if o != h and conflict(h, o)} for h in hosts}
    rounds: list[list[str]] = []
    for h in sorted(hosts, key=lambda h: (-len(conflicts[h]), h)):
        for r in rounds:
            if (not max_size or len(r) < max_size) and not conflicts[h] & set(r):
                r.append(h)
                break
        else:
            rounds.append([h])
    return [sorted(r) for r in rounds]


def meshcore_rollout_storms(before: Any, after: Any, ignore: Sequence[str] = (),
                            names: Mapping[str, str] | None = None,
                            hosts_all: Sequence[str] = ()) -> list[str]:
    """The hosts with a new ``MeshFailoverStorm`` (module docstring); an alerting node
    that is no host of *hosts_all* is left out (the gate blames its storm)."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return []
    host_of = {(names or {}).get(h, h): h for h in hosts_all}
    return list(_storm_hosts(_new_alerts(before, after, ignore), host_of).values())


def _new_alerts(before: Any, after: Any, ignore: Sequence[str] = ()) -> list[str]:
    """The alerts firing *after* that were neither firing nor pending *before*, sorted."""
    return sorted(set(firing(after, ignore)) - set(firing(before, ignore, ("firing", "pending"))))


def _storm_hosts(alerts: Sequence[str], host_of: Mapping[str, str]) -> dict[str, str]:
    """alert -> host for the ``MeshFailoverStorm`` ones among *alerts* whose node is a
    host's (*host_of*: node name -> host), in the order of *alerts*."""
    out = {}
    for alert in alerts:
        m = _ALERT.match(alert)
        if m and m["name"] == STORM_ALERT and m["node"] in host_of:
            out[alert] = host_of[m["node"]]
    return out


def _unexplained_failovers(events: Any, wave_nodes: set[str], soak_started: float,
                           restarted: bool = False) -> list[str] | None:
    """The failovers of a node that the wave's restarts do not explain (module docstring),
    each as "<neighbour> (<reason>)", with ", in the soak" when it came after the soak
    started; *restarted*: the node itself is one of the wave's. None when *events* is not
    a ``/v1/events?kind=failover`` answer."""
    if not isinstance(events, Mapping) or not isinstance(events.get("events"), list):
        return None
    other = []
    for e in events["events"]:
        if not isinstance(e, Mapping) or e.get("kind") != "failover":
            continue
        try:
            wall = float(e["wall"])
        except (KeyError, TypeError, ValueError):
            wall = float("inf")
        if wall > soak_started or not (restarted or e.get("subject") in wave_nodes):
            other.append(f"{e.get('subject')} ({e.get('reason')})"
                         + (", in the soak" if wall > soak_started else ""))
    return other


def _tally(items: Sequence[str], top: int = 4) -> str:
    """The most frequent *top* of *items* as "a x3, b", and how many kinds are left."""
    ranked = sorted(Counter(items).items(), key=lambda kv: (-kv[1], kv[0]))
    out = ", ".join(k + (f" x{n}" if n > 1 else "") for k, n in ranked[:top])
    return out + (f", {len(ranked) - top} more" if len(ranked) > top else "")


def _host_problems(host: str, s: Mapping[str, Any], bounds: Mapping[str, Any]) -> list[str]:
    problems = []
    ready = s.get("readyz") or {}
    try:
        status = int(ready.get("status", -1))
    except (TypeError, ValueError):
        status = -1
    if status != 200:
        body = ready.get("json") or {}
        failing = body.get("failing") if isinstance(body, Mapping) else None
        problems.append("not ready" + (f" ({', '.join(failing)})" if failing else
                                       f" (HTTP {ready.get('status', 'no answer')})"))
    if s.get("release") != s.get("target"):
        problems.append(f"runs release {s.get('release')}, not {s.get('target')}")
    last = (s.get("confirm") or {}).get("last") or {}
    if last.get("release") == s.get("target") and last.get("outcome") == "reverted":
        problems.append(f"reverted itself: {last.get('reason', '')}")
    before = meshcore_rollout_counters(s.get("metrics_before"))
    after = meshcore_rollout_counters(s.get("metrics_after"))
    for name in COUNTERS:
        grew = _growth(before[name], after[name])
        bound = float(bounds.get(name, 0))
        if grew > bound:
            why = ""
            if name == "adverts_rejected":  # which reasons: a flooding race or an attack
                b, a = (_rejected_by_reason(s.get(k)) for k in ("metrics_before", "metrics_after"))
                reasons = sorted(((_growth(b.get(r, 0.0), v), r) for r, v in a.items()),
                                 key=lambda x: (-x[0], x[1]))
                why = ": " + ", ".join(f"{r} {g:g}" for g, r in reasons if g > 0)
            problems.append(f"{name} grew by {grew:g} during the soak (bound {bound:g}){why}")
    return problems


def _spread(*key: str) -> str:
    return hashlib.sha256("\0".join(key).encode()).hexdigest()


def meshcore_rollout_probe_plan(paths: Mapping[str, Any] | None, wave: Sequence[str],
                                hosts_all: Sequence[str],
                                names: Mapping[str, str] | None = None,
                                addresses: Mapping[str, Any] | None = None,
                                per_node: int = 3, max_sources: int = 8) -> dict[str, Any]:
    """The data-plane probes for *wave* (see the module's docstring); *paths*: host ->
    its /v1/paths; *addresses*: host -> its mesh address (None or "" for none). The
    transit probes come from at most *max_sources* nodes outside the wave (the
    playbook runs those one source after another), chosen greedily: each round gives
    every wave node one more pair, from a source already chosen where one routes
    through it."""
    name_of = {h: (names or {}).get(h, h) for h in hosts_all}
    host_of = {n: h for h, n in name_of.items()}
    addr = {h: str(a) for h, a in (addresses or {}).items() if a and h in name_of}
    wave = [w for w in wave if w in name_of]
    pairs: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()

    def add(src: str, dst: str, via: str, kind: str) -> None:
        seen.add((src, addr[dst]))
        pairs.append({"src": src, "dst": dst, "addr": addr[dst], "via": via, "kind": kind})

    for w in wave:
        own = sorted((h for h in addr if h != w), key=lambda h: _spread(w, h))
        for dst in own[:max(0, per_node)]:
            add(w, dst, w, "own")
    # transit candidates per wave node: (src, dst) with src outside the wave and w the
    # primary next hop from src to dst; destinations outside the wave first (their
    # answer does not depend on another wave node's release)
    candidates: dict[str, list[tuple[str, str]]] = {w: [] for w in wave}
    via_name = {name_of[w]: w for w in wave}
    for src in hosts_all:
        if src in candidates:
            continue
        table = (paths or {}).get(src)
        dests = table.get("destinations") if isinstance(table, Mapping) else None
        if not isinstance(dests, Mapping):
            continue
        for dname, choice in dests.items():
            target = host_of.get(str(dname))
            hop = choice.get("primary_next_hop") if isinstance(choice, Mapping) else None
            via = via_name.get(hop) if isinstance(hop, str) else None
            if via is None or target is None or target in (via, src) or target not in addr:
                continue
            candidates[via].append((src, target))
    for w, cands in candidates.items():
        cands.sort(key=lambda c: (c[1] in candidates, _spread(w, *c)))
    sources: list[str] = []
    for _ in range(max(0, per_node)):
        for w in wave:
            fresh = [c for c in candidates[w] if (c[0], addr[c[1]]) not in seen]
            pick = next((c for c in fresh if c[0] in sources), None)
            if pick is None and len(sources) < max_sources:
                pick = fresh[0] if fresh else None
            if pick is None:
                continue
            if pick[0] not in sources:
                sources.append(pick[0])
            add(pick[0], pick[1], w, "transit")
    by_source: dict[str, list[str]] = {}
    for pair in pairs:
        by_source.setdefault(pair["src"], []).append(pair["addr"])
    return {"pairs": pairs, "by_source": dict(sorted(by_source.items()))}


def _probe_result(r: Mapping[str, Any]) -> dict[str, Any]:
    """{address: {sent, received, error}} from one run of mesh_probe.py as Ansible
    registered it, or {"error": why} when it did not run."""
    try:
        doc = json.loads(r.get("stdout") or "")
    except ValueError:
        doc = None
    if isinstance(doc, Mapping) and not r.get("unreachable"):
        return dict(doc)
    why = r.get("msg") or r.get("stderr") or (r.get("stdout") or "")[:200] or "no output"
    return {"error": ("unreachable: " if r.get("unreachable") else "") + str(why)}


def _probe_failures(probes: Mapping[str, Any], bound: float) -> list[str]:
    """*probes*: {pairs, results: the delegated probe task's loop results (item.key is
    the source), own: wave host -> its own probe task's result}."""
    results: dict[str, Any] = {}
    for r in probes.get("results") or []:
        item = r.get("item") if isinstance(r, Mapping) else None
        if isinstance(item, Mapping) and isinstance(item.get("key"), str):
            results[item["key"]] = _probe_result(r)
    for host, r in (probes.get("own") or {}).items():
        if isinstance(r, Mapping):
            results[host] = _probe_result(r)
    failures = []
    for pair in probes.get("pairs") or []:
        src, addr = pair.get("src"), pair.get("addr")
        got = results.get(src)
        what = f"{src} -> {pair.get('dst')} ({addr}), {pair.get('kind')} via {pair.get('via')}"
        if not isinstance(got, Mapping) or not isinstance(got.get(addr), Mapping):
            err = got.get("error") if isinstance(got, Mapping) else None
            failures.append(f"probe {what}: did not run ({err or 'no result'})")
            continue
        one = got[addr]
        try:
            sent, received = int(one.get("sent", 0)), int(one.get("received", 0))
        except (TypeError, ValueError):
            sent, received = 0, 0
        lost = sent - received if sent > 0 else 0
        if sent <= 0 or lost / sent > bound:
            why = f": {one['error']}" if one.get("error") else ""
            failures.append(f"probe {what}: lost {lost} of {sent}{why} "
                            f"(bound {bound:.0%})")
    return failures


def meshcore_rollout_gate(samples: Mapping[str, Any], wave: Sequence[str],
                          active: Sequence[str], hosts_all: Sequence[str],
                          bounds: Mapping[str, Any] | None = None,
                          names: Mapping[str, str] | None = None,
                          paths: Mapping[str, Any] | None = None,
                          alerts: Mapping[str, Any] | None = None,
                          probes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """*samples*: wave host -> {readyz: {status, json}, release, target, confirm,
    metrics_before, metrics_after}; *wave*: the wave's hosts as it started; *active*:
    its hosts still active now; *hosts_all*: every mesh host, whose node name is its
    inventory name unless *names* says otherwise; *paths*: host -> its /v1/paths;
    *alerts*: {before, after, ignore, failovers, soak_started}, the monitoring host's
    /api/v1/alerts data before the switch and after the soak (None: no monitoring host,
    or it did not answer), and, for the hosts of meshcore_rollout_storms, host -> its
    /v1/events?kind=failover answer, with the soak's start (wall clock, seconds);
    *probes*: {pairs (from meshcore_rollout_probe_plan), results (the delegated probe
    task's registered loop results), own (wave host -> its own probe task's result)}.
    A pair whose source's probe did not run fails the gate too."""
    bounds = bounds or {}
    hosts: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for host in wave:
        if host not in active or (samples.get(host) or {}).get("unreachable"):
            problems = ["unreachable or failed during the wave"]
        else:
            problems = _host_problems(host, samples.get(host) or {}, bounds)
        hosts[host] = {"ok": not problems, "problems": problems}
        failures += [f"{host}: {p}" for p in problems]
    names = {h: (names or {}).get(h, h) for h in hosts_all}
    for host in sorted(names):
        table = (paths or {}).get(host)
        if not isinstance(table, Mapping):
            failures.append(f"{host}: no path table (the agent's /v1/paths did not answer)")
            continue
        dests = table.get("destinations") or {}
        missing = sorted(n for h, n in names.items() if h != host and n not in dests)
        if missing:
            failures.append(f"{host}: no path to {', '.join(missing)}")
    alerts = alerts or {}
    before, after = alerts.get("before"), alerts.get("after")
    checked = isinstance(before, Mapping) and isinstance(after, Mapping)
    seen: dict[str, list[str]] = {}
    if checked:
        ignore = alerts.get("ignore") or ()
        # An alert already pending before the switch (its condition true, its ``for:`` not
        # over) that fires after the soak is not the wave's doing: a mesh-wide objective
        # over the last hour can turn from pending to firing during any wave.
        seen = {"before": firing(before, ignore, ("firing", "pending")),
                "after": firing(after, ignore)}
        new = _new_alerts(before, after, ignore)
        # A failover storm the wave's own restarts explain (module docstring).
        storms = alerts.get("failovers") or {}
        wave_nodes = {names.get(h, h) for h in wave}
        soak = float(alerts.get("soak_started") or 0.0)
        bound = float(bounds.get("failovers", 0))
        seen["explained"] = []
        for alert, host in _storm_hosts(new, {n: h for h, n in names.items()}).items():
            if host not in storms:
                continue
            new.remove(alert)
            other = _unexplained_failovers(storms[host], wave_nodes, soak, host in wave)
            if other is None:
                failures.append(f"{alert}: its failover events could not be read")
            elif len(other) > bound:
                failures.append(f"{alert}: {len(other)} failovers not explained by the wave's "
                                f"restarts (bound {bound:g}), away from: {_tally(other)}")
            else:
                seen["explained"].append(alert)
        if new:
            failures.append("alerts firing that were neither firing nor pending before the "
                            f"switch: {', '.join(new)}")
    probes = probes or {}
    failures += _probe_failures(probes, float(bounds.get("probe_loss", 0.5)))
    return {"ok": not failures, "failures": failures, "hosts": hosts, "alerts_checked": checked,
            "alerts": seen, "probes_checked": len(probes.get("pairs") or [])}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"meshcore_node_names": meshcore_node_names,
                "meshcore_rollout_counters": meshcore_rollout_counters,
                "meshcore_rollout_gate": meshcore_rollout_gate,
                "meshcore_rollout_probe_plan": meshcore_rollout_probe_plan,
                "meshcore_rollout_rounds": meshcore_rollout_rounds,
                "meshcore_rollout_storms": meshcore_rollout_storms}
