"""The shop's event types and their constructors; domain code calls ``outbox.add`` with them.

Write them after the write that takes the aggregate's row lock (the order insert or update,
the inventory UPDATE), so one aggregate's events enter the outbox in commit order.
"""

from __future__ import annotations

from uuid import UUID

from {{ cookiecutter.project_slug }}.patterns.outbox import Event

ORDER = "order"
PRODUCT = "product"

ORDER_PLACED = "order.placed"
ORDER_PAID = "order.paid"
ORDER_CANCELLED = "order.cancelled"
ORDER_EXPIRED = "order.expired"
PRODUCT_PRICE_CHANGED = "product.price_changed"
PRODUCT_STOCK_CHANGED = "product.stock_changed"

ORDER_EVENTS = (ORDER_PLACED, ORDER_PAID, ORDER_CANCELLED, ORDER_EXPIRED)
PRODUCT_EVENTS = (PRODUCT_PRICE_CHANGED, PRODUCT_STOCK_CHANGED)


def order_event(
    event_type: str,
    order_id: UUID,
    user_id: UUID,
    *,
    status: str,
    total_cents: int,
    reason: str | None = None,
) -> Event:
    payload: dict[str, object] = {
        "user_id": str(user_id),
        "status": status,
        "total_cents": total_cents,
    }
    if reason is not None:
        payload["reason"] = reason
    return Event(type=event_type, aggregate_type=ORDER, aggregate_id=str(order_id), payload=payload)


def stock_changed(product_id: UUID, stock: int) -> Event:
    return Event(
        type=PRODUCT_STOCK_CHANGED,
        aggregate_type=PRODUCT,
        aggregate_id=str(product_id),
        payload={"stock": stock},
    )


def price_changed(product_id: UUID, price_cents: int) -> Event:
    return Event(
        type=PRODUCT_PRICE_CHANGED,
        aggregate_type=PRODUCT,
        aggregate_id=str(product_id),
        payload={"price_cents": price_cents},
    )


def stream_name(prefix: str, event: Event) -> str:
    """One stream per aggregate type: every event of one aggregate lands in one stream."""
    return f"{prefix}{event.aggregate_type}"
