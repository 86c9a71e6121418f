"""Payments: the local signer pays an order through a real signed webhook; the webhook refuses
bad and stale signatures without writing, and applies each event id once."""

from __future__ import annotations

import asyncio
import functools
import time
from uuid import UUID, uuid4

from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import PaymentEvent
from {{ cookiecutter.project_slug }}.payments.provider import WEBHOOK_PATH, signed_event
from tests.factories import Caller, make_product, make_user


async def place(client: AsyncClient, buyer: Caller, product_id: UUID) -> dict[str, object]:
    response = await client.post(
        "/orders",
        json={"items": [{"product_id": str(product_id), "quantity": 2}]},
        headers=buyer.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def order_status(client: AsyncClient, buyer: Caller, order_id: object) -> str:
    response = await client.get(f"/orders/{order_id}", headers=buyer.headers)
    return str(response.json()["status"])


async def event_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(PaymentEvent)) or 0)


async def test_starting_a_payment_gets_the_order_paid_by_the_signed_webhook(
    app_client: AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    buyer = await make_user(session, settings)
    product = await make_product(session, price_cents=300, stock=5)
    order = await place(app_client, buyer, product.id)

    response = await app_client.post(f"/orders/{order['id']}/payment", headers=buyer.headers)
    assert response.status_code == 202, response.text
    assert response.json()["payment_id"].startswith("pay_")

    deadline = time.monotonic() + 10
    while await order_status(app_client, buyer, order["id"]) != "paid":
        assert time.monotonic() < deadline, "the local signer's webhook never paid the order"
        await asyncio.sleep(0.05)
    events = (await session.scalars(select(PaymentEvent))).all()
    assert [(e.order_id, e.amount_cents, e.outcome) for e in events] == [
        (UUID(str(order["id"])), 600, "paid")
    ]
    # Paid is final: a second payment is refused.
    again = await app_client.post(f"/orders/{order['id']}/payment", headers=buyer.headers)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


async def test_bad_and_stale_signatures_are_400s_that_write_nothing(
    app_client: AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    buyer = await make_user(session, settings)
    product = await make_product(session, price_cents=300, stock=5)
    order = await place(app_client, buyer, product.id)
    secret = settings.payments_webhook_secret.get_secret_value()
    sign = functools.partial(
        signed_event, order_id=UUID(str(order["id"])), amount_cents=600, payment_id="pay_x"
    )

    forged, forged_headers = sign("not-the-secret", event_id="evt_forged")
    stale_at = int(time.time()) - settings.payments_webhook_tolerance_seconds - 60
    stale, stale_headers = sign(secret, event_id="evt_stale", timestamp=stale_at)
    good, good_headers = sign(secret, event_id="evt_good")
    attempts = [
        (forged, forged_headers),
        (stale, stale_headers),
        (good, {"Content-Type": "application/json"}),  # unsigned
        (good + b" ", good_headers),  # the body changed after signing
    ]
    for body, headers in attempts:
        response = await app_client.post(WEBHOOK_PATH, content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "Traceback" not in response.text
    assert await event_count(session) == 0
    assert await order_status(app_client, buyer, order["id"]) == "pending"


async def test_one_event_applies_once_and_an_unknown_order_is_a_422(
    app_client: AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    buyer = await make_user(session, settings)
    product = await make_product(session, price_cents=300, stock=5)
    order = await place(app_client, buyer, product.id)
    secret = settings.payments_webhook_secret.get_secret_value()
    body, headers = signed_event(
        secret,
        event_id="evt_once",
        order_id=UUID(str(order["id"])),
        amount_cents=600,
        payment_id="pay_once",
    )
    outcomes = [
        (await app_client.post(WEBHOOK_PATH, content=body, headers=headers)).json()["outcome"]
        for _ in range(3)
    ]
    assert outcomes == ["paid", "duplicate", "duplicate"]
    assert await event_count(session) == 1

    unknown, unknown_headers = signed_event(
        secret, event_id="evt_unknown", order_id=uuid4(), amount_cents=1, payment_id="pay_u"
    )
    response = await app_client.post(WEBHOOK_PATH, content=unknown, headers=unknown_headers)
    assert response.status_code == 422
    assert await event_count(session) == 1
