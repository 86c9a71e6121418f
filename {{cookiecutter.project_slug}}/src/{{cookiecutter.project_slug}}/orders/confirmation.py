"""The order confirmation, once per order, whoever sends it.

Two senders share it: the ``orders.send_confirmation`` job the request enqueues after its
commit (the fast path), and the ``confirmation`` consumer group of the order stream, fed by the
``order.placed`` outbox event written in the order's own transaction (the path that cannot
lose it: an order committed while the broker or Redis is down is confirmed once they are
back). The idempotency claim makes the second sender a no-op.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.exceptions import NotFound
from {{ cookiecutter.project_slug }}.models import IdempotencyKey
from {{ cookiecutter.project_slug }}.notifications.notifier import Message, Notifier
from {{ cookiecutter.project_slug }}.orders.repository import OrderRepository
from {{ cookiecutter.project_slug }}.patterns.idempotency import claim

SEND_CONFIRMATION = "orders.send_confirmation"


async def confirm_order(session: AsyncSession, notifier: Notifier, order_id: str) -> str:
    """Send the confirmation in ``session``'s transaction: "sent", or "duplicate" when it
    already was. A missing order raises NotFound (a bug, not a transient error)."""
    key = f"order-confirmation:{order_id}"
    details = await OrderRepository(session).confirmation_details(UUID(order_id))
    if details is None:
        raise NotFound(f"order {order_id} does not exist")
    if not await claim(session, IdempotencyKey, key, task_name=SEND_CONFIRMATION):
        return "duplicate"
    await notifier.send(
        session,
        Message(
            recipient=details.email,
            subject=f"Order {order_id} confirmed",
            body=(
                f"Thank you for your order of {details.units} item(s) in {details.lines} "
                f"line(s), total {details.total_cents / 100:.2f}. It was placed at "
                f"{details.created_at:%c} UTC and is awaiting payment."
            ),
            idempotency_key=key,
        ),
    )
    return "sent"
