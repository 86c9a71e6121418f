"""Caching headers: declared per route, deny by default, strong ETags and 304s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI, Request, Response
from httpx import ASGITransport, AsyncClient

from {{ cookiecutter.project_slug }}.exceptions import NotFound
from {{ cookiecutter.project_slug }}.patterns.http_cache import (
    CachePolicy,
    add_surrogate_keys,
    cache_policy,
    conditional,
    http_date,
    install_http_cache,
    make_etag,
)
from {{ cookiecutter.project_slug }}.patterns.problem import install_problem_handlers

CATALOG = CachePolicy.public(max_age=30, s_maxage=300, stale_while_revalidate=60)
ACCOUNT = CachePolicy.private(max_age=0)
UPDATED_AT = datetime(2026, 11, 1, 12, 30, 15, 250_000, tzinfo=UTC)


class Renders:
    count = 0


@pytest.fixture
async def client() -> AsyncIterator[AsyncClient]:
    app = FastAPI()
    install_problem_handlers(app)
    install_http_cache(app)
    Renders.count = 0

    @app.get("/catalog/{item_id}", dependencies=[cache_policy(CATALOG)])
    async def catalog_item(item_id: int, request: Request) -> dict[str, object]:
        if item_id == 404:
            raise NotFound("no such item")
        add_surrogate_keys(request, f"item-{item_id}", "catalog")
        return {"id": item_id, "name": "lamp"}

    @app.get("/versioned/{item_id}", dependencies=[cache_policy(CATALOG)])
    async def versioned(item_id: int, request: Request) -> dict[str, object]:
        # The version columns answer a revalidation; the body is only built on a 200.
        conditional(request, etag=make_etag("item", item_id, 7), last_modified=UPDATED_AT)
        Renders.count += 1
        return {"id": item_id, "version": 7}

    @app.get("/account", dependencies=[cache_policy(ACCOUNT)])
    async def account(request: Request) -> dict[str, object]:
        add_surrogate_keys(request, "user-1")  # never leaves on a private response
        return {"email": "a@example.com"}

    @app.get("/undeclared")
    async def undeclared() -> dict[str, object]:
        return {"anything": True}

    @app.get("/self-managed", dependencies=[cache_policy(CATALOG)])
    async def self_managed(response: Response) -> dict[str, object]:
        response.headers["Cache-Control"] = "public, max-age=5"
        return {}

    @app.post("/catalog", dependencies=[cache_policy(CATALOG)])
    async def create() -> dict[str, object]:
        return {}

    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_a_public_route_is_shareable_with_edge_ttl_and_stale_while_revalidate(
    client: AsyncClient,
) -> None:
    response = await client.get("/catalog/1")
    assert response.status_code == 200
    assert response.headers["cache-control"] == (
        "public, max-age=30, s-maxage=300, stale-while-revalidate=60"
    )
    assert response.headers["vary"] == "Accept-Encoding"
    etag = response.headers["etag"]
    assert etag.startswith('"')  # strong, not W/
    assert etag.endswith('"')
    assert response.headers["xkey"] == "item-1 catalog"
    assert response.headers["surrogate-key"] == "item-1 catalog"


async def test_a_route_without_a_policy_is_never_shareable(client: AsyncClient) -> None:
    response = await client.get("/undeclared")
    assert response.headers["cache-control"] == "private, no-store"
    assert "etag" not in response.headers
    assert "xkey" not in response.headers


async def test_errors_and_writes_on_a_public_route_are_not_stored(client: AsyncClient) -> None:
    missing = await client.get("/catalog/404")
    assert missing.status_code == 404
    assert missing.headers["cache-control"] == "private, no-store"
    assert "xkey" not in missing.headers
    created = await client.post("/catalog")
    assert created.headers["cache-control"] == "private, no-store"
    assert "etag" not in created.headers


async def test_a_private_route_varies_on_credentials_and_carries_no_surrogate_keys(
    client: AsyncClient,
) -> None:
    response = await client.get("/account")
    assert response.headers["cache-control"] == "private, max-age=0, must-revalidate"
    assert response.headers["vary"] == "Authorization, Cookie"
    assert "xkey" not in response.headers
    assert "surrogate-key" not in response.headers
    assert "etag" in response.headers  # the browser's own copy may revalidate


async def test_a_matching_if_none_match_gets_a_304_with_headers_and_no_body(
    client: AsyncClient,
) -> None:
    first = await client.get("/catalog/1")
    etag = first.headers["etag"]
    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get("/catalog/1", headers={"If-None-Match": if_none_match})
        assert again.status_code == 304, if_none_match
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == first.headers["cache-control"]
        assert again.headers["vary"] == "Accept-Encoding"
        assert again.headers["xkey"] == "item-1 catalog"


async def test_a_stale_etag_gets_the_full_new_body(client: AsyncClient) -> None:
    response = await client.get("/catalog/2", headers={"If-None-Match": '"not-the-current-one"'})
    assert response.status_code == 200
    assert response.json() == {"id": 2, "name": "lamp"}


async def test_etags_change_with_the_body(client: AsyncClient) -> None:
    one = (await client.get("/catalog/1")).headers["etag"]
    two = (await client.get("/catalog/2")).headers["etag"]
    assert one != two
    assert (await client.get("/catalog/1")).headers["etag"] == one


async def test_versioned_routes_answer_304_without_rendering_the_body(
    client: AsyncClient,
) -> None:
    first = await client.get("/versioned/1")
    assert first.status_code == 200
    assert first.headers["etag"] == make_etag("item", 1, 7)
    assert first.headers["last-modified"] == "Sun, 01 Nov 2026 12:30:15 GMT"
    assert Renders.count == 1

    again = await client.get("/versioned/1", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["cache-control"] == CATALOG.cache_control
    assert Renders.count == 1  # answered from the version, the body was never built


async def test_if_modified_since_is_compared_with_last_modified(client: AsyncClient) -> None:
    same = await client.get("/versioned/1", headers={"If-Modified-Since": http_date(UPDATED_AT)})
    assert same.status_code == 304
    earlier = http_date(UPDATED_AT - timedelta(seconds=1))
    older = await client.get("/versioned/1", headers={"If-Modified-Since": earlier})
    assert older.status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 section 13.2.2).
    both = await client.get(
        "/versioned/1",
        headers={"If-None-Match": '"stale"', "If-Modified-Since": http_date(UPDATED_AT)},
    )
    assert both.status_code == 200


async def test_a_cache_control_set_by_the_endpoint_is_kept(client: AsyncClient) -> None:
    response = await client.get("/self-managed")
    assert response.headers["cache-control"] == "public, max-age=5"
