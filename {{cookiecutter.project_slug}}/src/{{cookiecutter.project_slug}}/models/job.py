"""Long-running jobs a client polls (``GET /jobs/{id}``), and the files they produce."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base, Timestamps, UUIDv7PrimaryKey


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


FINISHED = (JobStatus.succeeded, JobStatus.failed)


class Job(UUIDv7PrimaryKey, Timestamps, Base):
    __tablename__ = "jobs"

    kind: Mapped[str] = mapped_column(String(64))
    # A CHECK constraint instead of a Postgres enum type: adding a state later is one
    # constraint swap, not an ALTER TYPE that cannot run inside a transaction.
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus,
            name="job_status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda members: [member.value for member in members],
        ),
        default=JobStatus.queued,
        server_default=JobStatus.queued.value,
    )
    progress: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    requested_by_id: Mapped[UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    # Deliveries that started work: more than 1 means a worker died or the job was retried.
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    # The lease of the run in progress: who runs it and until when (renewed while it runs).
    # A second copy of the message finds it held and backs off; an expired one is taken over.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_range"),
        # The cleanup job deletes finished jobs by age; unfinished ones are never in it.
        Index(
            "ix_jobs_finished_at", "finished_at", postgresql_where=text("finished_at IS NOT NULL")
        ),
    )


class JobResult(Base):
    """A job's output file: the bytes live in object storage, this row says where and what."""

    __tablename__ = "job_results"

    job_id: Mapped[UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    # ``reports/{job_id}/{sha256}.csv``: a retried run of the same job writes the same key.
    storage_key: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
