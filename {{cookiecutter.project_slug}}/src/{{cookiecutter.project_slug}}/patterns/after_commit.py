"""Send background jobs only after the transaction that asked for them has committed.

The failure it prevents: a request inserts a row, publishes a job, then commits. A fast
worker picks the job up before the commit and finds no row; or the request fails after
publishing, the transaction rolls back, and the job runs against data that never existed.

Guarantees:
- a job enqueued through :func:`jobs_for` is published only after the session's outermost
  transaction commits, and only by :func:`publish_committed` (called by whoever owns the
  commit: the request's session dependency, a job's unit of work);
- a rollback of the outermost transaction discards every job enqueued in it; a rollback to a
  savepoint discards the jobs enqueued since that savepoint, and keeps the earlier ones;
- jobs are published in the order they were enqueued, each with the request id bound in
  structlog's context (``request_id`` header), so the job's log lines carry the request's id;
- publishing runs in a worker thread: broker clients block, and the event loop must not.

What it does not guarantee: a crash (or a broker outage outlasting the publish retries)
between the commit and the publish loses the job. Where that matters, write the job into a
table in the same transaction (the ``jobs`` rows of long jobs are that record) or use the
transactional outbox.

Needs: SQLAlchemy (session events), anyio, structlog; a ``Publish`` callable that sends one
job (for Celery: :func:`celery_publisher`).

One unit of work for every transaction owner: the request's session dependency and the
worker's ``transaction()`` both end with ``commit()`` then :func:`finish_commit`, which runs
the ``on_commit`` callbacks (patterns/on_commit.py) and then publishes the buffered jobs. So a
worker's write invalidates the cache and purges the edge exactly like a request's.

What goes where:
- must not be lost (order placed/paid/cancelled/expired, price and stock changes): an outbox
  row in the same transaction (patterns/outbox.py); the relay delivers it at least once;
- best effort, bounded by a TTL or retried elsewhere (cache invalidation, CDN purges, job
  kicks whose row is the record): ``on_commit`` callbacks and :func:`jobs_for` buffers,
  finished here; a crash right after the commit loses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import uuid4

import anyio.to_thread
import structlog
from celery import Celery
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from {{ cookiecutter.project_slug }}.patterns.on_commit import run_after_commit

log = structlog.get_logger(__name__)

_INFO_KEY = "after_commit_jobs"


@dataclass(frozen=True, slots=True)
class Job:
    task: str
    kwargs: Mapping[str, Any]
    task_id: str
    options: Mapping[str, Any] = field(default_factory=dict)


class Publish(Protocol):
    """Sends one job to the broker (blocking I/O is fine: it runs in a thread)."""

    def __call__(self, job: Job, headers: Mapping[str, str]) -> None: ...


class AfterCommitJobs:
    """Jobs waiting for their transaction. Get one with :func:`jobs_for`."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._pending: list[Job] = []
        self._committed: list[Job] = []
        # Savepoint -> how many jobs were pending when it began (a released savepoint's
        # entry stays until the buffer goes: it is never rolled back on its own again).
        self._savepoints: dict[SessionTransaction, int] = {}

    def enqueue(self, task: str, /, **kwargs: Any) -> str:
        """Buffer ``task(**kwargs)`` (JSON values: ids, not objects); returns its task id."""
        return self.enqueue_with_options(task, kwargs)

    def enqueue_with_options(self, task: str, kwargs: Mapping[str, Any], **options: Any) -> str:
        job = Job(task=task, kwargs=dict(kwargs), task_id=str(uuid4()), options=options)
        self._pending.append(job)
        return job.task_id

    @property
    def pending(self) -> list[Job]:
        return list(self._pending)

    # Session event hooks -----------------------------------------------------------------

    def _savepoint_started(self, transaction: SessionTransaction) -> None:
        self._savepoints[transaction] = len(self._pending)

    def _committed_outermost(self) -> None:
        self._committed.extend(self._pending)
        self._pending.clear()

    def _rolled_back(self, transaction: SessionTransaction) -> None:
        if transaction.nested:
            mark = self._savepoints.pop(transaction, None)
            if mark is not None:
                del self._pending[mark:]
            return
        if transaction.parent is None:
            if self._pending:
                log.info("jobs.discarded", count=len(self._pending))
            self._pending.clear()

    # Publishing ----------------------------------------------------------------------------

    async def publish(self) -> int:
        """Publish every committed job, in order. Returns how many went out."""
        jobs, self._committed = self._committed, []
        if not jobs:
            return 0
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        headers = {"request_id": str(request_id)} if request_id else {}

        def publish_all() -> list[tuple[Job, BaseException]]:
            failed: list[tuple[Job, BaseException]] = []
            for job in jobs:
                try:
                    self._publish(job, headers)
                except Exception as exc:
                    failed.append((job, exc))
            return failed

        # One trip to a worker thread for the whole batch.
        failed = await anyio.to_thread.run_sync(publish_all)
        for job, exc in failed:
            # The data is committed; failing the response now would lie to the client. The
            # broker client already retried: say exactly what was lost.
            log.error(
                "jobs.publish_failed",
                task=job.task,
                task_id=job.task_id,
                kwargs=job.kwargs,
                exc_info=exc,
            )
        return len(jobs) - len(failed)


