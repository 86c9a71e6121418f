"""Housekeeping jobs for the job machinery itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from {{ cookiecutter.project_slug }}.jobs.repository import JobRepository
from {{ cookiecutter.project_slug }}.patterns.after_commit import jobs_for
from {{ cookiecutter.project_slug }}.patterns.outbox import purge_inbox, purge_published
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import job
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext

log = structlog.get_logger(__name__)


@job("jobs.cleanup_stale_data")
async def cleanup_stale_data(ctx: WorkerContext) -> dict[str, int]:
    """Delete what is past the retention period, and send again the jobs whose message was
    lost (still queued long after they were requested). Idempotent: a second run finds
    nothing to delete, and a job sent twice runs its effect once (its row is the guard)."""
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=ctx.settings.stale_data_retention_days)
    stalled_before = now - timedelta(minutes=ctx.settings.job_requeue_after_minutes)
    # The files first, then the rows: a run that dies in between finds the same rows (and
    # deletes the same keys, a no-op in S3) next time, so no object outlives its row unseen.
    async with ctx.transaction() as session:
        stale_files = await JobRepository(session).stale_result_keys(cutoff)
    await ctx.storage.delete_many(stale_files)
    async with ctx.transaction() as session:
        repository = JobRepository(session)
        counts = await repository.delete_stale(cutoff)
        counts["result_files"] = len(stale_files)
        # Published outbox rows: the stream holds them now. Inbox rows stay as long as any
        # other stale data (far longer than a redelivery can come).
        counts["outbox_rows"] = await purge_published(
            session, timedelta(hours=ctx.settings.outbox_retention_hours)
        )
        counts["inbox_rows"] = await purge_inbox(session, cutoff)
        # The jobs row is written in the request's transaction and the message only after
        # its commit: a crash in between leaves a row nobody will run. Its kind names the
        # task, which takes the job's id.
        buffer = jobs_for(session)
        stalled = await repository.stalled(stalled_before)
        for stalled_job in stalled:
            buffer.enqueue(stalled_job.kind, job_id=str(stalled_job.id))
        counts["requeued_jobs"] = len(stalled)
    log.info("cleanup.done", **counts)
    return counts
