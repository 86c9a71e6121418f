"""500 concurrent webhooks (valid, duplicated, replayed, forged) while the expiry job cancels
unpaid orders: every order is paid at most once, nothing bad is written, and an order is
either paid or cancelled (with its stock back), never both.

Counts, never times. Runs once per broker in TEST_BROKERS (the expiry is a real Celery job).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any
from uuid import UUID

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from {{ cookiecutter.project_slug }}.payments.provider import WEBHOOK_PATH, signed_event
from tests.factories import make_product, make_user
from tests.worker.helpers import eventually, finished, rows, scalar
from tests.worker_harness import CeleryProcess, JobStack

pytestmark = pytest.mark.load

EXPIRE = "orders.expire_unpaid"
FRESH = 100  # paid by webhooks only: valid, duplicate, replay, forged each
AGED = 100  # past the payment timeout: their valid webhook races the expiry job
STOCK = 10_000


@pytest.fixture(scope="module")
def workers(job_stack: JobStack) -> list[CeleryProcess]:
    job_stack.extra_env["EXPIRE_UNPAID_BATCH_SIZE"] = "10"  # many small batches: a long race
    return job_stack.start_workers(1)


async def test_500_webhooks_racing_expiry_pay_each_order_once_and_never_a_cancelled_one(
    job_stack: JobStack,
    workers: list[CeleryProcess],
    jobs_engine: AsyncEngine,
    live_client: AsyncClient,
) -> None:
    settings = job_stack.settings()
    secret = settings.payments_webhook_secret.get_secret_value()
    async with AsyncSession(jobs_engine, expire_on_commit=False) as session:
        buyer = await make_user(session, settings)
        product = await make_product(session, price_cents=100, stock=STOCK)
        await session.commit()
    in_flight = asyncio.Semaphore(8)

    async def place(quantity: int) -> dict[str, Any]:
        async with in_flight:
            response = await live_client.post(
                "/orders",
                json={"items": [{"product_id": str(product.id), "quantity": quantity}]},
                headers=buyer.headers,
            )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    rng = random.Random(12)
    orders = await asyncio.gather(*(place(rng.randint(1, 3)) for _ in range(FRESH + AGED)))
    fresh, aged = orders[:FRESH], orders[FRESH:]
    async with jobs_engine.begin() as connection:
        await connection.execute(
            text("UPDATE orders SET created_at = now() - interval '2 hours' WHERE id = ANY(:ids)"),
            {"ids": [UUID(order["id"]) for order in aged]},
        )

    stale_at = int(time.time()) - settings.payments_webhook_tolerance_seconds - 60
    hooks: list[tuple[str, bytes, dict[str, str]]] = []
    for n, order in enumerate(orders):
        common = {
            "order_id": UUID(order["id"]),
            "amount_cents": order["total_cents"],
            "payment_id": f"pay_{n}",
        }
        body, headers = signed_event(secret, event_id=f"evt_{order['id']}", **common)
        hooks.append(("valid", body, headers))
        if n < FRESH:
            hooks.append(("duplicate", body, headers))
            replay = signed_event(secret, event_id=f"evt_r{n}", timestamp=stale_at, **common)
            hooks.append(("replay", *replay))
            forged = signed_event("forged", event_id=f"evt_f{n}", **common)
            hooks.append(("forged", *forged))
    assert len(hooks) == 500
    rng.shuffle(hooks)

    sending = asyncio.Semaphore(16)

    async def deliver(kind: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, str]:
        async with sending:
            response = await live_client.post(WEBHOOK_PATH, content=body, headers=headers)
        outcome = response.json().get("outcome", "") if response.status_code == 200 else ""
        return kind, response.status_code, outcome

    task_id = job_stack.send(EXPIRE)
    results = await asyncio.gather(*(deliver(*hook) for hook in hooks))

    async def expiry_finished() -> bool:
        return any(e.get("task_id") == task_id for e in finished(workers, EXPIRE))

    await eventually(expiry_finished, within=60, what="the expiry job to finish")

    statuses = {
        row.id: row.status
        for row in await rows(
            jobs_engine, "SELECT id::text, status FROM orders WHERE user_id = :u", u=buyer.id
        )
    }
    events = {
        row.order_id: row.outcome
        for row in await rows(
            jobs_engine,
            "SELECT order_id::text, outcome FROM payment_events WHERE order_id = ANY(:ids)",
            ids=[UUID(order["id"]) for order in orders],
        )
    }
    by_kind = Counter((kind, status) for kind, status, _ in results)
    outcomes = Counter(outcome for _, _, outcome in results if outcome)
    aged_paid = sum(statuses[order["id"]] == "paid" for order in aged)
    aged_cancelled = sum(statuses[order["id"]] == "cancelled" for order in aged)
    print(  # noqa: T201  # the figure the docs quote (pytest -s)
        f"\n[{job_stack.broker}] 500 webhooks: {dict(by_kind)}; aged orders: {aged_paid} paid "
        f"before the expiry reached them, {aged_cancelled} cancelled first"
    )

    # Forged and replayed: 400s; valid and duplicates: 200s.
    assert by_kind == {
        ("valid", 200): FRESH + AGED,
        ("duplicate", 200): FRESH,
        ("replay", 400): FRESH,
        ("forged", 400): FRESH,
    }
    # One event row per order (its valid one): duplicates, replays and forgeries wrote nothing.
    assert len(events) == FRESH + AGED
    assert {statuses[order["id"]] for order in fresh} == {"paid"}
    # Every aged order is paid or cancelled, and its event says the same: paid once, or
    # ignored because the expiry cancelled it first. Never both.
    assert aged_paid + aged_cancelled == AGED
    for order in orders:
        expected = "paid" if statuses[order["id"]] == "paid" else "ignored"
        assert events[order["id"]] == expected, (order["id"], statuses[order["id"]])
    expected_outcomes = {"paid": FRESH + aged_paid, "duplicate": FRESH, "ignored": aged_cancelled}
    assert outcomes == Counter(expected_outcomes) - Counter()  # drops a zero "ignored"
    # Stock: what is left plus what paid orders hold is what there was.
    held = await scalar(
        jobs_engine,
        "SELECT coalesce(sum(i.quantity), 0) FROM order_items i JOIN orders o ON o.id = i.order_id"
        " WHERE i.product_id = :p AND o.status <> 'cancelled'",
        p=product.id,
    )
    left = await scalar(
        jobs_engine, "SELECT stock FROM inventory WHERE product_id = :p", p=product.id
    )
    assert left + held == STOCK
