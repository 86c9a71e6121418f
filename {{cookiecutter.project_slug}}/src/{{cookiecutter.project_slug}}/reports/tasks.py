"""Report jobs: the sales report (long, with progress) and the daily revenue roll-up."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import secrets
import socket
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

import structlog

from {{ cookiecutter.project_slug }}.jobs.repository import JobRepository
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import job
from {{ cookiecutter.project_slug }}.reports.repository import SalesRepository
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext

log = structlog.get_logger(__name__)

SALES_REPORT = "reports.sales_report"
REPORT_CONTENT_TYPE = "text/csv"


def report_key(job_id: UUID, sha256_hex: str) -> str:
    """Per job and content: a rerun with the same figures lands on the same object."""
    return f"reports/{job_id}/{sha256_hex}.csv"


@job(SALES_REPORT)
async def generate_sales_report(ctx: WorkerContext, *, job_id: str) -> str:
    """The task: :func:`write_sales_report`."""
    return await write_sales_report(ctx, job_id)


async def write_sales_report(ctx: WorkerContext, job_id: str) -> str:
    """Sales per day over the job's date range, as CSV.

    Idempotent by the job row: a delivery of a finished job does nothing, and the result is
    recorded by the same conditional update that marks the job done, so a redelivered run
    (its worker died) repeats the reading, never the record. The file goes to object storage
    first, under ``reports/{job_id}/{sha256}.csv``: a retry that reads the same figures
    overwrites the same object instead of adding one.
    """
    key = UUID(job_id)
    # The lease: a second copy of this message (the cleanup job re-sent it during a backlog,
    # or the broker redelivered it) finds it held and backs off; the lease is renewed with
    # every day read, and one that expired (its worker died) is taken over.
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    lease = ctx.settings.job_lease_seconds
    async with ctx.transaction() as session:
        started = await JobRepository(session).start(key, owner, lease)
    if started is None:
        log.info("report.lease_held", job_id=job_id)
        return "duplicate"
    first = date.fromisoformat(started.params["start"])
    last = date.fromisoformat(started.params["end"])
    today = datetime.now(UTC).date()
    step = ctx.settings.report_days_per_read
    chunks = [
        (start, min(start + timedelta(days=step - 1), last))
        for start in (first + timedelta(days=n) for n in range(0, (last - first).days + 1, step))
    ]

    rows: list[tuple[str, int, int]] = []
    for done, (chunk_first, chunk_last) in enumerate(chunks, start=1):
        async with ctx.transaction() as session:
            sales = await SalesRepository(session).sales_by_day(
                chunk_first, chunk_last, today=today
            )
            ours = await JobRepository(session).set_progress(
                key, done * 100 // len(chunks), owner=owner, lease_seconds=lease
            )
        if not ours:
            log.warning("report.lease_lost", job_id=job_id)
            return "duplicate"
        rows.extend((s.day.isoformat(), s.orders, s.revenue_cents) for s in sales)
        # Spread a large report's reads over time: it shares the primary with live traffic.
        await asyncio.sleep(ctx.settings.report_read_pause_seconds)

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["day", "paid_orders", "revenue_cents"])
    writer.writerows(rows)
    content = buffer.getvalue().encode()
    digest = hashlib.sha256(content).hexdigest()
    storage_key = report_key(key, digest)
    # Before the row: a row always points at an object. put_bytes runs in a worker thread.
    await ctx.storage.put_bytes(storage_key, content, content_type=REPORT_CONTENT_TYPE)
    async with ctx.transaction() as session:
        finished = await JobRepository(session).finish(
            key,
            owner=owner,
            filename=f"sales-{first.isoformat()}-{last.isoformat()}.csv",
            content_type=REPORT_CONTENT_TYPE,
            storage_key=storage_key,
            size=len(content),
            sha256=digest,
        )
    log.info(
        "report.finished",
        job_id=job_id,
        days=len(rows),
        written=finished,
        storage_key=storage_key,
        size=len(content),
    )
    return "done" if finished else "duplicate"


@job("reports.rollup_daily_revenue")
async def rollup_daily_revenue(ctx: WorkerContext) -> int:
    """Recompute the last few days of ``daily_revenue``; running it twice changes nothing."""
    today = datetime.now(UTC).date()
    first = today - timedelta(days=ctx.settings.revenue_rollup_lookback_days - 1)
    async with ctx.transaction() as session:
        changed = await SalesRepository(session).roll_up(first, today)
    log.info("revenue.rolled_up", first_day=str(first), last_day=str(today), changed=changed)
    return changed
