"""FastAPI app over a running :class:`mesh_agent.agent.Agent` (read-only)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import mesh_agent
from mesh_agent.paths import augmentation_plan, protection_summary

if TYPE_CHECKING:
    from mesh_agent.agent import Agent


def create_app(agent: Agent) -> FastAPI:
    app = FastAPI(
        title="mesh-agent",
        version=mesh_agent.__version__,
        description="mesh-core node agent: neighbours, topology, k-disjoint paths, routes.",
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "node": agent.cfg.node_name}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = agent.readiness()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/neighbors")
    async def neighbors() -> dict[str, Any]:
        now = agent.clock()
        return {
            "node": agent.cfg.node_name,
            "neighbors": [
                {
                    "name": nb.name,
                    "interface": nb.ifname,
                    "link_address": nb.link_address,
                    "node_address": nb.node_address,
                    "state": nb.state,
                    "loss": round(nb.loss(), 4),
                    "rtt_seconds": nb.rtt_s,
                    "age_seconds": round(nb.age(now), 3),
                    "cost": nb.cost(),
                    "last_seq": nb.last_seq,
                }
                for nb in agent.sensor.neighbors()
            ],
        }

    @app.get("/v1/topology")
    async def topology() -> dict[str, Any]:
        g = agent.lsdb.graph()
        return {
            "node": agent.cfg.node_name,
            "nodes": [
                {"name": n, "address": d.get("address")} for n, d in sorted(g.nodes(data=True))
            ],
            "edges": [
                {"a": a, "b": b, "cost": d.get("cost")} for a, b, d in sorted(g.edges(data=True))
            ],
            "lsdb": {
                origin: {
                    "seq": e.advert.seq,
                    "age_seconds": round(agent.clock() - e.born, 3),
                }
                for origin, e in sorted(agent.lsdb.entries().items())
            },
        }

    def _route_view() -> dict[str, dict[str, Any]]:
        return {
            r.destination: {
                "address": r.address,
                "group_id": r.group_id,
                "active_next_hop": r.active,
            }
            for r in agent.routes.installed()
        }

    @app.get("/v1/paths")
    async def paths() -> dict[str, Any]:
        routes = _route_view()
        return {
            "node": agent.cfg.node_name,
            "mode": agent.cfg.mode,
            "coverage": agent.paths.coverage(),
            "destinations": {
                dst: {
                    "primary_next_hop": ch.primary_next_hop,
                    "backup_next_hop": ch.backup_next_hop,
                    "backup_loop_free": ch.backup_loop_free,
                    "backup_node_protecting": ch.backup_node_protecting,
                    "cost": ch.cost,
                    "installed": dst in routes,
                }
                for dst, ch in sorted(agent.paths.choices().items())
            },
            "last_failover": agent.last_failover,
        }

    @app.get(
        "/v1/paths/{dst}",
        responses={404: {"description": "No path to this destination (unknown or unreachable)"}},
    )
    async def path(dst: str) -> dict[str, Any]:
        ch = agent.paths.get(dst)
        if ch is None:
            raise HTTPException(status_code=404, detail=f"no path to {dst}")
        return {
            "destination": dst,
            "primary": ch.primary,
            "backup": ch.backup,
            "disjoint": ch.disjoint,
            "primary_next_hop": ch.primary_next_hop,
            "backup_next_hop": ch.backup_next_hop,
            "backup_loop_free": ch.backup_loop_free,
            "backup_node_protecting": ch.backup_node_protecting,
            "protected_links": [
                {"a": a, "b": b, "protected": p} for (a, b), p in ch.protected_links.items()
            ],
            "cost": ch.cost,
            "route": _route_view().get(dst),
            "coverage": agent.paths.coverage(),
        }

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
        graph = agent.lsdb.graph()
        summary = protection_summary(graph)
        links = await asyncio.to_thread(augmentation_plan, graph, "cost", max_links)
        return {"node": agent.cfg.node_name, "summary": summary, "links": links}

    return app
