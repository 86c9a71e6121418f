"""Upload jobs: the sweeper that removes abandoned uploads (scheduled)."""

from __future__ import annotations

from datetime import UTC, datetime

from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import job
from {{ cookiecutter.project_slug }}.uploads.service import sweep_abandoned
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext

SWEEP = "uploads.sweep_abandoned"


@job(SWEEP)
async def sweep_abandoned_uploads(ctx: WorkerContext) -> int:
    """Idempotent: a second run finds nothing older than the cut-off left to remove."""
    async with ctx.transaction() as session:
        return await sweep_abandoned(session, ctx.storage, ctx.settings, now=datetime.now(UTC))
