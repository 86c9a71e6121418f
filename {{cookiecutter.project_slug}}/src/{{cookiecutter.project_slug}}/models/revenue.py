"""Daily revenue, rolled up from paid orders by a scheduled job (idempotent upsert)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Index, func
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base
from {{ cookiecutter.project_slug }}.models.order import Order


class DailyRevenue(Base):
    __tablename__ = "daily_revenue"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    orders: Mapped[int]
    revenue_cents: Mapped[int] = mapped_column(BigInteger)
    # Moves only when a day's figures change: re-running the roll-up rewrites nothing.
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


# Reports and the roll-up read orders by time range. Orders arrive in created_at order, so a
# BRIN index (a few pages for millions of rows, no cost on insert) narrows a day's scan to
# the blocks that hold it. Declared here, with the queries that need it.
ORDERS_BY_TIME = Index("ix_orders_created_at_brin", Order.created_at, postgresql_using="brin")
