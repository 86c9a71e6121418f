from __future__ import annotations

from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotFound
from {{ cookiecutter.project_slug }}.jobs.repository import JobRepository
from {{ cookiecutter.project_slug }}.models import DeadLetter, Job, JobResult, JobStatus, User
from {{ cookiecutter.project_slug }}.patterns.after_commit import AfterCommitJobs

log = structlog.get_logger(__name__)


async def get_job_for(session: AsyncSession, job_id: UUID, user: User) -> Job:
    job = await JobRepository(session).get(job_id)
    # Someone else's job is reported as missing: ids are not secrets, but jobs are private.
    if job is None or (job.requested_by_id != user.id and not user.is_staff):
        raise NotFound("No such job.")
    return job


async def find_result(session: AsyncSession, job: Job) -> JobResult | None:
    """A succeeded job's file record (None before, or once it is no longer kept)."""
    if job.status is not JobStatus.succeeded:
        return None
    return await JobRepository(session).get_result(job.id)


async def get_result_for(session: AsyncSession, job_id: UUID, user: User) -> JobResult:
    job = await get_job_for(session, job_id, user)
    if job.status is not JobStatus.succeeded:
        raise Conflict("The job has not finished yet.", job_status=job.status.value)
    result = await JobRepository(session).get_result(job.id)
    if result is None:
        raise NotFound("This job's result is no longer kept.")
    return result


async def requeue_dead_letter(
    session: AsyncSession, jobs: AfterCommitJobs, dead_letter_id: UUID
) -> tuple[DeadLetter, str]:
    """Send a dead-lettered task again (after this transaction commits), once.

    A new task id, the same arguments: the task's idempotency key still guards its effect.
    """
    repository = JobRepository(session)
    dead = await session.get(DeadLetter, dead_letter_id)
    if dead is None:
        raise NotFound("No such dead letter.")
    task_id = jobs.enqueue_with_options(dead.task_name, dead.kwargs)
    # The conditional update is the guard: two admins clicking at once requeue it once.
    updated = await repository.mark_requeued(dead_letter_id, task_id)
    if updated is None:
        raise Conflict("This dead letter was already re-enqueued.")
    job_id = dead.kwargs.get("job_id")
    if isinstance(job_id, str):
        # A job-backed task: its row goes back to queued in this same transaction, or the
        # re-sent task would find it failed and exit as a duplicate.
        await repository.reset_for_requeue(UUID(job_id))
    log.info("dead_letter.requeued", dead_letter_id=str(dead_letter_id), task_id=task_id)
    return updated, task_id
