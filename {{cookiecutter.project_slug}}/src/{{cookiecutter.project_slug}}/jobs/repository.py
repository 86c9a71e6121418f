from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import (
    FINISHED,
    DeadLetter,
    IdempotencyKey,
    Job,
    JobResult,
    JobStatus,
    Notification,
)


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, job_id: UUID) -> Job | None:
        return await self.session.get(Job, job_id)

    async def get_result(self, job_id: UUID) -> JobResult | None:
        return await self.session.get(JobResult, job_id)

    async def start(self, job_id: UUID, owner: str, lease_seconds: float) -> Job | None:
        """Take the job's lease and mark it running; None when another run holds a live lease
        or the job already finished (either way this delivery is a duplicate: back off).

        A "running" job whose lease expired lost its worker: this delivery takes it over.
        """
        lease_free = or_(
            Job.status == JobStatus.queued,
            and_(
                Job.status == JobStatus.running,
                or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < func.now()),
            ),
        )
        statement = (
            update(Job)
            .where(Job.id == job_id, lease_free)
            .values(
                status=JobStatus.running,
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, func.now()),
                lease_owner=owner,
                lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
            )
            .returning(Job)
        )
        return (await self.session.scalars(statement)).one_or_none()

    async def set_progress(
        self, job_id: UUID, percent: int, *, owner: str, lease_seconds: float
    ) -> bool:
        """Record progress and renew the lease; False when the lease is no longer ours (it
        expired and another run took the job over: stop)."""
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.lease_owner == owner)
            .values(
                progress=min(max(percent, 0), 100),
                lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
            )
            .returning(Job.id)
        )
        return (await self.session.execute(statement)).scalar_one_or_none() is not None

    async def reset_for_requeue(self, job_id: UUID) -> bool:
        """A failed job goes back to queued (its dead letter is being re-sent), so the task
        starts it again instead of exiting as a duplicate. False if it was not failed."""
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.failed)
            .values(
                status=JobStatus.queued,
                error=None,
                progress=0,
                finished_at=None,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(Job.id)
        )
        return (await self.session.execute(statement)).scalar_one_or_none() is not None

    async def finish(
        self,
        job_id: UUID,
        *,
        owner: str,
        filename: str,
        content_type: str,
        storage_key: str,
        size: int,
        sha256: str,
    ) -> bool:
        """Record where the result file is and mark the job succeeded, once, by the lease
        holder: False if it already was, or the lease passed to another run."""
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.lease_owner == owner)
            .values(
                status=JobStatus.succeeded,
                progress=100,
                finished_at=func.now(),
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(Job.id)
        )
        if (await self.session.execute(statement)).scalar_one_or_none() is None:
            return False
        await self.session.execute(
            insert(JobResult)
            .values(
                job_id=job_id,
                filename=filename,
                content_type=content_type,
                storage_key=storage_key,
                size=size,
                sha256=sha256,
            )
            .on_conflict_do_nothing(index_elements=[JobResult.job_id])
        )
        return True

    async def fail(self, job_id: UUID, error: str) -> None:
        await self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.not_in(FINISHED))
            .values(
                status=JobStatus.failed,
                error=error,
                finished_at=func.now(),
                lease_owner=None,
                lease_expires_at=None,
            )
        )

    async def list_dead_letters(
        self, *, limit: int, include_requeued: bool, before: datetime | None
    ) -> list[DeadLetter]:
        statement = select(DeadLetter).order_by(DeadLetter.failed_at.desc()).limit(limit)
        if not include_requeued:
            statement = statement.where(DeadLetter.requeued_at.is_(None))
        if before is not None:
            statement = statement.where(DeadLetter.failed_at < before)
        return list((await self.session.scalars(statement)).all())

    async def mark_requeued(self, dead_letter_id: UUID, task_id: str) -> DeadLetter | None:
        """Atomically flag a dead letter as re-enqueued; None if missing or already done."""
        statement = (
            update(DeadLetter)
            .where(DeadLetter.id == dead_letter_id, DeadLetter.requeued_at.is_(None))
            .values(requeued_at=func.now(), requeued_task_id=task_id)
            .returning(DeadLetter)
        )
        return (await self.session.scalars(statement)).one_or_none()

    async def stalled(self, queued_before: datetime, limit: int = 500) -> list[Job]:
        """Jobs whose message was lost: still queued since before ``queued_before``, or
        running on a lease that expired (the worker died and no redelivery came)."""
        # Few rows are ever queued for long, and finished ones are deleted by age: the scan
        # stays small without an index of its own.
        lost = or_(
            and_(Job.status == JobStatus.queued, Job.created_at < queued_before),
            and_(Job.status == JobStatus.running, Job.lease_expires_at < func.now()),
        )
        statement = select(Job).where(lost).order_by(Job.created_at).limit(limit)
        return list((await self.session.scalars(statement)).all())

    async def stale_result_keys(self, cutoff: datetime) -> list[str]:
        """Object keys of the files of the jobs :meth:`delete_stale` will delete."""
        statement = (
            select(JobResult.storage_key)
            .join(Job, Job.id == JobResult.job_id)
            .where(Job.finished_at < cutoff, Job.status.in_(FINISHED))
        )
        return list((await self.session.scalars(statement)).all())

    async def delete_stale(self, cutoff: datetime) -> dict[str, int]:
        """Forget what is older than ``cutoff``: finished jobs, used keys, delivered
        notifications and dead letters already re-enqueued."""
        statements = {
            "jobs": delete(Job).where(Job.finished_at < cutoff, Job.status.in_(FINISHED)),
            "idempotency_keys": delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff),
            "notifications": delete(Notification).where(Notification.delivered_at < cutoff),
            "dead_letters": delete(DeadLetter).where(DeadLetter.requeued_at < cutoff),
        }
        counts: dict[str, int] = {}
        for name, statement in statements.items():
            result = await self.session.execute(statement)
            counts[name] = int(getattr(result, "rowcount", 0) or 0)
        return counts
