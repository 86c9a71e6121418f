"""Inputs a hostile tester sent that used to reach a 500 (or were accepted): each is a 4xx
problem now, and leaves nothing half-written."""

from __future__ import annotations

import base64

import orjson
import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.products.schemas import MAX_STOCK
from tests.factories import Caller, make_product, make_user
from tests.lifespan import running

PROBLEM_JSON = "application/problem+json"
EXTREME = "9999-12-31T23:59:59-14:00"


@pytest.fixture
async def staff(session: AsyncSession, settings: Settings) -> Caller:
    return await make_user(session, settings, staff=True)


def cursor_of(*values: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).rstrip(b"=").decode()


def assert_problem(response: object, status: int) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == PROBLEM_JSON  # type: ignore[attr-defined]


async def test_nul_in_the_attribute_filter_is_a_422(app_client: AsyncClient) -> None:
    response = await app_client.get("/products", params={"attributes": '{"a":"\\u0000"}'})
    assert_problem(response, 422)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "T\u0000shirt"},
        {"attributes": {"a": "\u0000"}},
        {"attributes": {"\u0000": 1}},
        {"attributes": {"a": [{"b": "x\u0000"}]}},
    ],
)
async def test_nul_in_a_product_write_is_a_422(
    app_client: AsyncClient, staff: Caller, session: AsyncSession, body: dict[str, object]
) -> None:
    created = await app_client.post(
        "/products",
        json={"sku": "NUL-1", "name": "x", "price_cents": 1, **body},
        headers=staff.headers,
    )
    assert_problem(created, 422)
    product = await make_product(session)
    patched = await app_client.patch(f"/products/{product.id}", json=body, headers=staff.headers)
    assert_problem(patched, 422)


async def test_a_cursor_with_an_extreme_timestamp_is_a_422(
    app_client: AsyncClient, staff: Caller
) -> None:
    cursor = cursor_of(EXTREME, "00000000-0000-0000-0000-000000000000")
    assert_problem(await app_client.get("/products", params={"cursor": cursor}), 422)
    orders = await app_client.get("/orders", params={"cursor": cursor}, headers=staff.headers)
    assert_problem(orders, 422)


async def test_stock_delta_cannot_push_stock_past_the_limit(
    app_client: AsyncClient, staff: Caller, session: AsyncSession
) -> None:
    product = await make_product(session, stock=MAX_STOCK)
    for _ in range(3):
        response = await app_client.patch(
            f"/products/{product.id}", json={"stock_delta": MAX_STOCK}, headers=staff.headers
        )
        assert_problem(response, 409)
    fetched = await app_client.get(f"/products/{product.id}")
    assert fetched.json()["stock"] == MAX_STOCK


@pytest.mark.parametrize(
    "body",
    [
        {"stock_delta": False},
        {"stock_delta": True},
        {"price_cents": True},
        {"stock_delta": "5"},
        {"price_cents": 12.5},
    ],
)
async def test_booleans_and_strings_are_not_integers(
    app_client: AsyncClient, staff: Caller, session: AsyncSession, body: dict[str, object]
) -> None:
    product = await make_product(session)
    response = await app_client.patch(f"/products/{product.id}", json=body, headers=staff.headers)
    assert_problem(response, 422)


async def test_an_integer_written_with_a_zero_fraction_is_an_integer(
    app_client: AsyncClient, staff: Caller, session: AsyncSession
) -> None:
    # JSON Schema's "integer" includes 2046.0, and the schema is the contract clients test with.
    product = await make_product(session)
    body = {"price_cents": 2046.0}
    response = await app_client.patch(f"/products/{product.id}", json=body, headers=staff.headers)
    assert response.status_code == 200, response.text
    assert response.json()["price_cents"] == 2046


async def test_an_order_quantity_of_true_is_a_422(
    app_client: AsyncClient, staff: Caller, session: AsyncSession
) -> None:
    product = await make_product(session)
    body = {"items": [{"product_id": str(product.id), "quantity": True}]}
    assert_problem(await app_client.post("/orders", json=body, headers=staff.headers), 422)


@pytest.mark.parametrize(
    ("start", "end"), [("9999-12-31", "9999-12-31"), ("0001-01-01", "0001-01-02")]
)
async def test_a_report_outside_any_sane_range_is_refused_up_front(
    app_client: AsyncClient, staff: Caller, start: str, end: str
) -> None:
    response = await app_client.post(
        "/reports", json={"start": start, "end": end}, headers=staff.headers
    )
    assert_problem(response, 422)


@pytest.mark.parametrize("before", ["0.5", "12", EXTREME])
async def test_dead_letters_before_takes_iso_timestamps_only(
    app_client: AsyncClient, staff: Caller, before: str
) -> None:
    response = await app_client.get(
        "/admin/dead-letters", params={"before": before}, headers=staff.headers
    )
    assert_problem(response, 422)
    iso = await app_client.get(
        "/admin/dead-letters", params={"before": "2030-01-01T00:00:00Z"}, headers=staff.headers
    )
    assert iso.status_code == 200


async def test_a_10000_character_bearer_is_a_401_problem(app_client: AsyncClient) -> None:
    response = await app_client.get(
        "/users/me", headers={"Authorization": "Bearer " + "a" * 10_000}
    )
    assert_problem(response, 401)


async def test_a_postgres_outage_is_a_503_problem(settings: Settings) -> None:
    dead = settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"}
    )
    app = create_app(dead)
    async with running(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            login = await client.post(
                "/auth/login", json={"email": "a@example.com", "password": "long enough pw"}
            )
            listing = await client.get("/products", params={"attributes": '{"nocache": 1}'})
    for response in (login, listing):
        assert_problem(response, 503)
        assert response.headers["retry-after"] == "1"
