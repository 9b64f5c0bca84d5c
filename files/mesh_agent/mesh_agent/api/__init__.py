"""HTTP API: health, readiness, Prometheus metrics and read-only views of the agent."""

from mesh_agent.api.app import create_app
from mesh_agent.api.server import guarded_server

__all__ = ["create_app", "guarded_server"]
