"""Who listens to which stream: one consumer group per effect, each with its own inbox rows."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import DailyRevenue, DeadLetter
from {{ cookiecutter.project_slug }}.notifications.notifier import OutboxNotifier
from {{ cookiecutter.project_slug }}.orders.confirmation import confirm_order
from {{ cookiecutter.project_slug }}.patterns.consumer import Handler
from {{ cookiecutter.project_slug }}.patterns.outbox import Event
from {{ cookiecutter.project_slug }}.products.service import invalidate_products
from {{ cookiecutter.project_slug }}.pubsub.events import ORDER, ORDER_PAID, ORDER_PLACED, PRODUCT


async def invalidate_product(session: AsyncSession, event: Event) -> None:
    """A product changed anywhere (API, worker, another service): drop it from the app cache
    and purge it at the edge, after this handler's commit."""
    invalidate_products(session, [UUID(event.aggregate_id)])


async def add_revenue(session: AsyncSession, event: Event) -> None:
    """Keep today's revenue incrementally: once per paid order (the inbox row makes it once).
    The scheduled roll-up still recomputes recent days, so a missed event heals."""
    if event.type != ORDER_PAID:
        return
    total = int(event.payload["total_cents"])
    statement = insert(DailyRevenue).values(
        day=event.occurred_at.date(), orders=1, revenue_cents=total
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[DailyRevenue.day],
            set_={
                "orders": DailyRevenue.orders + 1,
                "revenue_cents": DailyRevenue.revenue_cents + total,
                "updated_at": func.now(),
            },
        )
    )


async def confirm_placed_order(session: AsyncSession, event: Event) -> None:
    """The confirmation's path that survives a broker or Redis outage: the ``order.placed``
    event is committed with the order, so the order is confirmed once the relay and this
    group reach it (a no-op when the job already sent it)."""
    if event.type == ORDER_PLACED:
        await confirm_order(session, _NOTIFIER, event.aggregate_id)


_NOTIFIER = OutboxNotifier()


@dataclass(frozen=True)
class Subscription:
    aggregate_type: str
    group: str
    handler: Handler


SUBSCRIPTIONS = (
    Subscription(PRODUCT, "cache", invalidate_product),
    Subscription(ORDER, "revenue", add_revenue),
    Subscription(ORDER, "confirmation", confirm_placed_order),
)


async def record_dead_letter(
    session: AsyncSession, group: str, event: Event | None, error: str, deliveries: int
) -> None:
    """An event a group gave up on, in the jobs' dead-letter table (same admin endpoints)."""
    event_id = str(event.event_id) if event else "unreadable"
    statement = insert(DeadLetter).values(
        task_id=f"event:{group}:{event_id}"[:64],
        task_name=f"event.{group}.{event.type if event else 'unknown'}"[:200],
        args=[],
        kwargs={"event": event.to_json().decode() if event else None, "group": group},
        request_id=event.request_id if event else None,
        error_type="EventDeliveryFailed",
        error=error,
        attempts=deliveries,
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[DeadLetter.task_id],
            set_={"attempts": statement.excluded.attempts, "error": statement.excluded.error},
        )
    )
