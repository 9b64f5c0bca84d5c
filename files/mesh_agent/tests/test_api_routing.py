"""The API's endpoint table (api/routing.py): one declaration validates and documents."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.testclient import TestClient

from mesh_agent.api.routing import BadParam, Endpoint, NotFound, Param, openapi

LIMIT = Param("limit", int, default=100, ge=1, le=1000)
KIND = Param("kind", choices=("a", "b"), many=True)


@given(st.integers(min_value=-10_000, max_value=10_000))
def test_an_integer_is_accepted_exactly_within_its_bounds(n: int) -> None:
    q = QueryParams({"limit": str(n)})
    if 1 <= n <= 1000:
        assert LIMIT.parse(q) == n
    else:
        with pytest.raises(BadParam, match="limit: must be"):
            LIMIT.parse(q)


@pytest.mark.parametrize("text", ["x", "1.5", "", "nan"])
def test_not_an_integer_is_refused_with_its_name(text: str) -> None:
    with pytest.raises(BadParam, match="limit: not an integer"):
        LIMIT.parse(QueryParams({"limit": text}))


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_number_must_be_finite(text: str) -> None:
    with pytest.raises(BadParam, match="not a finite number"):
        Param("since", float, ge=0).parse(QueryParams({"since": text}))


def test_booleans_repeats_choices_lengths_and_defaults() -> None:
    flag = Param("open", bool, default=False)
    assert [flag.parse(QueryParams({"open": v})) for v in ("true", "1", "On", "no", "0")] == [
        True, True, True, False, False]
    with pytest.raises(BadParam, match="open: not a boolean"):
        flag.parse(QueryParams({"open": "maybe"}))
    assert flag.parse(QueryParams({})) is False and LIMIT.parse(QueryParams({})) == 100
    assert KIND.parse(QueryParams([("kind", "a"), ("kind", "b")])) == ["a", "b"]
    assert KIND.parse(QueryParams({})) is None
    with pytest.raises(BadParam, match="kind: must be one of a, b"):
        KIND.parse(QueryParams([("kind", "a"), ("kind", "c")]))
    with pytest.raises(BadParam, match="longer than 3"):
        Param("s", max_length=3).parse(QueryParams({"s": "abcd"}))


def test_endpoints_answer_json_422_404_and_document_themselves() -> None:
    async def item(name: str, limit: int) -> dict[str, object]:
        """One item.

        Longer text."""
        if name == "missing":
            raise NotFound("no such item")
        return {"name": name, "limit": limit, "tags": {"b", "a"}}

    def rows(kind: list[str] | None) -> list[str]:  # a plain function: the thread pool
        return kind or []

    endpoints = [Endpoint("/items/{name}", item, (LIMIT,), responses={404: "unknown"}),
                 Endpoint("/rows", rows, (KIND,))]
    client = TestClient(Starlette(routes=[e.route() for e in endpoints]))
    assert client.get("/items/x?limit=5").json() == {"name": "x", "limit": 5, "tags": ["a", "b"]}
    bad = client.get("/items/x?limit=0")
    assert bad.status_code == 422 and bad.json() == {"detail": "limit: must be >= 1"}
    missing = client.get("/items/missing")
    assert missing.status_code == 404 and missing.json() == {"detail": "no such item"}
    assert client.get("/rows?kind=b&kind=a").json() == ["b", "a"]
    assert client.post("/rows").status_code == 405

    doc = openapi("t", "1", "d", endpoints)
    op = doc["paths"]["/items/{name}"]["get"]
    assert op["summary"] == "One item." and op["description"] == "Longer text."
    assert {p["name"]: p["in"] for p in op["parameters"]} == {"limit": "query", "name": "path"}
    assert op["parameters"][0]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000,
                                             "default": 100}
    assert set(op["responses"]) == {"200", "404", "422"}
    rows_schema = doc["paths"]["/rows"]["get"]["parameters"][0]["schema"]
    assert rows_schema == {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}
