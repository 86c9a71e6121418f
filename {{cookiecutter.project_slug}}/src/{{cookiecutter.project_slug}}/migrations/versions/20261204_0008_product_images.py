"""product images: the attached upload and its rendered thumbnails

Revision ID: 20261204_0008
Revises: 20261203_0007
Create Date: 2026-12-04

Both columns are nullable and have no default, so adding them rewrites no row: the table's
lock is held only for the catalog change. On a large live catalog, build the index with
CREATE INDEX CONCURRENTLY in a migration of its own (outside the transaction) instead.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261204_0008"
down_revision: str | None = "20261203_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("products", sa.Column("image_upload_id", sa.Uuid(), nullable=True))
    op.add_column(
        "products",
        sa.Column("image_keys", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.create_foreign_key(
        op.f("fk_products_image_upload_id_uploads"),
        "products",
        "uploads",
        ["image_upload_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index("ix_products_image_upload_id", "products", ["image_upload_id"])


def downgrade() -> None:
    op.drop_index("ix_products_image_upload_id", table_name="products")
    op.drop_constraint(op.f("fk_products_image_upload_id_uploads"), "products", type_="foreignkey")
    op.drop_column("products", "image_keys")
    op.drop_column("products", "image_upload_id")
