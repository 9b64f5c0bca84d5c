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
  more than its bound during the soak; or an alert fires that did not before the
  switch.

Self-contained (only the standard library), so the playbook runs from a release
tarball's ``ansible/`` on a controller without the repository's tools.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

COUNTERS = {"failovers": "meshcore_failovers_total",
            "adverts_rejected": "meshcore_adverts_rejected_total"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def meshcore_rollout_counters(text: Any) -> dict[str, float]:
    out = dict.fromkeys(COUNTERS, 0.0)
    names = {v: k for k, v in COUNTERS.items()}
    for line in str(text or "").splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) in names:
            try:
                out[names[m.group(1)]] += float(m.group(3))
            except ValueError:
                continue
    return out


def firing(data: Any, ignore: Sequence[str] = ()) -> list[str]:
    """The firing alerts of a Prometheus ``/api/v1/alerts`` answer's data, as
    ``Name{node=...}``, sorted; pending ones (``for:`` not over) are not firing. The same
    rule as the lab's ``meshcore_tools.lab.prometheus.firing`` (tests check they agree)."""
    skip = set(ignore)
    alerts = data.get("alerts", []) if isinstance(data, Mapping) else []
    return sorted(
        f"{a['labels'].get('alertname', '?')}{{node={a['labels'].get('node', '-')}}}"
        for a in alerts
        if isinstance(a, Mapping) and a.get("state") == "firing"
        and isinstance(a.get("labels"), Mapping) and a["labels"].get("alertname") not in skip)


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
        # A restart resets the counters: growth since the restart is then the value.
        grew = after[name] - before[name] if after[name] >= before[name] else after[name]
        bound = float(bounds.get(name, 0))
        if grew > bound:
            problems.append(f"{name} grew by {grew:g} during the soak (bound {bound:g})")
    return problems


def meshcore_rollout_gate(samples: Mapping[str, Any], wave: Sequence[str],
                          active: Sequence[str], hosts_all: Sequence[str],
                          bounds: Mapping[str, Any] | None = None,
                          names: Mapping[str, str] | None = None,
                          paths: Mapping[str, Any] | None = None,
                          alerts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """*samples*: wave host -> {readyz: {status, json}, release, target, confirm,
    metrics_before, metrics_after}; *wave*: the wave's hosts as it started; *active*:
    its hosts still active now; *hosts_all*: every mesh host, whose node name is its
    inventory name unless *names* says otherwise; *paths*: host -> its /v1/paths;
    *alerts*: {before, after, ignore}, the monitoring host's /api/v1/alerts data before
    the switch and after the soak (None: no monitoring host, or it did not answer)."""
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
    if checked:
        ignore = alerts.get("ignore") or ()
        new = sorted(set(firing(after, ignore)) - set(firing(before, ignore)))
        if new:
            failures.append(f"alerts firing that were not before the switch: {', '.join(new)}")
    return {"ok": not failures, "failures": failures, "hosts": hosts, "alerts_checked": checked}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"meshcore_rollout_counters": meshcore_rollout_counters,
                "meshcore_rollout_gate": meshcore_rollout_gate}
