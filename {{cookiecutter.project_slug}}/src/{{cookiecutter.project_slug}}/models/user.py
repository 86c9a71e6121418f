from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base, Timestamps, UUIDv7PrimaryKey


class User(UUIDv7PrimaryKey, Timestamps, Base):
    __tablename__ = "users"

    # Stored lower-cased by the service; the unique constraint is the real guard.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True, server_default="true")
    is_staff: Mapped[bool] = mapped_column(default=False, server_default="false")
