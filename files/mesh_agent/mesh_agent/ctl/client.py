"""How meshctl reaches an agent: HTTP to its API, or ``meshctl --json`` over ssh.

The API listens on loopback, plus the management address when the inventory
sets ``mesh_mgmt_address`` (the role's ``mesh_agent_api_listen``); it is never
opened on the mesh. So ``--node HOST`` talks HTTP to ``HOST:9105`` on the
management network, and ``--ssh`` runs ``ssh HOST meshctl --json ...`` instead
for a node whose API only listens on loopback.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    ConfigError,
    api_endpoints,
    load_config,
)

TIMEOUT_S = 5.0


class AgentUnreachable(Exception):
    """The agent did not answer (one line for the operator, in str)."""


class ApiError(Exception):
    """The agent answered with an error status the command does not expect."""


def _default_listen() -> tuple[str, ...]:
    """The agent's own default ``api_listen`` (its one owner is :class:`AgentConfig`)."""
    default = AgentConfig.__dataclass_fields__["api_listen"].default
    assert isinstance(default, tuple)
    return default


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def local_api_url(config_path: Path = DEFAULT_CONFIG_PATH) -> str:
    """The local agent's API: the first loopback endpoint of its config's ``api_listen``.

    The config is readable by root and the agent's group only; when it cannot be
    read, the agent's own default endpoint is used.
    """
    try:
        endpoints = load_config(config_path).api_endpoints
    except ConfigError:
        endpoints = api_endpoints(_default_listen())
    loopback = [(h, p) for h, p in endpoints if h.startswith("127.") or h == "::1"]
    host, port = (loopback or endpoints)[0]
    return _url(host, port)


def node_api_url(host: str, port: int) -> str:
    return _url(host.strip("[]"), port)


@dataclass
class HttpClient:
    """GETs JSON from one agent's API; connection failures become :class:`AgentUnreachable`."""

    base_url: str
    timeout: float = TIMEOUT_S

    def get(self, path: str, params: Sequence[tuple[str, Any]] = (),
            ok: Sequence[int] = (200,)) -> tuple[int, Any]:
        query = urllib.parse.urlencode([(k, str(v)) for k, v in params])
        url = f"{self.base_url.rstrip('/')}{path}{'?' + query if query else ''}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AgentUnreachable(f"cannot reach the agent at {self.base_url}: {reason}") from None
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise ApiError(f"{url}: HTTP {status}, not JSON") from None
        if status not in ok:
            detail = data.get("detail") if isinstance(data, dict) else data
            raise ApiError(f"{path}: HTTP {status}: {detail}")
        return status, data
