"""Every dashboard panel's PromQL returns data from the lab's Prometheus.

Slow (runs under `make test-full`, with --run-slow): it needs a running lab.
MESHCORE_PROMETHEUS_URL points it at a Prometheus that is already running
(read-only, e.g. http://10.79.0.2:9090); otherwise it takes the `lab` fixture
(tests/conftest.py), which builds the 10-node lab. MESHCORE_EXPAND_RULES=1
replaces recording-rule names by their expressions, for a Prometheus
provisioned before the rules existed.

Panels listed in dashboard_spec.WAITING_PANELS belong to later issues: their
queries must return nothing yet (they are reported as xfail, never as passing);
the day their metric appears this test fails until the marker is removed.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import pytest
from dashboard_spec import (
    NAN_WHEN_NO_EVENTS,
    WAITING_PANELS,
    base_title,
    expand_rules,
    panels,
    waiting_for,
)
from meshcore_tools.lab import prometheus as prom
from meshcore_tools.lab.state import load_state

pytestmark = pytest.mark.slow
# Recording rules over 5 min windows need a few evaluations after the lab comes up.
DEADLINE_S = float(os.environ.get("MESHCORE_PANEL_WAIT_S", "180"))
PANELS = panels()


@pytest.fixture(scope="module")
def prometheus(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("MESHCORE_PROMETHEUS_URL")
    if not url:
        request.getfixturevalue("lab")
        url = prom.url_of(load_state())
    try:
        prom.api(url, "status/buildinfo")
    except OSError as exc:
        pytest.fail(f"Prometheus at {url} does not answer: {exc}")
    return url


def query(url: str, expr: str) -> list[dict[str, Any]]:
    if os.environ.get("MESHCORE_EXPAND_RULES") == "1":
        expr = expand_rules(expr)
    return list(prom.api(url, "query", timeout=60, query=expr)["result"])


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result]


def test_waiting_list_matches_the_dashboard() -> None:
    assert {base_title(p): waiting_for(p) for p in PANELS if waiting_for(p)} == WAITING_PANELS


@pytest.mark.parametrize("panel", PANELS, ids=[base_title(p) for p in PANELS])
def test_panel_returns_lab_data(prometheus: str, panel: dict[str, Any]) -> None:
    check_panel(prometheus, panel)


def check_panel(prometheus: str, panel: dict[str, Any]) -> None:
    """Every query of a live panel returns finite data; a waiting panel's returns none (xfail)."""
    title = base_title(panel)
    exprs = [t["expr"] for t in panel["targets"]]
    if waiting_for(panel):
        arrived = {e: values(query(prometheus, e)) for e in exprs}
        assert not any(arrived.values()), (
            f"{title}: its metric now has data {arrived}; remove its waiting marker "
            "(meshcore_tools/grafana/dashboard.py, tests/dashboard_spec.py, docs/monitoring.md)")
        pytest.xfail(f"waiting for issue {waiting_for(panel)}: no data yet, as expected")
    deadline = time.monotonic() + DEADLINE_S
    while True:
        results = {e: values(query(prometheus, e)) for e in exprs}
        finite = {e: [v for v in vs if math.isfinite(v)] for e, vs in results.items()}
        if all(results.values()) and all(finite.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(5)
    empty = [e for e, vs in results.items() if not vs]
    assert not empty, f"{title}: no series for {empty}"
    nan_only = [e for e, vs in finite.items() if not vs]
    if nan_only:
        # A quantile of zero events is NaN: acceptable only when no event happened.
        assert title in NAN_WHEN_NO_EVENTS, f"{title}: only NaN for {nan_only}"
        events = values(query(prometheus, NAN_WHEN_NO_EVENTS[title]))
        assert events and events[0] == 0, f"{title}: NaN although {events} events happened"
    print(f"{title}: " + "; ".join(f"{len(vs)} series, e.g. {vs[0]:.6g}"
                                   for vs in results.values()))
