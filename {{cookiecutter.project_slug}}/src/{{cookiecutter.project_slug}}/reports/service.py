from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import Job, User
from {{ cookiecutter.project_slug }}.patterns.after_commit import AfterCommitJobs
from {{ cookiecutter.project_slug }}.reports.schemas import SalesReportRequest
from {{ cookiecutter.project_slug }}.reports.tasks import SALES_REPORT, generate_sales_report

log = structlog.get_logger(__name__)


async def request_sales_report(
    session: AsyncSession, jobs: AfterCommitJobs, user: User, body: SalesReportRequest
) -> Job:
    """Record the job, then send it after the commit: the worker always finds the row."""
    job = Job(
        kind=SALES_REPORT,
        requested_by_id=user.id,
        params={"start": body.start.isoformat(), "end": body.end.isoformat()},
    )
    session.add(job)
    await session.flush()
    generate_sales_report.enqueue(jobs, job_id=str(job.id))
    log.info("report.requested", job_id=str(job.id), start=str(body.start), end=str(body.end))
    return job
