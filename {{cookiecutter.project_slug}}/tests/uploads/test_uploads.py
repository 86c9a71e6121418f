"""Uploads straight to a real SeaweedFS: the API signs, S3 enforces, complete verifies."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import anyio.to_thread
import httpx
import pytest
from httpx import ASGITransport, AsyncClient
from pydantic import SecretStr
from sqlalchemy import text

from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.storage import sha256_b64
from {{ cookiecutter.project_slug }}.storage import init_bucket
from tests.factories import auth_headers, insert_users
from tests.lifespan import running
from tests.uploads.conftest import UploadsApp
from tests.worker_harness import metric_value

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000
# The load proof's file: small enough to keep it seconds, big enough that the 1% bound
# means something (a declaration is ~150 bytes of JSON).
FILE = b"\x89PNG\r\n\x1a\n" + b"\x01" * (64 * 1024)


async def scalar(app: UploadsApp, sql: str, **params: Any) -> Any:
    async with app.engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar_one()


async def users(app: UploadsApp, count: int) -> list[dict[str, str]]:
    async with app.engine.begin() as connection:
        ids = await insert_users(connection, count)
    return [auth_headers(user_id, app.settings) for user_id in ids]


async def declare(
    app: UploadsApp, headers: dict[str, str], *, size: int = len(PNG), **extra: Any
) -> dict[str, Any]:
    body = {
        "purpose": "product_image",
        "filename": "../../etc/passwd.png",
        "content_type": "image/png",
        "size": size,
        **extra,
    }
    reply = await app.client.post("/uploads", json=body, headers=headers)
    assert reply.status_code == 201, reply.text
    ticket: dict[str, Any] = reply.json()
    return ticket


async def post_to_s3(
    s3: httpx.AsyncClient,
    ticket: dict[str, Any],
    data: bytes,
    *,
    content_type: str = "image/png",
    **override: str,
) -> httpx.Response:
    fields = {**ticket["post"]["fields"], **override}
    return await s3.post(
        ticket["post"]["url"], data=fields, files={"file": ("a.png", data, content_type)}
    )


@pytest.mark.load
async def test_200_concurrent_uploads_go_straight_to_s3(uploads_app: UploadsApp) -> None:
    app = uploads_app
    callers = await users(app, 200)
    before = app.body_bytes()
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(limits=limits, timeout=60) as s3:

        async def one(headers: dict[str, str]) -> str:
            ticket = await declare(app, headers, size=len(FILE))
            assert ticket["key"].startswith("uploads/")
            assert "passwd" not in ticket["key"]
            stored = await post_to_s3(s3, ticket, FILE)
            assert stored.status_code == 204, stored.text
            done = await app.client.post(f"/uploads/{ticket['id']}/complete", headers=headers)
            assert done.status_code == 200, done.text
            status: str = done.json()["status"]
            return status

        statuses = await asyncio.gather(*(one(headers) for headers in callers))
    api_bytes = app.body_bytes() - before
    uploaded = 200 * len(FILE)
    assert statuses == ["uploaded"] * 200
    assert await app.storage.count("uploads/") == 200
    assert await scalar(app, "SELECT count(*) FROM uploads WHERE status = 'uploaded'") == 200
    # The API saw the small JSON declarations only, not the files.
    assert 0 < api_bytes < 0.01 * uploaded, (api_bytes, uploaded)
    print(f"uploads.200: api_bytes={api_bytes:.0f} uploaded_bytes={uploaded}")  # noqa: T201


async def test_s3_refuses_what_the_policy_does_not_allow(uploads_app: UploadsApp) -> None:
    app = uploads_app
    [headers] = await users(app, 1)
    async with httpx.AsyncClient(timeout=30) as s3:
        ticket = await declare(app, headers)
        fields = ticket["post"]["fields"]
        signature = next(name for name in fields if name.lower().endswith("signature"))
        tampered = fields[signature][:-4] + ("0000" if fields[signature][-4:] != "0000" else "1111")
        refusals = {
            "tampered signature": await post_to_s3(s3, ticket, PNG, **{signature: tampered}),
            "another key": await post_to_s3(s3, ticket, PNG, key=f"uploads/{UUID(int=1)}/x"),
            "another content type": await post_to_s3(
                s3, ticket, PNG, content_type="text/html", **{"Content-Type": "text/html"}
            ),
            "over the declared size": await post_to_s3(s3, ticket, PNG + b"x"),
        }
        # Expired: the same signing code with the shortest TTL, then past it.
        short = app.storage.presign_post(
            ticket["key"], content_type="image/png", max_size=len(PNG), expires_in=1
        )
        await asyncio.sleep(2.1)  # the policy's expiry has one-second resolution
        refusals["expired"] = await s3.post(
            short.url, data=short.fields, files={"file": ("a.png", PNG, "image/png")}
        )
        codes = {name: reply.status_code for name, reply in refusals.items()}
        assert all(400 <= code < 500 for code in codes.values()), codes
        assert await app.storage.head(ticket["key"]) is None
        assert await app.storage.head(f"uploads/{UUID(int=1)}/x") is None
        done = await app.client.post(f"/uploads/{ticket['id']}/complete", headers=headers)
        assert done.status_code == 409  # nothing there yet: still pending, may still upload


async def test_complete_rejects_and_deletes_what_s3_let_through(uploads_app: UploadsApp) -> None:
    app = uploads_app
    [headers] = await users(app, 1)
    async with httpx.AsyncClient(timeout=30) as s3:
        # Within [1, size] S3 accepts a shorter body; complete compares with the declaration.
        ticket = await declare(app, headers)
        assert (await post_to_s3(s3, ticket, PNG[:-10])).status_code == 204
        # And a declared checksum that the bytes do not have.
        sha_ticket = await declare(app, headers, sha256=sha256_b64(b"something else"))
        assert (await post_to_s3(s3, sha_ticket, PNG)).status_code == 204
    for item in (ticket, sha_ticket):
        first = await app.client.post(f"/uploads/{item['id']}/complete", headers=headers)
        again = await app.client.post(f"/uploads/{item['id']}/complete", headers=headers)
        assert first.status_code == again.status_code == 200
        assert first.json()["status"] == "rejected"
        assert first.json() == again.json()  # idempotent
        assert await app.storage.head(item["key"]) is None


async def test_complete_is_idempotent_and_downloads_are_attachments(
    uploads_app: UploadsApp,
) -> None:
    app = uploads_app
    [headers] = await users(app, 1)
    ticket = await declare(app, headers, sha256=sha256_b64(PNG))
    async with httpx.AsyncClient(timeout=30) as s3:
        assert (await post_to_s3(s3, ticket, PNG)).status_code == 204
        first = await app.client.post(f"/uploads/{ticket['id']}/complete", headers=headers)
        again = await app.client.post(f"/uploads/{ticket['id']}/complete", headers=headers)
        assert first.status_code == again.status_code == 200
        assert first.json()["status"] == again.json()["status"] == "uploaded"
        assert first.json()["etag"] == again.json()["etag"]
        download = await s3.get(first.json()["download_url"])
        assert download.content == PNG
        assert download.headers["content-disposition"].startswith("attachment;")


async def test_the_api_counts_its_s3_calls_and_presigning_makes_none(
    uploads_app: UploadsApp,
) -> None:
    app = uploads_app

    async def calls() -> float:
        return metric_value((await app.client.get("/metrics")).text, "s3_requests_total")

    [headers] = await users(app, 1)
    before = await calls()
    ticket = await declare(app, headers, sha256=sha256_b64(PNG))
    assert await calls() == before  # the POST policy is signed locally
    async with httpx.AsyncClient(timeout=30) as s3:
        assert (await post_to_s3(s3, ticket, PNG)).status_code == 204
    reply = await app.client.post(f"/uploads/{ticket['id']}/complete", headers=headers)
    assert reply.status_code == 200, reply.text
    text_ = (await app.client.get("/metrics")).text
    assert metric_value(text_, "s3_requests_total", operation="HeadObject") >= 1
    assert metric_value(text_, "s3_requests_total") > before


async def test_another_users_upload_is_404_on_every_route(uploads_app: UploadsApp) -> None:
    app = uploads_app
    owner, other = await users(app, 2)
    ticket = await declare(app, owner)
    for method, path in (("GET", ""), ("POST", "/complete")):
        reply = await app.client.request(method, f"/uploads/{ticket['id']}{path}", headers=other)
        assert reply.status_code == 404
        assert reply.headers["content-type"] == "application/problem+json"


async def test_refuses_types_and_sizes_outside_the_purpose(uploads_app: UploadsApp) -> None:
    app = uploads_app
    [headers] = await users(app, 1)
    for content_type, size in (("text/html", 10), ("image/png", 10 * 1024 * 1024 + 1)):
        reply = await app.client.post(
            "/uploads",
            json={
                "purpose": "product_image",
                "filename": "a",
                "content_type": content_type,
                "size": size,
            },
            headers=headers,
        )
        assert reply.status_code == 422
        assert reply.headers["content-type"] == "application/problem+json"
    assert await scalar(app, "SELECT count(*) FROM uploads") == 0


async def test_multipart_with_a_checksum_per_part(uploads_app: UploadsApp) -> None:
    app = uploads_app
    [headers] = await users(app, 1)
    part = app.settings.multipart_part_size
    data = b"a" * part + b"b" * part + b"c" * 1000
    chunks = [data[i : i + part] for i in range(0, len(data), part)]
    reply = await app.client.post(
        "/uploads",
        json={
            "purpose": "attachment",
            "filename": "big.zip",
            "content_type": "application/zip",
            "size": len(data),
            "parts_sha256": [sha256_b64(chunk) for chunk in chunks],
        },
        headers=headers,
    )
    assert reply.status_code == 201, reply.text
    ticket = reply.json()
    assert ticket["post"] is None
    assert len(ticket["parts"]) == 3
    async with httpx.AsyncClient(timeout=60) as s3:
        # A part whose bytes are not the declared ones is refused by S3.
        first = ticket["parts"][0]
        bad = await s3.put(
            first["url"],
            content=b"x" * part,
            headers={"x-amz-checksum-sha256": first["checksum_sha256"]},
        )
        assert bad.status_code == 400, bad.text
        early = await app.client.post(f"/uploads/{ticket['id']}/complete", headers=headers)
        assert early.status_code == 409
        for item, chunk in zip(ticket["parts"], chunks, strict=True):
            stored = await s3.put(
                item["url"],
                content=chunk,
                headers={"x-amz-checksum-sha256": item["checksum_sha256"]},
            )
            assert stored.status_code == 200, stored.text
    done = await app.client.post(f"/uploads/{ticket['id']}/complete", headers=headers)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "uploaded"
    head = await app.storage.head(ticket["key"])
    assert head is not None
    assert head.size == len(data)
    assert await app.storage.list_multipart(ticket["key"]) == []


async def test_storage_init_sets_cors_and_the_multipart_lifecycle_rule(
    uploads_app: UploadsApp,
) -> None:
    applied = await init_bucket(uploads_app.settings)
    assert applied == {"cors": True, "lifecycle": True}
    rules = await anyio.to_thread.run_sync(
        lambda: uploads_app.storage.client.get_bucket_lifecycle_configuration(
            Bucket=uploads_app.storage.bucket
        )["Rules"]
    )
    assert rules[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1


async def test_s3_unreachable_is_a_503_problem_and_writes_nothing(
    committed_settings: Settings,
) -> None:
    # Nothing listens on this port: every S3 call fails to connect.
    settings = committed_settings.model_copy(
        update={
            "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
            "s3_access_key_id": "nobody",
            "s3_secret_access_key": SecretStr("nothing"),
        }
    )
    app = create_app(settings)
    async with running(app):
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            async with app.state.engine.begin() as connection:
                [user_id] = await insert_users(connection, 1)
            headers = auth_headers(user_id, settings)
            # Presigning is local: the declaration still works without S3...
            ticket = await client.post(
                "/uploads",
                json={
                    "purpose": "product_image",
                    "filename": "a.png",
                    "content_type": "image/png",
                    "size": 10,
                },
                headers=headers,
            )
            assert ticket.status_code == 201, ticket.text
            # ...the calls that reach S3 are a temporary 503, never a 500.
            answers = [
                await client.post(f"/uploads/{ticket.json()['id']}/complete", headers=headers),
                await client.get("/media/images/" + "a" * 64 + "/256.webp"),
            ]
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.headers["retry-after"]
                assert "Traceback" not in answer.text
            mine = await client.get(f"/uploads/{ticket.json()['id']}", headers=headers)
            assert mine.json()["status"] == "pending"
