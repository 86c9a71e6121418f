"""Long work answered with 202: the client polls the job instead of holding a connection."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from {{ cookiecutter.project_slug }}.auth.dependencies import StaffUser
from {{ cookiecutter.project_slug }}.jobs.router import job_read
from {{ cookiecutter.project_slug }}.jobs.schemas import JobRead
from {{ cookiecutter.project_slug }}.postgres import DbSession, Jobs
from {{ cookiecutter.project_slug }}.reports import service
from {{ cookiecutter.project_slug }}.reports.schemas import SalesReportRequest

router = APIRouter(tags=["reports"])


@router.post(
    "/reports",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {"description": "Accepted; poll the job at the Location header."},
    },
)
async def request_sales_report(
    body: SalesReportRequest, session: DbSession, jobs: Jobs, user: StaffUser, response: Response
) -> JobRead:
    job = await service.request_sales_report(session, jobs, user, body)
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_read(job)
