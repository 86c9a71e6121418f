"""Housekeeping jobs for the job machinery itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from {{ cookiecutter.project_slug }}.jobs.repository import JobRepository
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import job
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext

log = structlog.get_logger(__name__)


@job("jobs.cleanup_stale_data")
async def cleanup_stale_data(ctx: WorkerContext) -> dict[str, int]:
    """Delete what is past the retention period. Idempotent: a second run finds nothing."""
    cutoff = datetime.now(UTC) - timedelta(days=ctx.settings.stale_data_retention_days)
    async with ctx.transaction() as session:
        counts = await JobRepository(session).delete_stale(cutoff)
    log.info("cleanup.done", **counts)
    return counts
