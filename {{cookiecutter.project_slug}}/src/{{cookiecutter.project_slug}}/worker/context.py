"""What each worker process owns: the same engine, sessions and clients as the API.

Opened once per process when it starts (see patterns/reliable_tasks.JobRuntime), closed when
it stops. Jobs open a unit of work with :meth:`WorkerContext.transaction`, which commits and
then publishes any follow-up jobs, exactly like a request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from uuid import UUID

from celery import Celery
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from {{ cookiecutter.project_slug }}.caching import bind_invalidation, create_cache, create_purger
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.jobs.repository import JobRepository
from {{ cookiecutter.project_slug }}.models import DeadLetter
from {{ cookiecutter.project_slug }}.notifications.notifier import Notifier, create_notifier
from {{ cookiecutter.project_slug }}.patterns.after_commit import (
    Publish,
    celery_publisher,
    finish_commit,
    jobs_for,
)
from {{ cookiecutter.project_slug }}.patterns.cache import Cache
from {{ cookiecutter.project_slug }}.patterns.cdn_purge import Purger
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import DeadLetterRecord
from {{ cookiecutter.project_slug }}.patterns.storage import ObjectStorage
from {{ cookiecutter.project_slug }}.postgres import create_engine, create_sessionmaker
from {{ cookiecutter.project_slug }}.redis import create_redis
from {{ cookiecutter.project_slug }}.storage import create_storage


@dataclass
class WorkerContext:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    notifier: Notifier
    publish: Publish
    storage: ObjectStorage
    cache: Cache | None = None
    purger: Purger | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commit on success, roll back on error, then send its jobs."""
        async with self.sessionmaker() as session:
            jobs_for(session, self.publish)
            # The same unit of work as a request: writes here invalidate and purge too.
            bind_invalidation(session, self.cache, self.purger)
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            await session.commit()
            await finish_commit(session)


@dataclass
class WorkerContextFactory:
    settings: Settings
    app: Celery
    # Told each S3 operation made (the worker's s3_requests_total), when metrics are on.
    on_s3_request: Callable[[str], None] | None = None

    async def open(self) -> WorkerContext:
        # A worker process runs one task at a time: one connection, and one more for the
        # dead-letter record a failure writes. Postgres connections are a shared budget.
        settings = self.settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 1})
        engine = create_engine(settings, application_name="worker")
        return WorkerContext(
            settings=self.settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            redis=create_redis(self.settings),
            notifier=create_notifier(self.settings.notifier),
            publish=celery_publisher(self.app),
            storage=create_storage(self.settings, on_request=self.on_s3_request),
            # Its own registry: the worker exports no cache metrics of its own yet.
            cache=create_cache(self.settings, CollectorRegistry()),
            purger=create_purger(self.settings),
        )

    @staticmethod
    async def close(context: WorkerContext) -> None:
        if context.purger is not None:
            await context.purger.aclose()
        if context.cache is not None:
            await context.cache.aclose()
        context.storage.close()
        await context.redis.aclose()
        await context.engine.dispose()

    @staticmethod
    async def dead_letter(context: WorkerContext, record: DeadLetterRecord) -> None:
        async with context.transaction() as session:
            # ON CONFLICT: a failure recorded, then redelivered (worker died before the
            # ack), stays one record with the latest attempt count.
            statement = insert(DeadLetter).values(
                task_id=record.task_id,
                task_name=record.task_name,
                args=record.args,
                kwargs=record.kwargs,
                request_id=record.request_id,
                error_type=record.error_type,
                error=record.error,
                attempts=record.attempts,
            )
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=[DeadLetter.task_id],
                    set_={
                        "attempts": statement.excluded.attempts,
                        "error": statement.excluded.error,
                        "error_type": statement.excluded.error_type,
                    },
                )
            )
            # Convention: a task that reports progress in the jobs table takes `job_id`;
            # a client polling it learns the job failed instead of waiting forever.
            job_id = record.kwargs.get("job_id")
            if isinstance(job_id, str):
                await JobRepository(session).fail(
                    UUID(job_id), f"{record.error_type}: {record.error}"[:2000]
                )
