"""The API's endpoints as one table: each declares its query parameters once, and that
declaration both validates requests and describes them in ``/openapi.json``.

The API is a dozen read-only GETs. It runs on Starlette (the ASGI toolkit FastAPI is
built on) without FastAPI and pydantic: those two, with what they import, cost each
agent about 14 MB of RSS and half a second of start-up CPU (docs/agent-architecture.md,
"RSS"), which a Raspberry Pi's agent cannot spare for request validation this small.

* A handler receives its path parameters and its validated query parameters as
  keyword arguments and returns a JSON-able value or a :class:`Response`.
* A coroutine handler runs on the event loop; a plain function (one that reads SQLite)
  runs in Starlette's thread pool, so a slow disk never blocks the agent.
* A bad query parameter is ``422 {"detail": "<param>: <why>"}``; :class:`NotFound`
  raised by a handler is ``404 {"detail": ...}``.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


class BadParam(ValueError):
    """A query parameter that does not meet its declaration (HTTP 422)."""


class NotFound(LookupError):
    """What a handler raises for a resource that does not exist (HTTP 404)."""


def _plain(value: Any) -> Any:
    """What ``json`` cannot encode by itself: sets (sorted), enums, dataclasses."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


class Json(JSONResponse):
    """Compact JSON; NaN and infinities are refused (strict JSON), as before."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_plain, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":")).encode()


def error(status: int, detail: str) -> Response:
    return Json({"detail": detail}, status_code=status)


@dataclass(frozen=True)
class Param:
    """One query parameter: its type, bounds, choices, default and whether it repeats."""

    name: str
    kind: type = str  # int, float, bool or str
    default: Any = None
    ge: float | None = None
    le: float | None = None
    max_length: int | None = None
    choices: tuple[str, ...] | None = None
    many: bool = False  # ?kind=a&kind=b -> a list
    arg: str | None = None  # the handler's keyword, when it differs from the name
    description: str = ""

    def parse(self, query: QueryParams) -> Any:
        raw = query.getlist(self.name)
        if not raw:
            return self.default
        if self.many:
            return [self._one(v) for v in raw]
        return self._one(raw[-1])

    def _one(self, text: str) -> Any:
        value: Any
        if self.kind is bool:
            low = text.lower()
            if low not in TRUE | FALSE:
                raise BadParam(f"{self.name}: not a boolean: {text[:40]!r}")
            return low in TRUE
        if self.kind in (int, float):
            try:
                value = self.kind(text)
            except ValueError:
                what = "an integer" if self.kind is int else "a number"
                raise BadParam(f"{self.name}: not {what}: {text[:40]!r}") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise BadParam(f"{self.name}: not a finite number")
            if self.ge is not None and value < self.ge:
                raise BadParam(f"{self.name}: must be >= {self.ge:g}")
            if self.le is not None and value > self.le:
                raise BadParam(f"{self.name}: must be <= {self.le:g}")
            return value
        if self.max_length is not None and len(text) > self.max_length:
            raise BadParam(f"{self.name}: longer than {self.max_length} characters")
        if self.choices is not None and text not in self.choices:
            raise BadParam(f"{self.name}: must be one of {', '.join(self.choices)}")
        return text

    def schema(self) -> dict[str, Any]:
        kind = {int: "integer", float: "number", bool: "boolean"}.get(self.kind, "string")
        one: dict[str, Any] = {"type": kind}
        for key, value in (("minimum", self.ge), ("maximum", self.le),
                           ("maxLength", self.max_length)):
            if value is not None:
                one[key] = value
        if self.choices is not None:
            one["enum"] = list(self.choices)
        schema: dict[str, Any] = {"type": "array", "items": one} if self.many else one
        if self.default is not None:
            schema["default"] = self.default
        return {"name": self.name, "in": "query", "required": False, "schema": schema,
                "description": self.description}


@dataclass(frozen=True)
class Endpoint:
    """A GET endpoint: its path, handler, query parameters and documented responses."""

    path: str
    handler: Callable[..., Any]
    params: Sequence[Param] = ()
    responses: dict[int, str] = field(default_factory=dict)

    def _arguments(self, request: Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.path_params)
        for p in self.params:
            args[p.arg or p.name] = p.parse(request.query_params)
        return args

    def _respond(self, result: Any) -> Response:
        return result if isinstance(result, Response) else Json(result)

    def route(self) -> Route:
        handler = self.handler
        if inspect.iscoroutinefunction(handler):
            async def call_async(request: Request) -> Response:
                try:
                    return self._respond(await handler(**self._arguments(request)))
                except BadParam as exc:
                    return error(422, str(exc))
                except NotFound as exc:
                    return error(404, str(exc))

            return Route(self.path, call_async, methods=["GET"])

        def call(request: Request) -> Response:  # Starlette runs it in its thread pool
            try:
                return self._respond(handler(**self._arguments(request)))
            except BadParam as exc:
                return error(422, str(exc))
            except NotFound as exc:
                return error(404, str(exc))

        return Route(self.path, call, methods=["GET"])

    def operation(self) -> dict[str, Any]:
        doc = inspect.getdoc(self.handler) or ""
        summary, _, description = doc.partition("\n\n")
        responses = {"200": {"description": "OK"}}
        responses.update({str(k): {"description": v} for k, v in self.responses.items()})
        if self.params:
            responses["422"] = {"description": "A query parameter out of its declaration"}
        params = [p.schema() for p in self.params]
        params += [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                   for name in _path_names(self.path)]
        return {"summary": summary.replace("\n", " "), "description": description,
                "parameters": params, "responses": responses}


def _path_names(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/")
            if part.startswith("{") and part.endswith("}")]


def openapi(title: str, version: str, description: str,
            endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """An OpenAPI 3.1 document of *endpoints*, from the same declarations that validate."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": {e.path: {"get": e.operation()} for e in endpoints},
    }
