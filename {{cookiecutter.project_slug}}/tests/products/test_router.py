from __future__ import annotations

from uuid import UUID, uuid4

import orjson
import pytest
from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import Inventory, Product
from tests.factories import Caller, make_product, make_user

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
async def staff(session: AsyncSession, settings: Settings) -> Caller:
    return await make_user(session, settings, staff=True)


@pytest.fixture
async def shopper(session: AsyncSession, settings: Settings) -> Caller:
    return await make_user(session, settings)


def new_product(**overrides: object) -> dict[str, object]:
    return {
        "sku": "TEE-RED-M",
        "name": "T-shirt",
        "price_cents": 1999,
        "attributes": {"color": "red", "size": "m"},
        "stock": 7,
        **overrides,
    }


async def test_staff_create_a_product_with_its_stock(
    app_client: AsyncClient, staff: Caller
) -> None:
    response = await app_client.post("/products", json=new_product(), headers=staff.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["sku"] == "TEE-RED-M"
    assert created["price_cents"] == 1999
    assert created["stock"] == 7

    fetched = await app_client.get(f"/products/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created


async def test_only_staff_create_or_update_products(
    app_client: AsyncClient, shopper: Caller, session: AsyncSession
) -> None:
    forbidden = await app_client.post("/products", json=new_product(), headers=shopper.headers)
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"] == PROBLEM_JSON
    anonymous = await app_client.post("/products", json=new_product())
    assert anonymous.status_code == 401

    product = await make_product(session)
    update = await app_client.patch(
        f"/products/{product.id}", json={"price_cents": 1}, headers=shopper.headers
    )
    assert update.status_code == 403


async def test_a_sku_is_unique(app_client: AsyncClient, staff: Caller) -> None:
    first = await app_client.post("/products", json=new_product(), headers=staff.headers)
    assert first.status_code == 201
    second = await app_client.post(
        "/products", json=new_product(name="Copy"), headers=staff.headers
    )
    assert second.status_code == 409
    assert second.json()["sku"] == "TEE-RED-M"


@pytest.mark.parametrize(
    ("field", "value"),
    [("price_cents", 19.99), ("price_cents", -1), ("stock", -1), ("sku", "has spaces")],
)
async def test_invalid_products_are_422(
    app_client: AsyncClient, staff: Caller, field: str, value: object
) -> None:
    response = await app_client.post(
        "/products", json=new_product(**{field: value}), headers=staff.headers
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == f"body.{field}"


async def test_an_unknown_product_is_404(app_client: AsyncClient) -> None:
    response = await app_client.get(f"/products/{uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON


async def test_staff_update_fields_and_adjust_stock_by_a_delta(
    app_client: AsyncClient, staff: Caller, session: AsyncSession
) -> None:
    product = await make_product(session, price_cents=1000, stock=5)
    response = await app_client.patch(
        f"/products/{product.id}",
        json={"price_cents": 1200, "attributes": {"color": "blue"}, "stock_delta": 3},
        headers=staff.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["price_cents"], body["attributes"], body["stock"]) == (1200, {"color": "blue"}, 8)

    unchanged = await app_client.patch(
        f"/products/{product.id}", json={"name": None, "attributes": None}, headers=staff.headers
    )
    assert unchanged.status_code == 200
    assert unchanged.json()["attributes"] == {"color": "blue"}

    missing = await app_client.patch(
        f"/products/{uuid4()}", json={"stock_delta": 1}, headers=staff.headers
    )
    assert missing.status_code == 404


async def test_stock_never_goes_below_zero_and_a_refused_update_changes_nothing(
    app_client: AsyncClient, staff: Caller, session: AsyncSession
) -> None:
    product = await make_product(session, price_cents=1000, stock=2)
    response = await app_client.patch(
        f"/products/{product.id}",
        json={"price_cents": 1, "stock_delta": -3},
        headers=staff.headers,
    )
    assert response.status_code == 409
    # The price change in the same request was rolled back with it.
    row = (
        await session.execute(
            select(Product.price_cents, Inventory.stock)
            .join(Inventory)
            .where(Product.id == product.id)
            .execution_options(populate_existing=True)
        )
    ).one()
    assert tuple(row) == (1000, 2)


async def page_through(client: AsyncClient, path: str, limit: int) -> list[dict[str, object]]:
    """Follow next_cursor to the end; return every item in the order served."""
    items: list[dict[str, object]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(path, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_the_catalog_pages_newest_first_with_an_opaque_cursor(
    app_client: AsyncClient, session: AsyncSession
) -> None:
    products = [await make_product(session) for _ in range(5)]
    # One transaction: all five share created_at, so the id breaks every tie.
    expected = sorted(products, key=lambda p: (p.created_at, p.id), reverse=True)

    served = await page_through(app_client, "/products", limit=2)

    assert [UUID(str(item["id"])) for item in served] == [p.id for p in expected]


async def test_the_catalog_filters_on_attributes(
    app_client: AsyncClient, session: AsyncSession
) -> None:
    red_m = await make_product(session, attributes={"color": "red", "size": "m"})
    red_l = await make_product(session, attributes={"color": "red", "size": "l"})
    await make_product(session, attributes={"color": "blue", "size": "m"})

    red = await app_client.get(
        "/products", params={"attributes": orjson.dumps({"color": "red"}).decode()}
    )
    assert {item["id"] for item in red.json()["items"]} == {str(red_m.id), str(red_l.id)}

    both = await app_client.get("/products", params={"attributes": '{"color": "red", "size": "m"}'})
    assert [item["id"] for item in both.json()["items"]] == [str(red_m.id)]


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '"red"'])
async def test_an_attribute_filter_must_be_a_json_object(app_client: AsyncClient, bad: str) -> None:
    response = await app_client.get("/products", params={"attributes": bad})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON


@pytest.mark.parametrize("cursor", ["garbage", "WyJub3QgYSBkYXRlIiwgIngiXQ", "W10"])
async def test_a_forged_cursor_is_422(app_client: AsyncClient, cursor: str) -> None:
    response = await app_client.get("/products", params={"cursor": cursor})
    assert response.status_code == 422
    assert response.json()["detail"] == "The cursor is not valid for this listing."
