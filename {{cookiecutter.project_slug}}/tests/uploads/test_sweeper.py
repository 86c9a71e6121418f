"""The sweeper removes abandoned uploads (rows, objects, open multipart uploads) and only those."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text

from {{ cookiecutter.project_slug }}.patterns.storage import sha256_b64
from {{ cookiecutter.project_slug }}.uploads.service import sweep_abandoned
from tests.uploads.conftest import UploadsApp
from tests.uploads.test_uploads import PNG, declare, post_to_s3, scalar, users

ABANDONED = 100
MULTIPART = 10
COMPLETED = 5


@pytest.mark.load
async def test_sweeper_removes_100_abandoned_and_touches_no_completed(
    uploads_app: UploadsApp,
) -> None:
    app = uploads_app
    [headers] = await users(app, 1)
    part = app.settings.multipart_part_size
    async with httpx.AsyncClient(timeout=30) as s3:
        completed = []
        for _ in range(COMPLETED):
            ticket = await declare(app, headers)
            assert (await post_to_s3(s3, ticket, PNG)).status_code == 204
            done = await app.client.post(f"/uploads/{ticket['id']}/complete", headers=headers)
            assert done.json()["status"] == "uploaded"
            completed.append(ticket["key"])
        # Abandoned: some with bytes in S3 but never completed, some multipart with a part in.
        for index in range(ABANDONED - MULTIPART):
            ticket = await declare(app, headers)
            if index % 2 == 0:
                assert (await post_to_s3(s3, ticket, PNG)).status_code == 204
        chunk = b"p" * part
        for _ in range(MULTIPART):
            reply = await app.client.post(
                "/uploads",
                json={
                    "purpose": "attachment",
                    "filename": "big.bin",
                    "content_type": "application/octet-stream",
                    "size": part + 1,
                    "parts_sha256": [sha256_b64(chunk), sha256_b64(b"q")],
                },
                headers=headers,
            )
            assert reply.status_code == 201, reply.text
            first = reply.json()["parts"][0]
            stored = await s3.put(
                first["url"], content=chunk, headers={"x-amz-checksum-sha256": sha256_b64(chunk)}
            )
            assert stored.status_code == 200
    assert len(await app.storage.list_multipart("uploads/")) == MULTIPART
    assert await app.storage.count("uploads/") == COMPLETED + (ABANDONED - MULTIPART) // 2
    # Age every row past the cut-off, the completed ones too: status, not age, protects them.
    async with app.engine.begin() as connection:
        await connection.execute(text("UPDATE uploads SET created_at = now() - interval '1 day'"))

    async def sweep() -> int:
        async with app.client._transport.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            removed = await sweep_abandoned(
                session, app.storage, app.settings, now=datetime.now(UTC)
            )
            await session.commit()
            return removed

    assert await sweep() == ABANDONED
    assert await sweep() == 0  # idempotent
    assert await scalar(app, "SELECT count(*) FROM uploads") == COMPLETED
    assert await scalar(app, "SELECT count(*) FROM uploads WHERE status = 'uploaded'") == COMPLETED
    assert await app.storage.list_multipart("uploads/") == []
    assert await app.storage.count("uploads/") == COMPLETED
    for key in completed:
        assert await app.storage.head(key) is not None
