"""Idempotency keys claimed by jobs: one row per side effect that has happened."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, func
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    # The primary key is the guard: a second claim of one key conflicts in the database.
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200))
    # Indexed for the cleanup job, which forgets keys past the retention period.
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
