"""Object-level authorisation (BOLA / IDOR), as a table over every owned resource.

For each route that takes the id of something a user owns, another user's id must answer
exactly as an id that does not exist: 404, the same problem body (apart from the path and the
request id), nothing of the owner's data. The owner gets the resource (or at least not a 404)
through the same route, so the 404 is the authorisation, not a broken route. The live event
stream has no id in its path: it filters by the caller
(tests/pubsub/test_sse_streams.py: two users on one interleaved stream each see only their own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import pytest
from httpx import AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import Job, JobResult, JobStatus, Order, OrderStatus, Upload
from {{ cookiecutter.project_slug }}.models.upload import UploadPurpose, UploadStatus
from tests.factories import Caller, make_user


@dataclass(frozen=True)
class Owned:
    owner: Caller
    order: UUID
    job: UUID
    report: UUID
    upload: UUID


@pytest.fixture
async def owned(session: AsyncSession, settings: Settings) -> Owned:
    owner = await make_user(session, settings)
    order = Order(user_id=owner.id, status=OrderStatus.pending, total_cents=1999)
    job = Job(kind="order_confirmation", requested_by_id=owner.id)
    report = Job(kind="sales_report", requested_by_id=owner.id, status=JobStatus.succeeded)
    upload = Upload(
        owner_id=owner.id,
        purpose=UploadPurpose.attachment,
        status=UploadStatus.pending,
        filename="secret-plans.pdf",
        content_type="application/pdf",
        size=1234,
        key=f"uploads/{owner.id}/{uuid4()}",
    )
    session.add_all([order, job, report, upload])
    await session.flush()
    session.add(
        JobResult(
            job_id=report.id,
            filename="sales.csv",
            content_type="text/csv",
            storage_key=f"reports/{report.id}/{'0' * 64}.csv",
            size=10,
            sha256="0" * 64,
        )
    )
    await session.flush()
    return Owned(owner, order.id, job.id, report.id, upload.id)


Call = Callable[[AsyncClient, UUID, dict[str, str]], Awaitable[Response]]


def get(path: str) -> Call:
    async def call(client: AsyncClient, resource: UUID, headers: dict[str, str]) -> Response:
        return await client.get(path.format(id=resource), headers=headers)

    return call


def post(path: str) -> Call:
    async def call(client: AsyncClient, resource: UUID, headers: dict[str, str]) -> Response:
        return await client.post(path.format(id=resource), headers=headers)

    return call


# (route, which owned id it takes, how to call it)
TABLE: list[tuple[str, str, Call]] = [
    ("GET /orders/{id}", "order", get("/orders/{id}")),
    ("POST /orders/{id}/payment", "order", post("/orders/{id}/payment")),
    ("GET /jobs/{id}", "job", get("/jobs/{id}")),
    ("GET /jobs/{id} (report)", "report", get("/jobs/{id}")),
    ("GET /jobs/{id}/result", "report", get("/jobs/{id}/result")),
    ("GET /uploads/{id}", "upload", get("/uploads/{id}")),
    ("POST /uploads/{id}/complete", "upload", post("/uploads/{id}/complete")),
]


def shape(response: Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return {k: v for k, v in body.items() if k not in {"instance", "request_id"}}


@pytest.mark.parametrize(("route", "resource", "call"), TABLE, ids=[row[0] for row in TABLE])
async def test_another_users_id_is_a_404_that_leaks_nothing(
    app_client: AsyncClient,
    session: AsyncSession,
    settings: Settings,
    owned: Owned,
    route: str,
    resource: str,
    call: Call,
) -> None:
    intruder = await make_user(session, settings)
    target: UUID = getattr(owned, resource)

    as_owner = await call(app_client, target, owned.owner.headers)
    as_intruder = await call(app_client, target, intruder.headers)
    unknown = await call(app_client, uuid4(), intruder.headers)

    assert as_owner.status_code != 404, (route, as_owner.text)
    assert as_intruder.status_code == 404, (route, as_intruder.text)
    assert as_intruder.headers["content-type"] == "application/problem+json"
    # Indistinguishable from an id that does not exist: existence is not leaked either.
    assert shape(as_intruder) == shape(unknown)
    for secret in (str(owned.owner.id), "secret-plans", "sales.csv", "reports/", "1999"):
        assert secret not in as_intruder.text
