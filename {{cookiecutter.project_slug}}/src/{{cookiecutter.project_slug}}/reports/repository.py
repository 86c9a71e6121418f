"""Sales figures from orders. Only paid orders count as sales."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Date, cast, func, literal, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import DailyRevenue, Order, OrderStatus


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


class SalesRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def sales_on(self, day: date) -> tuple[int, int]:
        """Paid orders placed on ``day`` (UTC): how many, and their total in cents."""
        start, end = day_bounds(day)
        paid = literal(OrderStatus.paid, Order.status.type, literal_execute=True)
        statement = select(func.count(), func.coalesce(func.sum(Order.total_cents), 0)).where(
            Order.status == paid, Order.created_at >= start, Order.created_at < end
        )
        count, revenue = (await self.session.execute(statement)).one()
        return int(count), int(revenue)

    async def roll_up(self, first_day: date, last_day: date) -> int:
        """Recompute ``daily_revenue`` for the days in range; returns the rows it changed.

        One statement: every day in range (zero when nothing sold) upserted from the orders;
        a day whose figures did not change is not rewritten, so running it twice changes
        nothing (not even ``updated_at``).
        """
        days = select(
            cast(func.generate_series(first_day, last_day, text("interval '1 day'")), Date).label(
                "day"
            )
        ).subquery()
        paid = literal(OrderStatus.paid, Order.status.type, literal_execute=True)
        day_start = func.timezone("UTC", cast(days.c.day, Date))
        figures = (
            select(
                days.c.day,
                func.count(Order.id),
                func.coalesce(func.sum(Order.total_cents), 0),
            )
            .select_from(days)
            .outerjoin(
                Order,
                (Order.status == paid)
                & (Order.created_at >= day_start)
                & (Order.created_at < day_start + text("interval '1 day'")),
            )
            .group_by(days.c.day)
        )
        statement = insert(DailyRevenue).from_select(["day", "orders", "revenue_cents"], figures)
        statement = statement.on_conflict_do_update(
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
        )
        result = await self.session.execute(statement)
        return int(getattr(result, "rowcount", 0) or 0)
