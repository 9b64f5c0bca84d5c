"""The HTTP API (Starlette, :mod:`.routing`) over a read-only view of the running agent.

The app sees the agent only through :class:`StateReader`, the narrow set of
read methods it needs (:class:`mesh_agent.view.AgentView` implements it), the
metrics registry and the event log's reader: it cannot reach a core.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import networkx as nx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

import mesh_agent
from mesh_agent.api.events import EventReader, events_endpoint
from mesh_agent.api.routing import Endpoint, Json, NotFound, Param, error, openapi
from mesh_agent.paths import augmentation_plan, protection_summary


class StateReader(Protocol):
    """What the API reads of the agent; every method returns fresh plain data."""

    @property
    def node_name(self) -> str: ...
    @property
    def mode(self) -> str: ...
    def readiness(self) -> dict[str, bool]: ...
    def readiness_detail(self) -> dict[str, float | int]: ...
    def neighbors(self) -> list[dict[str, Any]]: ...
    def graph(self) -> nx.Graph: ...
    def topology_view(self) -> dict[str, Any]: ...
    def coverage(self) -> dict[str, float]: ...
    def paths_view(self) -> dict[str, dict[str, Any]]: ...
    def path(self, dst: str) -> dict[str, Any] | None: ...
    def last_failover(self) -> dict[str, Any] | None: ...
    def agent_view(self) -> dict[str, Any]: ...
    def identity_view(self) -> dict[str, Any]: ...
    def incidents(self, limit: int = ..., open_only: bool = ...) -> dict[str, Any]: ...


def create_app(state: StateReader, registry: CollectorRegistry, events: EventReader) -> Starlette:
    node = state.node_name

    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok", "node": node}

    async def readyz() -> Response:
        """200 when every check holds, else 503.

        ``failing`` names the checks that do not, ``detail`` tells a moment's flicker
        (paths pending for 0.2 s) from a stuck node."""
        checks = state.readiness()
        ready = all(checks.values())
        return Json(
            {"ready": ready, "checks": checks, "failing": [k for k, ok in checks.items() if not ok],
             "detail": state.readiness_detail()},
            status_code=200 if ready else 503)

    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def agent() -> dict[str, Any]:
        """Version, mode (observe or enforce) and link backend of this node's agent."""
        return state.agent_view()

    async def identity() -> dict[str, Any]:
        """SPIFFE ID, certificate validity, trust bundle and where the identity comes from."""
        return {"node": node, **state.identity_view()}

    async def neighbors() -> dict[str, Any]:
        """Neighbours: interface, address, RTT, loss, link age, echo mode."""
        return {"node": node, "neighbors": state.neighbors()}

    async def topology() -> dict[str, Any]:
        """The mesh as this node's link-state database sees it."""
        return {"node": node, **state.topology_view()}

    async def paths() -> dict[str, Any]:
        """Every destination's primary and backup paths, and the protection coverage."""
        return {
            "node": node,
            "mode": state.mode,
            "coverage": state.coverage(),
            "destinations": state.paths_view(),
            "last_failover": state.last_failover(),
        }

    async def path(dst: str) -> dict[str, Any]:
        """One destination's paths."""
        found = state.path(dst)
        if found is None:
            raise NotFound(f"no path to {dst}")
        return {**found, "coverage": state.coverage()}

    async def plan(max_links: int) -> dict[str, Any]:
        """Planning report on the mesh as our LSDB sees it (paths.planning).

        ``summary``: the fraction of node pairs joined by two edge-disjoint
        paths and the bridges. ``links``: the cheapest new links that would
        make the mesh 2-edge-connected (networkx ``k_edge_augmentation``), the
        ones that protect the most node pairs first. Every absent node pair is a
        candidate at cost 1 (the LSDB has no positions), so the work grows with
        the square of the mesh size: it runs in a worker thread.
        """
        graph = state.graph()
        summary = protection_summary(graph)
        links = await asyncio.to_thread(augmentation_plan, graph, "cost", max_links)
        return {"node": node, "summary": summary, "links": links}

    def incidents(limit: int, open_only: bool) -> dict[str, Any]:
        """The self-healing loop's incidents, each as its chain.

        The signal and threshold that raised it, its class and target, the action chosen
        and its outcome, and the MTTR once recovered; with the loop's thresholds and
        active actions (docs/mapek.md). A plain function: it runs on the thread pool
        (it reads SQLite)."""
        return state.incidents(limit, open_only)

    endpoints = [
        Endpoint("/healthz", healthz),
        Endpoint("/readyz", readyz, responses={503: "Not ready: ``failing`` says why"}),
        Endpoint("/metrics", metrics),
        Endpoint("/v1/agent", agent),
        Endpoint("/v1/identity", identity),
        Endpoint("/v1/neighbors", neighbors),
        Endpoint("/v1/topology", topology),
        Endpoint("/v1/paths", paths),
        Endpoint("/v1/paths/{dst}", path,
                 responses={404: "No path to this destination (unknown or unreachable)"}),
        Endpoint("/v1/plan", plan, (
            Param("max_links", int, default=10, ge=1, le=1000,
                  description="Most new links to propose"),)),
        Endpoint("/v1/incidents", incidents, (
            Param("limit", int, default=100, ge=1, le=1000, description="The newest N incidents"),
            Param("open", bool, default=False, arg="open_only",
                  description="Only those not recovered"),)),
        events_endpoint(node, events),
    ]
    document = openapi(
        "mesh-agent", mesh_agent.__version__,
        "mesh-core node agent: neighbours, topology, k-disjoint paths, routes.", endpoints)

    async def schema() -> dict[str, Any]:
        """This document."""
        return document

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, str(exc.detail))

    routes = [e.route() for e in endpoints] + [Endpoint("/openapi.json", schema).route()]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
