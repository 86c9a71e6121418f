from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select, update
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import Inventory, Order, OrderItem, Product
from tests.factories import Caller, make_product, make_user

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
async def buyer(session: AsyncSession, settings: Settings) -> Caller:
    return await make_user(session, settings)


@pytest.fixture
async def other_buyer(session: AsyncSession, settings: Settings) -> Caller:
    return await make_user(session, settings)


def order_of(*lines: tuple[Product, int]) -> dict[str, Any]:
    return {"items": [{"product_id": str(p.id), "quantity": q} for p, q in lines]}


async def stock_of(session: AsyncSession, product: Product) -> int:
    statement = select(Inventory.stock).where(Inventory.product_id == product.id)
    stock: int = (await session.execute(statement)).scalar_one()
    return stock


async def count(session: AsyncSession, model: type[Order] | type[OrderItem]) -> int:
    total: int = (await session.execute(select(func.count()).select_from(model))).scalar_one()
    return total


async def test_placing_an_order_captures_prices_and_takes_stock(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    tee = await make_product(session, price_cents=1999, stock=10)
    mug = await make_product(session, price_cents=1250, stock=4)

    response = await app_client.post(
        "/orders", json=order_of((tee, 2), (mug, 1), (tee, 1)), headers=buyer.headers
    )

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending"
    assert order["total_cents"] == 3 * 1999 + 1250
    # Repeated products are merged into one line.
    assert sorted(
        (i["product_id"], i["quantity"], i["unit_price_cents"]) for i in order["items"]
    ) == sorted([(str(tee.id), 3, 1999), (str(mug.id), 1, 1250)])
    assert (await stock_of(session, tee), await stock_of(session, mug)) == (7, 3)


async def test_a_later_price_change_does_not_touch_placed_orders(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    tee = await make_product(session, price_cents=1999)
    placed = (
        await app_client.post("/orders", json=order_of((tee, 1)), headers=buyer.headers)
    ).json()
    await session.execute(update(Product).where(Product.id == tee.id).values(price_cents=5000))

    order = (await app_client.get(f"/orders/{placed['id']}", headers=buyer.headers)).json()

    assert order["items"][0]["unit_price_cents"] == 1999
    assert order["total_cents"] == 1999


async def test_insufficient_stock_is_a_409_and_writes_nothing(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    plenty = await make_product(session, stock=10)
    scarce = await make_product(session, stock=1)

    # The first line can be served, the second cannot: the first must not be taken either.
    response = await app_client.post(
        "/orders", json=order_of((plenty, 3), (scarce, 2)), headers=buyer.headers
    )

    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["title"] == "Insufficient Stock"
    assert problem["product_id"] == str(scarce.id)
    assert (await stock_of(session, plenty), await stock_of(session, scarce)) == (10, 1)
    assert await count(session, Order) == 0
    assert await count(session, OrderItem) == 0


async def test_unknown_products_are_422(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    real = await make_product(session)
    ghost = uuid4()
    response = await app_client.post(
        "/orders",
        json={
            "items": [
                {"product_id": str(real.id), "quantity": 1},
                {"product_id": str(ghost), "quantity": 1},
            ]
        },
        headers=buyer.headers,
    )
    assert response.status_code == 422
    assert response.json()["product_ids"] == [str(ghost)]
    assert await stock_of(session, real) == 10


@pytest.mark.parametrize(
    "body",
    [{"items": []}, {"items": [{"product_id": str(uuid4()), "quantity": 0}]}, {}],
)
async def test_malformed_orders_are_422(
    app_client: AsyncClient, buyer: Caller, body: dict[str, Any]
) -> None:
    response = await app_client.post("/orders", json=body, headers=buyer.headers)
    assert response.status_code == 422


async def test_orders_need_a_signed_in_user(app_client: AsyncClient, session: AsyncSession) -> None:
    product = await make_product(session)
    assert (await app_client.post("/orders", json=order_of((product, 1)))).status_code == 401
    assert (await app_client.get("/orders")).status_code == 401


async def test_another_users_order_is_a_404_indistinguishable_from_a_missing_one(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller, other_buyer: Caller
) -> None:
    product = await make_product(session)
    placed = (
        await app_client.post("/orders", json=order_of((product, 1)), headers=buyer.headers)
    ).json()

    mine = await app_client.get(f"/orders/{placed['id']}", headers=buyer.headers)
    theirs = await app_client.get(f"/orders/{placed['id']}", headers=other_buyer.headers)
    missing = await app_client.get(f"/orders/{uuid4()}", headers=other_buyer.headers)

    assert mine.status_code == 200
    assert mine.json() == placed
    assert theirs.status_code == missing.status_code == 404
    # Same title and detail: a guessed id tells the caller nothing.
    assert {k: theirs.json()[k] for k in ("title", "detail")} == {
        k: missing.json()[k] for k in ("title", "detail")
    }


async def page_through(client: AsyncClient, caller: Caller, limit: int) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/orders", params=params, headers=caller.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        ids.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_my_orders_are_listed_newest_first_one_keyset_page_at_a_time(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller, other_buyer: Caller
) -> None:
    product = await make_product(session, stock=100)
    for _ in range(7):
        await app_client.post("/orders", json=order_of((product, 1)), headers=buyer.headers)
    await app_client.post("/orders", json=order_of((product, 1)), headers=other_buyer.headers)
    mine = (await session.execute(select(Order).where(Order.user_id == buyer.id))).scalars().all()
    # One test transaction: every order has the same created_at, so the id breaks the ties.
    expected = [str(o.id) for o in sorted(mine, key=lambda o: (o.created_at, o.id), reverse=True)]

    assert await page_through(app_client, buyer, limit=3) == expected


async def test_a_new_order_between_pages_neither_repeats_nor_skips_a_row(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    product = await make_product(session, stock=100)
    for _ in range(4):
        await app_client.post("/orders", json=order_of((product, 1)), headers=buyer.headers)
    first = (await app_client.get("/orders", params={"limit": 2}, headers=buyer.headers)).json()

    # With OFFSET, this order would push the second item of page one onto page two.
    await app_client.post("/orders", json=order_of((product, 1)), headers=buyer.headers)
    second = (
        await app_client.get(
            "/orders", params={"limit": 2, "cursor": first["next_cursor"]}, headers=buyer.headers
        )
    ).json()

    seen = [item["id"] for item in first["items"] + second["items"]]
    assert len(seen) == len(set(seen)) == 4


async def test_a_forged_cursor_is_422(app_client: AsyncClient, buyer: Caller) -> None:
    response = await app_client.get("/orders", params={"cursor": "bm9wZQ"}, headers=buyer.headers)
    assert response.status_code == 422


# --- Idempotency-Key ---------------------------------------------------------------------


async def test_a_retry_with_the_same_key_returns_the_same_order(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    product = await make_product(session, stock=10)
    headers = {**buyer.headers, "Idempotency-Key": "order-attempt-1"}

    first = await app_client.post("/orders", json=order_of((product, 2)), headers=headers)
    retry = await app_client.post("/orders", json=order_of((product, 2)), headers=headers)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await count(session, Order) == 1
    assert await stock_of(session, product) == 8  # taken once


async def test_the_same_request_written_differently_is_still_a_retry(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    a = await make_product(session)
    b = await make_product(session)
    headers = {**buyer.headers, "Idempotency-Key": "k"}
    first = await app_client.post("/orders", json=order_of((a, 2), (b, 1)), headers=headers)
    retry = await app_client.post("/orders", json=order_of((b, 1), (a, 1), (a, 1)), headers=headers)
    assert retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]


async def test_the_same_key_with_a_different_body_is_422(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    product = await make_product(session, stock=10)
    headers = {**buyer.headers, "Idempotency-Key": "order-attempt-1"}
    await app_client.post("/orders", json=order_of((product, 1)), headers=headers)

    response = await app_client.post("/orders", json=order_of((product, 5)), headers=headers)

    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "different request body" in response.json()["detail"]
    assert await count(session, Order) == 1
    assert await stock_of(session, product) == 9


async def test_keys_belong_to_their_user(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller, other_buyer: Caller
) -> None:
    product = await make_product(session)
    body = order_of((product, 1))
    mine = await app_client.post(
        "/orders", json=body, headers={**buyer.headers, "Idempotency-Key": "k"}
    )
    theirs = await app_client.post(
        "/orders", json=body, headers={**other_buyer.headers, "Idempotency-Key": "k"}
    )
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


async def test_a_refused_attempt_stores_nothing_so_its_retry_can_succeed(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller
) -> None:
    product = await make_product(session, stock=1)
    headers = {**buyer.headers, "Idempotency-Key": "k"}
    refused = await app_client.post("/orders", json=order_of((product, 2)), headers=headers)
    assert refused.status_code == 409

    await session.execute(
        update(Inventory).where(Inventory.product_id == product.id).values(stock=5)
    )
    retried = await app_client.post("/orders", json=order_of((product, 2)), headers=headers)
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers


@pytest.mark.parametrize("key", ["", "x" * 256, "has space"])
async def test_malformed_idempotency_keys_are_422(
    app_client: AsyncClient, session: AsyncSession, buyer: Caller, key: str
) -> None:
    product = await make_product(session)
    response = await app_client.post(
        "/orders", json=order_of((product, 1)), headers={**buyer.headers, "Idempotency-Key": key}
    )
    assert response.status_code == 422


async def test_order_items_never_load_lazily(session: AsyncSession, buyer: Caller) -> None:
    # lazy="raise": an accidental N+1 (items loaded one order at a time) fails loudly.
    order = Order(user_id=buyer.id, total_cents=0)
    session.add(order)
    await session.flush()
    with pytest.raises(InvalidRequestError, match="lazy='raise'"):
        _ = order.items
