"""The notification outbox: messages the app has decided to send, written in the same
transaction as the decision. A relay (or a mail service integration) delivers them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base, UUIDv7PrimaryKey


class Notification(UUIDv7PrimaryKey, Base):
    __tablename__ = "notifications"

    channel: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    # The job's idempotency key, for tracing a message back to what caused it. Not unique
    # here on purpose: idempotency_keys is the guard, and counting rows per key is how the
    # tests prove it held.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
    delivered_at: Mapped[datetime | None]
