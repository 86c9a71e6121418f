"""Report files live in S3: the job writes the CSV there, the job's owner gets a presigned URL.

Against a real SeaweedFS with credentials (tests/s3_server.py): the download is a plain HTTP GET
to S3 with the URL the API signed, and the bytes are compared with the CSV the figures make.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import (
    Job,
    JobResult,
    JobStatus,
    Order,
    OrderItem,
    OrderStatus,
)
from {{ cookiecutter.project_slug }}.reports.tasks import SALES_REPORT, write_sales_report
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext
from tests.factories import Caller, make_product, make_user
from tests.lifespan import app_and_worker
from tests.s3_server import S3Server, on_s3


@dataclass
class ReportStack:
    client: AsyncClient
    worker: WorkerContext
    settings: Settings
    engine: AsyncEngine

    async def keys(self, prefix: str) -> list[str]:
        return await self.worker.storage.list_keys(prefix)


@pytest.fixture
async def reports(
    committed_settings: Settings, committed_engine: AsyncEngine, s3: S3Server
) -> AsyncIterator[ReportStack]:
    """The real app and a worker process's context (same factory as the worker) on the
    committed database, both on the real S3."""
    settings = on_s3(committed_settings, s3, report_days_per_read=2)
    async with app_and_worker(settings) as stack:
        yield ReportStack(stack.client, stack.worker, settings, committed_engine)


async def a_report_with_sales(stack: ReportStack) -> tuple[Caller, Job, bytes]:
    """A staff user's report job over 5 days of our own (far in the past, so no other test's
    orders fall inside), and the CSV its figures make."""
    first = date(2001, 1, 1) + timedelta(days=random.randrange(8000))
    noon = [datetime.combine(first + timedelta(days=n), day_time(12), tzinfo=UTC) for n in range(5)]
    async with AsyncSession(stack.engine, expire_on_commit=False) as session:
        staff = await make_user(session, stack.settings, staff=True)
        buyer = await make_user(session, stack.settings)
        product = await make_product(session, stock=0)
        for at, total in [(noon[0], 1500), (noon[0], 500), (noon[3], 999)]:
            order = Order(
                user_id=buyer.id, status=OrderStatus.paid, total_cents=total, created_at=at
            )
            session.add(order)
            await session.flush()
            session.add(
                OrderItem(
                    order_id=order.id, product_id=product.id, quantity=1, unit_price_cents=total
                )
            )
        job = Job(
            kind=SALES_REPORT,
            requested_by_id=staff.id,
            params={"start": first.isoformat(), "end": (first + timedelta(days=4)).isoformat()},
        )
        session.add(job)
        await session.commit()
    figures = {0: (2, 2000), 3: (1, 999)}
    expected = io.StringIO()
    writer = csv.writer(expected)
    writer.writerow(["day", "paid_orders", "revenue_cents"])
    for n in range(5):
        writer.writerow([(first + timedelta(days=n)).isoformat(), *figures.get(n, (0, 0))])
    return staff, job, expected.getvalue().encode()


async def test_a_report_downloads_from_s3_byte_for_byte_through_its_presigned_url(
    reports: ReportStack,
) -> None:
    staff, job, expected = await a_report_with_sales(reports)

    assert await write_sales_report(reports.worker, str(job.id)) == "done"

    answer = await reports.client.get(f"/jobs/{job.id}", headers=staff.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "succeeded"
    file = body["result"]
    assert file["size"] == len(expected)
    assert file["sha256"] == hashlib.sha256(expected).hexdigest()
    assert file["expires_in"] == reports.settings.download_url_ttl
    # A plain GET to S3: no API in between, no credentials but the signature in the URL.
    async with httpx.AsyncClient() as plain:
        download = await plain.get(file["download_url"])
        assert download.status_code == 200
        assert download.content == expected
        assert download.headers["content-disposition"] == (
            f'attachment; filename="{file["filename"]}"'
        )
        # result_url redirects to a freshly signed URL for the same object.
        redirect = await reports.client.get(body["result_url"], headers=staff.headers)
        assert redirect.status_code == 307
        assert (await plain.get(redirect.headers["location"])).content == expected

    # Owner-only: another (non-staff) user cannot even learn the job exists.
    async with AsyncSession(reports.engine) as session:
        stranger = await make_user(session, reports.settings)
        await session.commit()
    for path in (f"/jobs/{job.id}", f"/jobs/{job.id}/result"):
        response = await reports.client.get(path, headers=stranger.headers)
        assert response.status_code == 404
        assert "reports/" not in response.text


async def test_a_rerun_of_the_report_job_writes_no_second_object(reports: ReportStack) -> None:
    _staff, job, expected = await a_report_with_sales(reports)
    prefix = f"reports/{job.id}/"

    assert await write_sales_report(reports.worker, str(job.id)) == "done"
    [key] = await reports.keys(prefix)

    # A second delivery of the finished job: nothing read, nothing written.
    assert await write_sales_report(reports.worker, str(job.id)) == "duplicate"
    assert await reports.keys(prefix) == [key]

    # The worker died after its upload, before its commit: the row never recorded the file and
    # the lease expired. The run that takes over uploads the same bytes to the same key.
    async with AsyncSession(reports.engine) as session:
        await session.execute(delete(JobResult).where(JobResult.job_id == job.id))
        await session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(
                status=JobStatus.running,
                lease_owner="a-worker-that-died",
                lease_expires_at=datetime.now(UTC) - timedelta(minutes=1),
            )
        )
        await session.commit()
    assert await write_sales_report(reports.worker, str(job.id)) == "done"
    assert await reports.keys(prefix) == [key]
    async with AsyncSession(reports.engine) as session:
        result = await session.get(JobResult, job.id)
        assert result is not None
        assert result.storage_key == key
    assert await reports.worker.storage.get_bytes(key) == expected
