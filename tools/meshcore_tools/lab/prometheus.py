"""The Prometheus HTTP API, as the lab's status, its report and the monitoring tests read it."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from meshcore_tools.lab import monitor


def url_of(state: dict[str, Any]) -> str:
    """The base URL of the lab monitor's Prometheus (its port from the lab's config)."""
    return monitor.url_of(state, "Prometheus")


def api(base: str, endpoint: str, timeout: float = 5, **params: str) -> Any:
    """GET <base>/api/v1/<endpoint>?params and return its "data" (OSError when unreachable)."""
    url = f"{base}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise OSError(f"{url}: {body.get('error', body)}")
    return body["data"]


def instant(base: str, query: str, timeout: float = 60) -> float | None:
    """The first sample of an instant query, or None when it returns nothing."""
    result = api(base, "query", timeout=timeout, query=query)["result"]
    return float(result[0]["value"][1]) if result else None


def active_at(alert: Mapping[str, Any]) -> float | None:
    """When an alert of an ``/api/v1/alerts`` answer became active (its ``activeAt``, RFC 3339
    with up to nanoseconds, read to the microsecond), in Unix seconds; None when absent,
    unreadable or without a zone."""
    try:
        when = dt.datetime.fromisoformat(str(alert.get("activeAt") or ""))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def firing(alerts: Mapping[str, Any], ignore: Iterable[str] = (), *,
           before: float | None = None, since: float | None = None) -> list[str]:
    """The firing alerts of an ``/api/v1/alerts`` answer's data, as ``Name{node=...}``, sorted.

    A pending alert (its ``for:`` not yet over) is not firing; names in ``ignore`` are left out.
    *before*: only those that became active before that time (Unix seconds); *since*: only
    those that became active then or later (an alert whose start is unknown counts as
    before: it is never put down to a cause that came later).
    """
    skip = set(ignore)
    out = []
    for a in alerts.get("alerts", []):
        labels = a["labels"]
        if a.get("state") != "firing" or labels.get("alertname") in skip:
            continue
        began = active_at(a)
        if since is not None and (began is None or began < since):
            continue
        if before is not None and began is not None and began >= before:
            continue
        out.append(f"{labels.get('alertname', '?')}{{node={labels.get('node', '-')}}}")
    return sorted(out)


def targets(address: str) -> tuple[dict[str, dict[str, str]], str | None]:
    """Map node -> job -> health from the Prometheus at ``address``, and why not if unreachable."""
    try:
        # A 50-node lab's monitor answers this in seconds when the host is busy.
        data = api(f"http://{address}:9090", "targets", timeout=30, state="active")
    except OSError as exc:
        return {}, str(exc)
    out: dict[str, dict[str, str]] = {}
    for t in data["activeTargets"]:
        node = t["labels"].get("node", t["labels"].get("instance", "?"))
        out.setdefault(node, {})[t["labels"].get("job", "?")] = t["health"]
    return out, None
