"""Payment events received from the provider: the idempotency record of the webhook."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import BigInteger, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base


class PaymentEvent(Base):
    """One provider event, once. The provider's event id is the primary key: a retried or
    duplicated delivery conflicts on it and changes nothing."""

    __tablename__ = "payment_events"

    provider_event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    # Indexed: the foreign key (orders are never deleted, but the check needs it) and "the
    # events of an order" when support asks.
    order_id: Mapped[UUID] = mapped_column(ForeignKey("orders.id", ondelete="RESTRICT"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    # What the event did: "paid", or "ignored" (the order was no longer pending, say it
    # expired first; a real shop refunds those).
    outcome: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
