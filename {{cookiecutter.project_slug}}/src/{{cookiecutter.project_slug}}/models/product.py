from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base, Timestamps, UUIDv7PrimaryKey


class Product(UUIDv7PrimaryKey, Timestamps, Base):
    """The catalog entry. Its id appears in public URLs, hence a time-ordered UUID (base.py)."""

    __tablename__ = "products"

    # The merchant's own identifier; the unique constraint is the guard, not a lookup first.
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Integer cents, never float: 0.1 + 0.2 != 0.3 in binary floating point.
    price_cents: Mapped[int] = mapped_column(BigInteger)
    # Free-form facets (colour, size, ...): filtered with @> containment, served by the GIN index.
    attributes: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    # The image staff attached (an upload of purpose product_image), and once the thumbnail
    # job has rendered it, its public renditions by size: {"256": "images/<sha256>/256.webp"}.
    image_upload_id: Mapped[UUID | None] = mapped_column(
        ForeignKey("uploads.id", ondelete="SET NULL")
    )
    # none_as_null: None is SQL NULL ("not rendered"), not the JSON value null.
    image_keys: Mapped[dict[str, str] | None] = mapped_column(JSONB(none_as_null=True))

    __table_args__ = (
        CheckConstraint("price_cents >= 0", name="price_cents_non_negative"),
        # jsonb_path_ops: smaller and faster than the default GIN opclass, and @> (the only
        # operator the catalog filter uses) is all it supports.
        Index(
            "ix_products_attributes",
            "attributes",
            postgresql_using="gin",
            postgresql_ops={"attributes": "jsonb_path_ops"},
        ),
        # The catalog listing: newest first, keyset-paginated on (created_at, id).
        Index("ix_products_created_at_id", "created_at", "id"),
        # The foreign key's own index: ON DELETE SET NULL looks products up by upload.
        Index("ix_products_image_upload_id", "image_upload_id"),
    )


class Inventory(Base):
    """One stock row per product: the row every buyer of that product contends for."""

    __tablename__ = "inventory"

    # The product's id is the key: one row per product, and no surrogate to keep in step.
    product_id: Mapped[UUID] = mapped_column(
        ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    stock: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        # The last line of defence: even a buggy write path cannot sell stock that is not there.
        CheckConstraint("stock >= 0", name="stock_non_negative"),
    )
