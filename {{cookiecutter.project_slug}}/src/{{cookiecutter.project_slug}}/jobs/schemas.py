from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from {{ cookiecutter.project_slug }}.models import JobStatus


class JobFile(BaseModel):
    """A finished job's file. ``download_url`` is presigned and short-lived: poll the job
    again (or follow ``result_url``) for a fresh one."""

    filename: str
    content_type: str
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Hex SHA-256 of the file, to check the download.")
    download_url: str = Field(description="Presigned GET; downloads as an attachment.")
    expires_in: int = Field(description="Seconds the download URL stays valid.")


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    kind: str
    status: JobStatus
    progress: int = Field(description="Percent done, 0-100.")
    attempts: int = Field(description="Deliveries that started work (>1: retried, redelivered).")
    params: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result_url: str | None = Field(
        default=None, description="Redirects to a fresh download URL, once succeeded."
    )
    result: JobFile | None = Field(default=None, description="The result file, once succeeded.")


class DeadLetterRead(BaseModel):
    id: UUID
    task_id: str
    task_name: str
    arguments: dict[str, Any] = Field(description="The task's keyword arguments.")
    request_id: str | None
    error_type: str
    error: str
    attempts: int
    failed_at: datetime
    requeued_at: datetime | None
    requeued_task_id: str | None


class Requeued(BaseModel):
    dead_letter_id: UUID
    task_id: str
