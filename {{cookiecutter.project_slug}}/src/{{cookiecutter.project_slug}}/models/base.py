"""The declarative base: one MetaData for Alembic, with every constraint and index named."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from uuid_utils.compat import uuid7

# Predictable names mean a migration can drop or alter any constraint by name, and the
# name in an error message tells you which rule was broken.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Every datetime column is timestamptz: naive timestamps are a bug waiting for DST.
    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012  # SQLAlchemy API


class UUIDv7PrimaryKey:
    # Time-ordered UUIDs: new rows land at the right edge of the B-tree like a bigint
    # sequence would (no random page splits), yet ids in URLs can't be enumerated.
    id: Mapped[UUID] = mapped_column(primary_key=True, default=uuid7)


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
