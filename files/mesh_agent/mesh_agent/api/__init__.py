"""HTTP API: health, readiness, Prometheus metrics and read-only views of the agent."""

from mesh_agent.api.app import create_app

__all__ = ["create_app"]