def jobs_for(session: AsyncSession | Session, publish: Publish | None = None) -> AfterCommitJobs:
    """The job buffer of ``session``'s unit of work, created on first use with ``publish``."""
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    jobs: AfterCommitJobs | None = sync_session.info.get(_INFO_KEY)
    if jobs is None:
        if publish is None:
            raise RuntimeError("no job buffer on this session yet: pass `publish`")
        jobs = AfterCommitJobs(publish)
        sync_session.info[_INFO_KEY] = jobs
    return jobs


async def publish_committed(session: AsyncSession | Session) -> int:
    """Call right after ``commit()``: publishes what the commit released (none: no-op)."""
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    jobs: AfterCommitJobs | None = sync_session.info.get(_INFO_KEY)
    return await jobs.publish() if jobs is not None else 0


async def finish_commit(session: AsyncSession | Session) -> None:
    """Call right after the outermost ``commit()``: callbacks first (caches clean before a
    job reads them), then jobs."""
    await run_after_commit(session)
    await publish_committed(session)


def _buffer(session: Session) -> AfterCommitJobs | None:
    jobs: AfterCommitJobs | None = session.info.get(_INFO_KEY)
    return jobs


# Class-level listeners: one registration for every session in the process, costing a dict
# lookup for sessions that never enqueue a job.
@event.listens_for(Session, "after_transaction_create")
def _on_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    jobs = _buffer(session)
    if jobs is not None and transaction.nested:
        jobs._savepoint_started(transaction)


@event.listens_for(Session, "after_commit")
def _on_commit(session: Session) -> None:
    jobs = _buffer(session)
    # after_commit also fires when a savepoint is released; only the outermost commit makes
    # the rows visible to other connections (a worker).
    if jobs is not None and session.get_nested_transaction() is None:
        jobs._committed_outermost()


# Fires after the transaction has closed, once per rolled-back transaction (savepoints too).
@event.listens_for(Session, "after_soft_rollback")
def _on_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    jobs = _buffer(session)
    if jobs is not None:
        jobs._rolled_back(previous_transaction)


def celery_publisher(app: Celery) -> Publish:
    """A :class:`Publish` for a Celery app: ``send_task`` by name, with the job's task id."""

    def publish(job: Job, headers: Mapping[str, str]) -> None:
        app.send_task(
            job.task,
            kwargs=dict(job.kwargs),
            task_id=job.task_id,
            headers=dict(headers),
            **job.options,
        )

    return publish
