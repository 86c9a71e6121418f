"""Job status and results for their owner, dead letters for staff only."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from httpx import AsyncClient
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import Job, JobResult, JobStatus, User

PASSWORD = "correct horse battery"


async def login_as(client: AsyncClient, email: str) -> dict[str, str]:
    await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    response = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def user_id(session: AsyncSession, email: str) -> UUID:
    user = (await session.execute(User.__table__.select().where(User.email == email))).one()
    return UUID(str(user.id))


async def test_an_owner_follows_a_job_to_its_result(
    app_client: AsyncClient, session: AsyncSession
) -> None:
    headers = await login_as(app_client, "owner@example.com")
    job = Job(kind="sales_report", requested_by_id=await user_id(session, "owner@example.com"))
    session.add(job)
    await session.commit()

    running = await app_client.get(f"/jobs/{job.id}", headers=headers)
    assert running.status_code == 200
    assert running.json()["status"] == "queued"
    assert running.json()["result_url"] is None
    early = await app_client.get(f"/jobs/{job.id}/result", headers=headers)
    assert early.status_code == 409

    await session.execute(
        update(Job).where(Job.id == job.id).values(status=JobStatus.succeeded, progress=100)
    )
    session.add(
        JobResult(
            job_id=job.id,
            filename="r.csv",
            content_type="text/csv",
            storage_key=f"reports/{job.id}/{'0' * 64}.csv",
            size=4,
            sha256="0" * 64,
        )
    )
    await session.commit()
    done = (await app_client.get(f"/jobs/{job.id}", headers=headers)).json()
    assert done["status"] == "succeeded"
    assert done["result_url"] == f"/jobs/{job.id}/result"
    # The bytes come from S3 through a presigned URL (downloaded for real in
    # tests/reports/test_report_files.py); the API only signs it.
    file = done["result"]
    assert (file["filename"], file["size"], file["sha256"]) == ("r.csv", 4, "0" * 64)
    url = urlsplit(file["download_url"])
    assert url.path.endswith(f"/reports/{job.id}/{'0' * 64}.csv")
    query = parse_qs(url.query)
    assert query["response-content-disposition"] == ['attachment; filename="r.csv"']
    assert query["X-Amz-Expires"] == [str(file["expires_in"])]
    result = await app_client.get(done["result_url"], headers=headers)
    assert result.status_code == 307
    assert urlsplit(result.headers["location"]).path == url.path


async def test_someone_elses_job_is_not_found(
    app_client: AsyncClient, session: AsyncSession
) -> None:
    await login_as(app_client, "owner@example.com")
    job = Job(kind="sales_report", requested_by_id=await user_id(session, "owner@example.com"))
    session.add(job)
    await session.commit()
    stranger = await login_as(app_client, "stranger@example.com")
    response = await app_client.get(f"/jobs/{job.id}", headers=stranger)
    assert response.status_code == 404


async def test_dead_letters_are_for_staff_only(app_client: AsyncClient) -> None:
    headers = await login_as(app_client, "user@example.com")
    assert (await app_client.get("/admin/dead-letters", headers=headers)).status_code == 403
    assert (await app_client.get("/admin/dead-letters")).status_code == 401
