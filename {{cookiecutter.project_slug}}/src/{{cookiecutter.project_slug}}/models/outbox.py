"""The transactional outbox and the consumers' inbox (patterns/outbox.py, patterns/consumer.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Identity, Index, SmallInteger, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base


class OutboxEvent(Base):
    __tablename__ = "outbox"

    # The relay's order: assigned at insert, so within one aggregate (whose writers queue on
    # the aggregate's row lock before they insert) it is commit order too.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_id: Mapped[UUID] = mapped_column(unique=True)
    type: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(SmallInteger)
    aggregate_type: Mapped[str] = mapped_column(String(50))
    aggregate_id: Mapped[str] = mapped_column(String(100))
    occurred_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(128))
    trace_context: Mapped[dict[str, str]] = mapped_column(JSONB, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    published_at: Mapped[datetime | None]
    stream_id: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        # The relay's only read: unpublished rows in seq order; stays tiny (published rows
        # leave it), whatever the table's size.
        Index(
            "ix_outbox_unpublished",
            "seq",
            postgresql_where=text("published_at IS NULL"),
        ),
        # The purge's read: published rows oldest first.
        Index("ix_outbox_published_at", "published_at"),
    )


class InboxEntry(Base):
    __tablename__ = "inbox"

    # One row per (event, consumer group): the handler's effect and this insert commit
    # together, so a redelivered event finds its row and is skipped.
    event_id: Mapped[UUID] = mapped_column(primary_key=True)
    consumer_group: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100))
    handled_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
