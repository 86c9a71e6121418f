"""Job status for clients that started a long job, and the dead-letter admin."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, status
from starlette.responses import RedirectResponse

from {{ cookiecutter.project_slug }}.auth.dependencies import CurrentUser, StaffUser
from {{ cookiecutter.project_slug }}.dependencies import SettingsDep
from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotFound
from {{ cookiecutter.project_slug }}.jobs import service
from {{ cookiecutter.project_slug }}.jobs.repository import JobRepository
from {{ cookiecutter.project_slug }}.jobs.schemas import DeadLetterRead, JobFile, JobRead, Requeued
from {{ cookiecutter.project_slug }}.models import Job, JobResult, JobStatus
from {{ cookiecutter.project_slug }}.patterns.problem import problems
from {{ cookiecutter.project_slug }}.patterns.storage import ObjectStorage
from {{ cookiecutter.project_slug }}.patterns.strict_input import IsoDatetime
from {{ cookiecutter.project_slug }}.postgres import DbSession, Jobs
from {{ cookiecutter.project_slug }}.storage import Storage

router = APIRouter(tags=["jobs"])


def job_read(job: Job, file: JobFile | None = None) -> JobRead:
    read = JobRead.model_validate(job)
    if job.status is JobStatus.succeeded:
        read.result_url = f"/jobs/{job.id}/result"
        read.result = file
    return read


def job_file(result: JobResult, storage: ObjectStorage, ttl: int) -> JobFile:
    # Presigning is local HMAC: no S3 round trip on a poll. The bytes never pass the API.
    url = storage.presign_get(
        result.storage_key,
        expires_in=ttl,
        filename=result.filename,
        content_type=result.content_type,
    )
    return JobFile(
        filename=result.filename,
        content_type=result.content_type,
        size=result.size,
        sha256=result.sha256,
        download_url=url,
        expires_in=ttl,
    )


@router.get("/jobs/{job_id}", responses=problems(NotFound))
async def get_job(
    job_id: UUID, session: DbSession, user: CurrentUser, storage: Storage, settings: SettingsDep
) -> JobRead:
    job = await service.get_job_for(session, job_id, user)
    result = await service.find_result(session, job)
    file = None if result is None else job_file(result, storage, settings.download_url_ttl)
    return job_read(job, file)


@router.get(
    "/jobs/{job_id}/result",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    response_class=RedirectResponse,
    responses={
        307: {"description": "To a fresh presigned download URL."},
        409: {"description": "Not finished yet."},
        **problems(NotFound),
    },
)
async def get_job_result(
    job_id: UUID, session: DbSession, user: CurrentUser, storage: Storage, settings: SettingsDep
) -> RedirectResponse:
    result = await service.get_result_for(session, job_id, user)
    file = job_file(result, storage, settings.download_url_ttl)
    return RedirectResponse(file.download_url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)


@router.get("/admin/dead-letters", tags=["admin"])
async def list_dead_letters(
    session: DbSession,
    _: StaffUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    include_requeued: bool = False,
    before: Annotated[
        IsoDatetime | None, Query(description="Page: failed before this (ISO 8601).")
    ] = None,
) -> list[DeadLetterRead]:
    rows = await JobRepository(session).list_dead_letters(
        limit=limit, include_requeued=include_requeued, before=before
    )
    return [
        DeadLetterRead(
            id=row.id,
            task_id=row.task_id,
            task_name=row.task_name,
            arguments=row.kwargs,
            request_id=row.request_id,
            error_type=row.error_type,
            error=row.error,
            attempts=row.attempts,
            failed_at=row.failed_at,
            requeued_at=row.requeued_at,
            requeued_task_id=row.requeued_task_id,
        )
        for row in rows
    ]


@router.post(
    "/admin/dead-letters/{dead_letter_id}/requeue",
    tags=["admin"],
    status_code=status.HTTP_202_ACCEPTED,
    responses=problems(NotFound, Conflict),
)
async def requeue_dead_letter(
    dead_letter_id: UUID, session: DbSession, jobs: Jobs, _: StaffUser
) -> Requeued:
    _dead, task_id = await service.requeue_dead_letter(session, jobs, dead_letter_id)
    return Requeued(dead_letter_id=dead_letter_id, task_id=task_id)
