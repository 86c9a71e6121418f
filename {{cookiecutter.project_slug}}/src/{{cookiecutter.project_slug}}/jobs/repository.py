from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import (
    FINISHED,
    DeadLetter,
    IdempotencyKey,
    Job,
    JobResult,
    Notification,
)


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, job_id: UUID) -> Job | None:
        return await self.session.get(Job, job_id)

    async def get_result(self, job_id: UUID) -> JobResult | None:
        return await self.session.get(JobResult, job_id)

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
