"""report files: job results move from a bytea column to object storage

Revision ID: 20261203_0007
Revises: 20261202_0006
Create Date: 2026-12-03

The CSV bytes now live in S3; the row keeps the key, size and SHA-256. Results written
before this revision cannot be moved from a migration (it has no S3 client), so they are
deleted: a report is a temporary output, and requesting it again rebuilds it. The unused
``jobs.result_key`` goes too (the key is on ``job_results``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261203_0007"
down_revision: str | None = "20261202_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM job_results")
    op.drop_column("job_results", "content")
    op.add_column("job_results", sa.Column("storage_key", sa.String(length=1024), nullable=False))
    op.add_column("job_results", sa.Column("size", sa.BigInteger(), nullable=False))
    op.add_column("job_results", sa.Column("sha256", sa.String(length=64), nullable=False))
    op.drop_column("jobs", "result_key")


def downgrade() -> None:
    op.add_column("jobs", sa.Column("result_key", sa.String(length=512), nullable=True))
    # The bytes are in S3, out of a migration's reach: the rows cannot keep a NOT NULL column.
    op.execute("DELETE FROM job_results")
    op.drop_column("job_results", "sha256")
    op.drop_column("job_results", "size")
    op.drop_column("job_results", "storage_key")
    op.add_column("job_results", sa.Column("content", sa.LargeBinary(), nullable=False))
