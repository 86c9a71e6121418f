"""Sales figures per day. Only paid orders count as sales.

Closed days (before today, UTC) come from ``daily_revenue``, the roll-up the scheduler keeps:
one primary-key range read, however many orders the days held. A closed day the roll-up never
covered (older than its lookback, or from before it ran) is rolled up once, by the same upsert,
and read from the roll-up from then on. Today and later are still open: the roll-up of today
is up to ``SCHEDULE_REVENUE_ROLLUP_SECONDS`` old, so those days are counted from the orders,
one range read served by the BRIN index on ``created_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import ARRAY, Date, Insert, Select, cast, func, literal, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import DailyRevenue, Order, OrderStatus
from {{ cookiecutter.project_slug }}.patterns.plan_guard import hot_query


@dataclass(frozen=True)
class DaySales:
    day: date
    orders: int
    revenue_cents: int


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _paid() -> object:
    # Inlined, not bound: the statement's plan must not depend on a parameter's value.
    return literal(OrderStatus.paid, Order.status.type, literal_execute=True)


@hot_query("reports.rolled_up_days")
def rolled_up_days(first: date, last: date) -> Select[date, int, int]:
    """The roll-up's rows for ``first..last``: a range of its primary key."""
    return (
        select(DailyRevenue.day, DailyRevenue.orders, DailyRevenue.revenue_cents)
        .where(DailyRevenue.day >= first, DailyRevenue.day <= last)
        .order_by(DailyRevenue.day)
    )


@hot_query("reports.paid_orders_by_day")
def paid_orders_by_day(start: datetime, end: datetime) -> Select[date, int, int]:
    """Paid orders placed in ``[start, end)`` counted per UTC day (the open days)."""
    day = cast(func.timezone("UTC", Order.created_at), Date).label("day")
    return (
        select(day, func.count(), func.coalesce(func.sum(Order.total_cents), 0))
        .where(Order.status == _paid(), Order.created_at >= start, Order.created_at < end)
        .group_by(day)
        .order_by(day)
    )


@hot_query("reports.roll_up_days")
def roll_up_days(days: Sequence[date]) -> Insert:
    """Upsert ``daily_revenue`` for ``days`` from the orders (zero when nothing sold); a day
    whose figures did not change is not rewritten. Returns the rows it wrote."""
    listed = select(
        func.unnest(cast(literal(list(days), ARRAY(Date)), ARRAY(Date))).label("day")
    ).subquery()
    start = func.timezone("UTC", cast(listed.c.day, Date))
    figures = (
        select(
            listed.c.day,
            func.count(Order.id),
            func.coalesce(func.sum(Order.total_cents), 0),
        )
        .select_from(listed)
        .outerjoin(
            Order,
            (Order.status == _paid())
            & (Order.created_at >= start)
            & (Order.created_at < start + text("interval '1 day'")),
        )
        .group_by(listed.c.day)
    )
    statement = insert(DailyRevenue).from_select(["day", "orders", "revenue_cents"], figures)
    return statement.on_conflict_do_update(
        index_elements=[DailyRevenue.day],
        set_={
            "orders": statement.excluded.orders,
            "revenue_cents": statement.excluded.revenue_cents,
            "updated_at": func.now(),
        },
        where=(
            (DailyRevenue.orders != statement.excluded.orders)
            | (DailyRevenue.revenue_cents != statement.excluded.revenue_cents)
        ),
    ).returning(DailyRevenue.day, DailyRevenue.orders, DailyRevenue.revenue_cents)


class SalesRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def sales_by_day(self, first: date, last: date, *, today: date) -> list[DaySales]:
        """Sales of every day in ``first..last`` (UTC), zero days included, oldest first.

        One statement when the roll-up covers the closed days and none is open; a second
        fills the closed days it lacks, a third counts the open days from the orders.
        """
        figures: dict[date, DaySales] = {}
        closed_last = min(last, today - timedelta(days=1))
        if first <= closed_last:
            rows = await self.session.execute(rolled_up_days(first, closed_last))
            figures.update({day: DaySales(day, n, cents) for day, n, cents in rows})
            span = (closed_last - first).days + 1
            missing = [
                d for d in (first + timedelta(days=n) for n in range(span)) if d not in figures
            ]
            if missing:
                await self.session.execute(roll_up_days(missing))
                rows = await self.session.execute(rolled_up_days(first, closed_last))
                figures.update({day: DaySales(day, n, cents) for day, n, cents in rows})
        open_first = max(first, today)
        if open_first <= last:
            statement = paid_orders_by_day(day_start(open_first), day_start(last + timedelta(1)))
            rows = await self.session.execute(statement)
            figures.update({day: DaySales(day, n, cents) for day, n, cents in rows})
        span = (last - first).days + 1
        every_day = (first + timedelta(days=n) for n in range(span))
        return [figures.get(day, DaySales(day, 0, 0)) for day in every_day]

    async def roll_up(self, first_day: date, last_day: date) -> int:
        """Recompute ``daily_revenue`` for the days in range; returns the rows it changed.

        One statement: every day in range (zero when nothing sold) upserted from the orders;
        a day whose figures did not change is not rewritten, so running it twice changes
        nothing (not even ``updated_at``).
        """
        span = (last_day - first_day).days + 1
        days = [first_day + timedelta(days=n) for n in range(span)]
        result = await self.session.execute(roll_up_days(days))
        return len(result.all())
