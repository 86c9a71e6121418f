"""Order SQL. Every read on a request path (and the scheduler's queue) is a registered hot
query: the plan guard (tests/test_query_plans.py) proves each is served by an index."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row, Select, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from {{ cookiecutter.project_slug }}.models import Order, OrderItem, OrderStatus, User
from {{ cookiecutter.project_slug }}.patterns.keyset import Keyset
from {{ cookiecutter.project_slug }}.patterns.plan_guard import hot_query

# Newest first; with user_id in front, served by ix_orders_user_id_created_at_id.
NEWEST_FIRST = Keyset((Order.created_at, Order.id))


SummaryRow = Row[UUID, OrderStatus, int, datetime]
CancelledRow = Row[UUID, UUID, int]


@dataclass(frozen=True)
class ConfirmationDetails:
    email: str
    total_cents: int
    created_at: datetime
    lines: int
    units: int


@hot_query("orders.newest_for_user", forbid_sort=True)
def newest_for_user(
    user_id: UUID, after: Sequence[Any] | None, limit: int
) -> Select[UUID, OrderStatus, int, datetime]:
    """The seed's hot query: ``WHERE user_id = ? ORDER BY created_at DESC LIMIT 50``, plus the
    id tie-breaker and the keyset seek. A backward index-only scan that stops after the page.

    Only the listed columns: every one is in the index, and no ORM objects are built for rows
    that are only serialised."""
    statement = select(Order.id, Order.status, Order.total_cents, Order.created_at).where(
        Order.user_id == user_id
    )
    return NEWEST_FIRST.paginate(statement, after, limit)


@hot_query("orders.get_for_user")
def order_for_user(order_id: UUID, user_id: UUID) -> Select[Order]:
    # The owner is part of the lookup, so another user's order is indistinguishable from a
    # missing one (404 either way: ids do not leak).
    return select(Order).where(Order.id == order_id, Order.user_id == user_id)


@hot_query("orders.items")
def items_of(order_ids: Collection[UUID]) -> Select[OrderItem]:
    return (
        select(OrderItem)
        .where(OrderItem.order_id.in_(order_ids))
        .order_by(OrderItem.order_id, OrderItem.product_id)
    )


@hot_query("orders.by_idempotency_key")
def by_idempotency_key(user_id: UUID, key: str) -> Select[Order]:
    return select(Order).where(Order.user_id == user_id, Order.idempotency_key == key)


@hot_query("orders.pending_oldest_first", forbid_sort=True)
def pending_oldest_first(placed_before: datetime, limit: int) -> Select[UUID]:
    """The scheduler's queue (expire unpaid orders), served by the partial index."""
    # The status is inlined, not bound: Postgres uses a partial index only when the plan
    # proves its predicate, and a generic plan for "status = $1" (what a prepared statement
    # settles on after five runs) cannot.
    pending = literal(OrderStatus.pending, Order.status.type, literal_execute=True)
    return (
        select(Order.id)
        .where(Order.status == pending, Order.created_at < placed_before)
        .order_by(Order.created_at)
        .limit(limit)
    )


class OrderRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(
        self,
        *,
        user_id: UUID,
        total_cents: int,
        idempotency_key: str | None,
        request_fingerprint: str | None,
    ) -> Order | None:
        """Insert an order; ``None`` when this user already used ``idempotency_key``.

        ON CONFLICT lets the unique index decide. A concurrent request holding the same key
        makes this statement wait until that request's transaction ends: when it committed,
        this returns ``None`` and the caller reads the winner's order; when it rolled back,
        this insert goes ahead. Never two orders for one key.
        """
        statement = insert(Order).values(
            user_id=user_id,
            total_cents=total_cents,
            idempotency_key=idempotency_key,
            request_fingerprint=request_fingerprint,
        )
        if idempotency_key is not None:
            statement = statement.on_conflict_do_nothing(
                index_elements=[Order.user_id, Order.idempotency_key],
                index_where=Order.idempotency_key.is_not(None),
            )
        return (await self.session.execute(statement.returning(Order))).scalar_one_or_none()

    async def add_items(self, order: Order, lines: Sequence[tuple[UUID, int, int]]) -> None:
        """Insert the order's lines (product, quantity, unit price) and attach them."""
        items = [
            OrderItem(order_id=order.id, product_id=product, quantity=qty, unit_price_cents=price)
            for product, qty, price in lines
        ]
        self.session.add_all(items)
        await self.session.flush()
        set_committed_value(order, "items", sorted(items, key=lambda item: item.product_id))

    async def load_items(self, orders: Sequence[Order]) -> None:
        """Attach the items of ``orders`` with one query (relationships are lazy="raise")."""
        by_order: dict[UUID, list[OrderItem]] = {order.id: [] for order in orders}
        if by_order:
            for item in (await self.session.execute(items_of(list(by_order)))).scalars():
                by_order[item.order_id].append(item)
        for order in orders:
            set_committed_value(order, "items", by_order[order.id])

    async def get_for_user(self, order_id: UUID, user_id: UUID) -> Order | None:
        return (await self.session.execute(order_for_user(order_id, user_id))).scalar_one_or_none()

    async def get_by_idempotency_key(self, user_id: UUID, key: str) -> Order | None:
        result = await self.session.execute(by_idempotency_key(user_id, key))
        return result.scalar_one_or_none()

    async def mark_paid(self, order_id: UUID, amount_cents: int) -> UUID | None:
        """``pending -> paid``, only if the order is still pending and the amount is its
        total; returns the buyer's id, or None when nothing changed.

        One conditional UPDATE: it waits for a transaction holding the row (the expiry job's
        ``FOR UPDATE``) and then re-checks the status, so an order the expiry cancelled is
        never paid, and a paid order is never cancelled (the expiry re-checks too).
        """
        statement = (
            update(Order)
            .where(
                Order.id == order_id,
                Order.status == OrderStatus.pending,
                Order.total_cents == amount_cents,
            )
            .values(status=OrderStatus.paid, updated_at=func.now())
            .returning(Order.user_id)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def confirmation_details(self, order_id: UUID) -> ConfirmationDetails | None:
        """What the confirmation says: the total, when, to whom, and the lines and units."""
        row = (
            await self.session.execute(
                select(Order.total_cents, Order.created_at, User.email)
                .join(User, User.id == Order.user_id)
                .where(Order.id == order_id)
            )
        ).one_or_none()
        if row is None:
            return None
        lines, units = (
            await self.session.execute(
                select(func.count(), func.coalesce(func.sum(OrderItem.quantity), 0)).where(
                    OrderItem.order_id == order_id
                )
            )
        ).one()
        return ConfirmationDetails(row.email, row.total_cents, row.created_at, lines, units)

    async def lock_pending_before(self, cutoff: datetime, limit: int) -> list[UUID]:
        """Up to ``limit`` pending orders placed before ``cutoff``, oldest first, locked;
        rows another transaction holds (say a payment) are skipped, left for the next run."""
        batch = pending_oldest_first(cutoff, limit).with_for_update(skip_locked=True)
        return list((await self.session.execute(batch)).scalars())

    async def cancel_pending(self, order_ids: Collection[UUID]) -> list[CancelledRow]:
        """``pending -> cancelled`` for those still pending: (id, user_id, total_cents)."""
        statement = (
            update(Order)
            .where(Order.id.in_(order_ids), Order.status == OrderStatus.pending)
            .values(status=OrderStatus.cancelled, updated_at=func.now())
            .returning(Order.id, Order.user_id, Order.total_cents)
        )
        return list(await self.session.execute(statement))

    async def units_by_product(self, order_ids: Collection[UUID]) -> list[tuple[UUID, int]]:
        """Units the orders hold per product, in product-id order (the lock order)."""
        statement = (
            select(OrderItem.product_id, func.sum(OrderItem.quantity))
            .where(OrderItem.order_id.in_(order_ids))
            .group_by(OrderItem.product_id)
            .order_by(OrderItem.product_id)
        )
        return [
            (product_id, int(units)) for product_id, units in await self.session.execute(statement)
        ]

    async def list_newest(
        self, user_id: UUID, *, after: Sequence[Any] | None, limit: int
    ) -> list[SummaryRow]:
        return list(await self.session.execute(newest_for_user(user_id, after, limit)))


def newest_first_key(row: SummaryRow) -> tuple[datetime, UUID]:
    return row.created_at, row.id
