from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from starlette.types import Receive, Scope, Send

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.problem import (
    PROBLEM_JSON,
    ProblemError,
    UnhandledErrorMiddleware,
)
from tests.conftest import LiveServer
from tests.lifespan import running


class OutOfStock(ProblemError):
    status: ClassVar[int] = 409
    title: ClassVar[str] = "Out of Stock"
    type: ClassVar[str] = "https://errors.example.com/out-of-stock"


async def raise_unexpected() -> None:
    raise RuntimeError("database password is hunter2")  # must never reach the client


async def raise_domain_error() -> None:
    raise OutOfStock("Only 2 left.", available=2)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    app: FastAPI = create_app(settings)
    app.add_api_route("/boom", raise_unexpected)
    app.add_api_route("/out-of-stock", raise_domain_error)
    async with running(app):
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_unknown_route_is_a_404_problem(client: AsyncClient) -> None:
    response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == 404
    assert body["title"] == "Not Found"
    assert body["instance"] == "/no/such/thing"


async def test_wrong_method_is_a_405_problem(client: AsyncClient) -> None:
    response = await client.delete("/healthz")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_JSON


async def test_a_405_allows_every_method_the_path_serves(client: AsyncClient) -> None:
    # GET and POST /orders are two routes; Starlette's own Allow named only the first.
    schema = (await client.get("/openapi.json")).json()
    wrong: dict[str, tuple[str, str | None]] = {}
    for template, item in schema["paths"].items():
        path = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", template)
        served = {method.upper() for method in item}  # FastAPI serves no HEAD for a GET
        unserved = next(m for m in ("PUT", "DELETE", "PATCH", "POST") if m not in served)
        response = await client.request(unserved, path)
        allowed = response.headers.get("allow")
        if response.status_code != 405 or set((allowed or "").split(", ")) != served:
            wrong[f"{unserved} {template}"] = (str(response.status_code), allowed)
    assert wrong == {}


async def test_validation_errors_list_each_bad_field(client: AsyncClient) -> None:
    response = await client.post("/auth/register", json={"email": "not-an-email", "password": 1})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"body.email", "body.password"}


async def test_malformed_json_is_a_422_problem(client: AsyncClient) -> None:
    response = await client.post(
        "/auth/register", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON


async def test_an_unreadable_body_is_a_documented_400_problem(
    client: AsyncClient, settings: Settings
) -> None:
    response = await client.post(
        "/auth/register", content=b"{\xff}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM_JSON
    # Every operation that takes a body says so in the schema.
    schema = create_app(settings).openapi()
    bodied = [
        op for item in schema["paths"].values() for op in item.values() if "requestBody" in op
    ]
    assert bodied
    assert all("400" in op["responses"] for op in bodied)


async def test_domain_errors_carry_their_status_and_extensions(client: AsyncClient) -> None:
    response = await client.get("/out-of-stock")
    assert response.status_code == 409
    body = response.json()
    assert body["type"] == "https://errors.example.com/out-of-stock"
    assert body["detail"] == "Only 2 left."
    assert body["available"] == 2


async def test_unexpected_errors_are_500_with_request_id_and_no_internals(
    client: AsyncClient,
) -> None:
    response = await client.get("/boom", headers={"X-Request-ID": "trace-me-123"})
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["x-request-id"] == "trace-me-123"
    body = response.json()
    assert body["request_id"] == "trace-me-123"
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text


async def test_an_unhandled_error_keeps_the_keep_alive_connection(live_server: LiveServer) -> None:
    """Under uvicorn: a 500 is problem+json and the next request on the same connection is
    answered, instead of the connection being closed under the client (or the gateway)."""
    host, port = live_server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        heads = []
        for path in ("/_faults/unhandled", "/_faults/unhandled", "/healthz"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
            heads.append((head.split(b" ", 2)[1], head.lower(), body))
    finally:
        writer.close()
    assert [status for status, _, _ in heads] == [b"500", b"500", b"200"]
    assert all(b"connection: close" not in head for _, head, _ in heads)
    assert b"content-type: application/problem+json" in heads[0][1]
    assert b"injected" not in heads[0][2]


async def test_an_error_outside_starlettes_handler_is_still_a_problem() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("before any response")

    app = UnhandledErrorMiddleware(broken)
    transport = ASGITransport(app=app, raise_app_exceptions=True)
    async with AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/x")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON


async def test_the_schema_documents_every_error_as_a_problem(settings: Settings) -> None:
    schema = create_app(settings).openapi()
    operations = [op for item in schema["paths"].values() for op in item.values()]
    errors = {
        status: response
        for op in operations
        for status, response in op["responses"].items()
        if status[0] in "45"
    }
    assert errors, "no error responses documented at all"
    for response in errors.values():
        assert response["content"] == {
            PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    # Behind the bearer token: a bad token and the per-user limit, on every such operation.
    secured = [op for op in operations if op.get("security")]
    assert secured
    assert all({"401", "429"} <= set(op["responses"]) for op in secured)
    # Staff routes name the role in their requirement, and exactly those document a 403.
    forbidding = {
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if "403" in op["responses"]
    }
    assert forbidding == {
        "POST /products",
        "PATCH /products/{product_id}",
        "PUT /products/{product_id}/image",
        "POST /reports",
        "GET /admin/dead-letters",
        "POST /admin/dead-letters/{dead_letter_id}/requeue",
    }
    staff = {
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if op.get("security") == [{"HTTPBearer": ["staff"]}]
    }
    assert staff == forbidding
    # A route's own problems, by status.
    product = schema["paths"]["/products/{product_id}"]
    assert {"403", "404", "409"} <= set(product["patch"]["responses"])
    assert "404" in product["get"]["responses"]
