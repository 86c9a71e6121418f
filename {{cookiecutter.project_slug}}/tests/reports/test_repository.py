"""The sales report's reads: closed days from the ``daily_revenue`` roll-up, open days from
the orders, proved by the statements sent (counts, never times)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import DailyRevenue, Order, OrderStatus
from {{ cookiecutter.project_slug }}.reports.repository import DaySales, SalesRepository
from tests.factories import make_user

DAYS = 16


def far_past_range() -> tuple[date, date]:
    # A range of our own: other tests' orders and roll-up rows never fall inside it.
    first = date(2001, 1, 1) + timedelta(days=random.randrange(8000))
    return first, first + timedelta(days=DAYS - 1)


def noon(day: date) -> datetime:
    return datetime.combine(day, day_time(12), tzinfo=UTC)


class Statements:
    """The SQL a session sent, one entry per statement."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def reading(self, table: str) -> list[str]:
        return [sql for sql in self.sent if f"FROM {table} " in sql or f"JOIN {table} " in sql]


@asynccontextmanager
async def recorded(session: AsyncSession) -> AsyncIterator[Statements]:
    statements = Statements()
    sync_connection = (await session.connection()).sync_connection
    assert sync_connection is not None

    def record(*args: Any) -> None:
        statements.sent.append(" ".join(str(args[2]).split()) + " ")

    event.listen(sync_connection, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(sync_connection, "before_cursor_execute", record)


async def paid_orders(
    session: AsyncSession, settings: Settings, placed: list[tuple[datetime, int]]
) -> None:
    buyer = await make_user(session, settings)
    session.add_all(
        Order(user_id=buyer.id, status=OrderStatus.paid, total_cents=total, created_at=at)
        for at, total in placed
    )
    await session.flush()


async def test_closed_days_are_read_from_the_roll_up_in_one_statement(
    session: AsyncSession, settings: Settings
) -> None:
    first, last = far_past_range()
    session.add_all(
        DailyRevenue(day=first + timedelta(days=n), orders=n, revenue_cents=n * 100)
        for n in range(DAYS)
    )
    # An order the roll-up does not know of: the report must not go and count it.
    await paid_orders(session, settings, [(noon(first), 5_000)])

    async with recorded(session) as statements:
        sales = await SalesRepository(session).sales_by_day(first, last, today=date.today())

    assert sales == [DaySales(first + timedelta(days=n), n, n * 100) for n in range(DAYS)]
    # Before: one statement on orders per day (16). Now: one read of the roll-up.
    assert len(statements.sent) == 1
    assert statements.reading("orders") == []
    assert statements.reading("daily_revenue") == statements.sent


async def test_closed_days_the_roll_up_lacks_are_rolled_up_once(
    session: AsyncSession, settings: Settings
) -> None:
    first, last = far_past_range()
    await paid_orders(
        session,
        settings,
        [(noon(first), 1_500), (noon(first), 500), (noon(first + timedelta(days=3)), 999)],
    )
    session.add(DailyRevenue(day=first + timedelta(days=1), orders=0, revenue_cents=0))
    await session.flush()
    repository = SalesRepository(session)

    async with recorded(session) as filling:
        sales = await repository.sales_by_day(first, last, today=date.today())
    by_day = {s.day: (s.orders, s.revenue_cents) for s in sales}
    assert len(by_day) == DAYS
    assert by_day[first] == (2, 2_000)
    assert by_day[first + timedelta(days=3)] == (1, 999)
    assert sum(n for n, _ in by_day.values()) == 3
    # Read, fill the 15 missing days in one upsert, read again.
    assert len(filling.sent) == 3
    rolled = await session.scalars(
        select(DailyRevenue.day).where(DailyRevenue.day >= first, DailyRevenue.day <= last)
    )
    assert len(rolled.all()) == DAYS

    async with recorded(session) as again:
        assert await repository.sales_by_day(first, last, today=date.today()) == sales
    assert len(again.sent) == 1
    assert again.reading("orders") == []


async def test_today_is_counted_from_the_orders_not_the_roll_up(
    session: AsyncSession, settings: Settings
) -> None:
    # Days of our own in the far past play "yesterday" and "today".
    yesterday = far_past_range()[0]
    today = yesterday + timedelta(days=1)
    session.add_all(
        [
            DailyRevenue(day=yesterday, orders=4, revenue_cents=400),
            # Today's roll-up row lags: the scheduler last ran before these orders.
            DailyRevenue(day=today, orders=1, revenue_cents=100),
        ]
    )
    await paid_orders(session, settings, [(noon(today), 100), (noon(today), 250)])

    async with recorded(session) as statements:
        sales = await SalesRepository(session).sales_by_day(
            yesterday, today + timedelta(days=1), today=today
        )

    assert sales == [
        DaySales(yesterday, 4, 400),
        DaySales(today, 2, 350),
        DaySales(today + timedelta(days=1), 0, 0),
    ]
    assert len(statements.reading("daily_revenue")) == 1
    assert len(statements.reading("orders")) == 1
    assert len(statements.sent) == 2
