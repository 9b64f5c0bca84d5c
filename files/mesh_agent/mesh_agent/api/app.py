"""FastAPI app over a read-only view of the running agent.

The app sees the agent only through :class:`StateReader`, the narrow set of
read methods it needs (:class:`mesh_agent.view.AgentView` implements it), the
metrics registry and the event log's reader: it cannot reach a core.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import networkx as nx
from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import mesh_agent
from mesh_agent.api.events import EventReader, events_router
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


def create_app(state: StateReader, registry: CollectorRegistry, events: EventReader) -> FastAPI:
    app = FastAPI(
        title="mesh-agent",
        version=mesh_agent.__version__,
        description="mesh-core node agent: neighbours, topology, k-disjoint paths, routes.",
    )
    node = state.node_name

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "node": node}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 when every check holds, else 503; ``failing`` names the checks that do not,
        ``detail`` tells a moment's flicker (paths pending for 0.2 s) from a stuck node."""
        checks = state.readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"ready": ready, "checks": checks, "failing": [k for k, ok in checks.items() if not ok],
             "detail": state.readiness_detail()},
            status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/agent")
    async def agent() -> dict[str, Any]:
        """Version, mode (observe or enforce) and link backend of this node's agent."""
        return state.agent_view()

    @app.get("/v1/identity")
    async def identity() -> dict[str, Any]:
        """SPIFFE ID, certificate validity, trust bundle and where the identity comes from."""
        return {"node": node, **state.identity_view()}

    @app.get("/v1/neighbors")
    async def neighbors() -> dict[str, Any]:
        return {"node": node, "neighbors": state.neighbors()}

    @app.get("/v1/topology")
    async def topology() -> dict[str, Any]:
        return {"node": node, **state.topology_view()}

    @app.get("/v1/paths")
    async def paths() -> dict[str, Any]:
        return {
            "node": node,
            "mode": state.mode,
            "coverage": state.coverage(),
            "destinations": state.paths_view(),
            "last_failover": state.last_failover(),
        }

    @app.get(
        "/v1/paths/{dst}",
        responses={404: {"description": "No path to this destination (unknown or unreachable)"}},
    )
    async def path(dst: str) -> dict[str, Any]:
        found = state.path(dst)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no path to {dst}")
        return {**found, "coverage": state.coverage()}

    @app.get("/v1/plan")
    async def plan(
        max_links: int = Query(10, ge=1, le=1000, description="Most new links to propose"),
    ) -> dict[str, Any]:
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

    @app.get("/v1/incidents")
    def incidents(
        limit: int = Query(100, ge=1, le=1000, description="The newest N incidents"),
        open_only: bool = Query(False, alias="open", description="Only those not recovered"),
    ) -> dict[str, Any]:
        """The self-healing loop's incidents, each as its chain: the signal and threshold
        that raised it, its class and target, the action chosen and its outcome, and the
        MTTR once recovered; with the loop's thresholds and active actions (docs/mapek.md).
        A plain function: FastAPI runs it on its thread pool (it reads SQLite)."""
        return state.incidents(limit, open_only)

    app.include_router(events_router(node, events))
    return app
