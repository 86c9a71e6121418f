"""Jobs that failed for good: kept with everything needed to understand and re-run them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base, UUIDv7PrimaryKey


class DeadLetter(UUIDv7PrimaryKey, Base):
    __tablename__ = "dead_letters"

    # Unique: a redelivered failure (the worker died after recording it) stays one record.
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    task_name: Mapped[str] = mapped_column(String(200))
    args: Mapped[list[Any]] = mapped_column(JSONB, default=list, server_default="[]")
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    request_id: Mapped[str | None] = mapped_column(String(128))
    error_type: Mapped[str] = mapped_column(String(200))
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int]
    # Indexed: the admin list reads newest first.
    failed_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
    requeued_at: Mapped[datetime | None]
    requeued_task_id: Mapped[str | None] = mapped_column(String(64))
