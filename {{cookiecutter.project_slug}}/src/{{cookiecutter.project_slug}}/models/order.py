from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from sqlalchemy import BigInteger, CheckConstraint, Enum, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from {{ cookiecutter.project_slug }}.models.base import Base, Timestamps, UUIDv7PrimaryKey


class OrderStatus(StrEnum):
    pending = "pending"
    paid = "paid"
    cancelled = "cancelled"


class Order(UUIDv7PrimaryKey, Timestamps, Base):
    """A purchase. Time-ordered UUID key (base.py): ids go into URLs and must not be guessable
    in sequence, yet inserts still append to the right edge of the primary-key B-tree."""

    __tablename__ = "orders"

    # RESTRICT: orders are financial records; a user with orders is deactivated, not deleted.
    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    # A native enum: 4 bytes a row, and a typo in a status is a database error. New states
    # are added with ALTER TYPE order_status ADD VALUE.
    status: Mapped[OrderStatus] = mapped_column(
        Enum(OrderStatus, name="order_status"),
        default=OrderStatus.pending,
        server_default=OrderStatus.pending.value,
    )
    total_cents: Mapped[int] = mapped_column(BigInteger)
    # Idempotency-Key of the request that placed the order, and a hash of that request's
    # body: a retry with the same key and body gets this order back, a different body a 422.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))

    items: Mapped[list[OrderItem]] = relationship(lazy="raise", order_by="OrderItem.product_id")

    __table_args__ = (
        CheckConstraint("total_cents >= 0", name="total_cents_non_negative"),
        CheckConstraint(
            "(idempotency_key IS NULL) = (request_fingerprint IS NULL)",
            name="idempotency_key_has_fingerprint",
        ),
        # The hot query: a user's newest orders, keyset-paginated on (created_at, id). The
        # equality column leads, then the sort columns, so Postgres walks the index backwards
        # and stops after LIMIT rows: no Sort node, however many orders the user has. INCLUDE
        # carries the other listed columns, so the page is read from the index alone (an
        # index-only scan: no visit to 50 scattered heap pages); the price is that a status
        # change rewrites the index entry. It also serves the user_id foreign key.
        Index(
            "ix_orders_user_id_created_at_id",
            "user_id",
            "created_at",
            "id",
            postgresql_include=["status", "total_cents"],
        ),
        # The scheduler's work queue (expire unpaid orders): only pending orders are indexed,
        # so the index stays tiny while the table grows.
        Index(
            "ix_orders_pending_created_at",
            "created_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # The idempotency guard: the database, not a read-then-write, decides that one key
        # places one order. Partial: orders placed without a key cost the index nothing.
        Index(
            "uq_orders_user_id_idempotency_key",
            "user_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class OrderItem(Base):
    """One line of an order, with the unit price captured when it was bought."""

    __tablename__ = "order_items"

    # Natural composite key: an order has one line per product (the service merges repeats).
    # Its leading column serves "the items of an order", so no surrogate id and no extra index.
    order_id: Mapped[UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True
    )
    # Indexed: Postgres checks this foreign key when a product is deleted, and sales-per-
    # product reports start from it.
    product_id: Mapped[UUID] = mapped_column(
        ForeignKey("products.id", ondelete="RESTRICT"), primary_key=True, index=True
    )
    quantity: Mapped[int]
    unit_price_cents: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("unit_price_cents >= 0", name="unit_price_cents_non_negative"),
    )
