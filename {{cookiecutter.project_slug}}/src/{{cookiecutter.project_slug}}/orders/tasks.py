"""Order jobs: the confirmation after an order is placed, and expiring unpaid orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from {{ cookiecutter.project_slug }}.models import OrderStatus
from {{ cookiecutter.project_slug }}.orders.confirmation import SEND_CONFIRMATION, confirm_order
from {{ cookiecutter.project_slug }}.orders.repository import OrderRepository
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import job
from {{ cookiecutter.project_slug }}.products.repository import InventoryRepository
from {{ cookiecutter.project_slug }}.products.service import invalidate_products
from {{ cookiecutter.project_slug }}.pubsub.events import (
    ORDER_CANCELLED,
    ORDER_EXPIRED,
    order_event,
    stock_changed,
)
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext

log = structlog.get_logger(__name__)


@job(SEND_CONFIRMATION)
async def send_order_confirmation(ctx: WorkerContext, *, order_id: str) -> str:
    """Tell the buyer their order was placed; once per order, however often it is delivered.

    Enqueued after the order's transaction commits, so the order is always there; a missing
    order is a bug (not a transient error) and goes to the dead letters.
    """
    async with ctx.transaction() as session:
        outcome = await confirm_order(session, ctx.notifier, order_id)
    if outcome == "duplicate":
        return outcome
    log.info("order.confirmation_sent", order_id=order_id)
    return "sent"


@job("orders.expire_unpaid")
async def expire_unpaid_orders(ctx: WorkerContext) -> int:
    """The scheduled job: :func:`expire_unpaid`."""
    return await expire_unpaid(ctx)


async def expire_unpaid(ctx: WorkerContext) -> int:
    """Cancel pending orders older than the payment timeout and put their stock back.

    Batches of ``EXPIRE_UNPAID_BATCH_SIZE``, oldest first, read through the partial index on
    pending orders. Each batch is one transaction: the orders are locked (``SKIP LOCKED``: a
    row another transaction holds, say a payment, is left for the next run), cancelled, and
    their stock returned, so a crash leaves every order either expired with its stock back,
    or untouched. Running twice expires nothing twice: the second run finds no such order.
    """
    settings = ctx.settings
    cutoff = datetime.now(UTC) - timedelta(minutes=settings.order_payment_timeout_minutes)
    expired = 0
    while True:
        async with ctx.transaction() as session:
            orders = OrderRepository(session)
            order_ids = await orders.lock_pending_before(cutoff, settings.expire_unpaid_batch_size)
            if not order_ids:
                break
            cancelled = await orders.cancel_pending(order_ids)
            # Expiry is today's only way an order is cancelled. Both events: ``order.expired``
            # says why, ``order.cancelled`` is the status change itself, which a consumer of
            # "no longer payable" subscribes to once, whatever later cancels an order.
            events = [
                order_event(
                    event_type,
                    row.id,
                    row.user_id,
                    status=OrderStatus.cancelled.value,
                    total_cents=row.total_cents,
                    reason="expired",
                )
                for row in cancelled
                for event_type in (ORDER_EXPIRED, ORDER_CANCELLED)
            ]
            returned = await orders.units_by_product(order_ids)
            # Product-id order, like order placement takes them: two transactions that both
            # touch products A and B lock A first, so they queue instead of deadlocking.
            inventory = InventoryRepository(session)
            for product_id, quantity in returned:
                stock = await inventory.adjust(product_id, quantity)
                if stock is not None:
                    events.append(stock_changed(product_id, stock))
            # Same transaction as the change: the events exist exactly when it commits, and
            # the worker's unit of work invalidates the cache and the edge like a request.
            await outbox.add(session, *events)
            invalidate_products(session, [product_id for product_id, _ in returned])
        expired += len(order_ids)
        log.info("orders.expired_batch", count=len(order_ids))
        if len(order_ids) < settings.expire_unpaid_batch_size:
            break
    log.info("orders.expired", count=expired)
    return expired
