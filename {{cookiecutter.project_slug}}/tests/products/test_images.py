"""Product images: staff attach an upload, a job renders public thumbnails into S3, the catalog
links them, and /media serves them immutable.

Against the real SeaweedFS with credentials (tests/s3_server.py), the real app, and a worker
process's own context (the factory the worker uses), on the committed database.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from httpx import AsyncClient
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import Product, Upload, UploadPurpose, UploadStatus
from {{ cookiecutter.project_slug }}.products.tasks import write_product_image
from {{ cookiecutter.project_slug }}.storage import create_storage
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext
from tests.factories import Caller, make_product, make_user
from tests.lifespan import app_and_worker
from tests.s3_server import S3Server, on_s3
from tests.worker.helpers import eventually
from tests.worker.proof_tasks import deliveries_key
from tests.worker_harness import CeleryProcess, JobStack, broker_url, require_broker


class WorkerKilled(BaseException):
    """What a kill -9 looks like from inside the job: it stops there, nothing after runs."""


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class ImageStack:
    client: AsyncClient
    worker: WorkerContext
    settings: Settings
    engine: AsyncEngine

    async def keys(self, prefix: str) -> list[str]:
        return await self.worker.storage.list_keys(prefix)

    async def uploaded(
        self,
        caller: Caller,
        data: bytes,
        *,
        purpose: str = "product_image",
        then_overwrite_with: bytes | None = None,
    ) -> Any:
        """A completed upload of ``data`` (declared image/png), sent straight to S3; with
        ``then_overwrite_with``, those bytes are POSTed again with the same fields after
        complete (the presigned POST is still valid)."""
        content_type = "image/png" if purpose == "product_image" else "application/pdf"
        declared = await self.client.post(
            "/uploads",
            json={
                "purpose": purpose,
                "filename": "photo.png",
                "content_type": content_type,
                "size": len(data),
            },
            headers=caller.headers,
        )
        assert declared.status_code == 201, declared.text
        ticket = declared.json()
        async with httpx.AsyncClient(timeout=30) as s3:
            stored = await s3.post(
                ticket["post"]["url"],
                data=ticket["post"]["fields"],
                files={"file": ("photo.png", data, content_type)},
            )
            assert stored.status_code == 204, stored.text
            done = await self.client.post(
                f"/uploads/{ticket['id']}/complete", headers=caller.headers
            )
            assert done.json()["status"] == "uploaded", done.text
            if then_overwrite_with is not None:
                again = await s3.post(
                    ticket["post"]["url"],
                    data=ticket["post"]["fields"],
                    files={"file": ("photo.png", then_overwrite_with, content_type)},
                )
                assert again.status_code == 204, again.text
        return done.json()


@pytest.fixture
async def images(
    committed_settings: Settings, committed_engine: AsyncEngine, s3: S3Server
) -> AsyncIterator[ImageStack]:
    settings = on_s3(committed_settings, s3, thumbnail_sizes=[256, 1024])
    async with app_and_worker(settings) as stack:
        yield ImageStack(stack.client, stack.worker, settings, committed_engine)


async def staff_and_product(stack: ImageStack) -> tuple[Caller, UUID]:
    async with AsyncSession(stack.engine, expire_on_commit=False) as session:
        staff = await make_user(session, stack.settings, staff=True)
        product = await make_product(session)
        await session.commit()
    return staff, product.id


async def attach(stack: ImageStack, staff: Caller, product_id: UUID, upload_id: str) -> Any:
    reply = await stack.client.put(
        f"/products/{product_id}/image", json={"upload_id": upload_id}, headers=staff.headers
    )
    return reply


async def test_an_attached_image_becomes_immutable_public_thumbnails(images: ImageStack) -> None:
    staff, product_id = await staff_and_product(images)
    upload = await images.uploaded(staff, png(800, 600))

    attached = await attach(images, staff, product_id, upload["id"])
    assert attached.status_code == 202, attached.text
    assert attached.json()["images"] == {}  # until the job has rendered it

    assert (
        await write_product_image(images.worker, product_id, UUID(upload["id"]), upload["etag"])
        == "done"
    )

    product = (await images.client.get(f"/products/{product_id}")).json()
    assert set(product["images"]) == {"256", "1024"}
    for size, url in product["images"].items():
        assert url.startswith("/media/images/")
        served = await images.client.get(url)
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/webp"
        assert "immutable" in served.headers["cache-control"]
        assert "public" in served.headers["cache-control"]
        with Image.open(io.BytesIO(served.content)) as thumbnail:
            # At most `size` on the longer side, and never enlarged.
            assert thumbnail.size == ((256, 192) if size == "256" else (800, 600))
    async with AsyncSession(images.engine) as session:
        row = await session.get(Upload, UUID(upload["id"]))
        assert row is not None
        assert row.status is UploadStatus.processed
    # The private original is not public: no /media path leads to uploads/.
    missing = await images.client.get("/media/images/" + "0" * 64 + "/256.webp")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_a_job_killed_between_writing_and_recording_leaves_one_set(
    images: ImageStack,
) -> None:
    staff, product_id = await staff_and_product(images)
    upload = await images.uploaded(staff, png(640, 640))
    assert (await attach(images, staff, product_id, upload["id"])).status_code == 202
    upload_id = UUID(upload["id"])

    async def dies() -> None:
        raise WorkerKilled("after writing the thumbnails, before recording them")

    with pytest.raises(WorkerKilled):
        await write_product_image(
            images.worker, product_id, upload_id, upload["etag"], before_record=dies
        )
    written = await images.keys("images/")
    async with AsyncSession(images.engine) as session:
        product = await session.get(Product, product_id)
        assert product is not None
        assert product.image_keys is None  # nothing recorded

    # The redelivery renders again, onto the same content-addressed keys.
    assert await write_product_image(images.worker, product_id, upload_id, upload["etag"]) == "done"
    # A further delivery finds the work done.
    assert (
        await write_product_image(images.worker, product_id, upload_id, upload["etag"])
        == "duplicate"
    )
    async with AsyncSession(images.engine) as session:
        product = await session.get(Product, product_id)
        assert product is not None
        assert product.image_keys is not None
        ours = sorted(product.image_keys.values())
    assert len(ours) == 2
    assert set(ours) <= set(written)
    assert [
        key for key in await images.keys("images/") if key.split("/")[1] == ours[0].split("/")[1]
    ] == ours


async def test_a_file_that_is_no_image_is_rejected_deleted_and_detached(
    images: ImageStack,
) -> None:
    staff, product_id = await staff_and_product(images)
    # Declared and sent as image/png, so S3 and complete() accept it: only decoding tells.
    upload = await images.uploaded(staff, b"%PDF-1.7\n" + b"\x00" * 4000)
    assert (await attach(images, staff, product_id, upload["id"])).status_code == 202

    outcome = await write_product_image(
        images.worker, product_id, UUID(upload["id"]), upload["etag"]
    )

    assert outcome == "rejected"
    mine = await images.client.get(f"/uploads/{upload['id']}", headers=staff.headers)
    assert mine.json()["status"] == "rejected"
    assert "not a JPEG, PNG or WebP" in mine.json()["rejected_reason"]
    assert await images.worker.storage.head(upload["key"]) is None
    async with AsyncSession(images.engine) as session:
        product = await session.get(Product, product_id)
        assert product is not None
        assert (product.image_upload_id, product.image_keys) == (None, None)


async def test_only_the_callers_own_completed_product_image_can_be_attached(
    images: ImageStack,
) -> None:
    staff, product_id = await staff_and_product(images)
    other_staff, _ = await staff_and_product(images)
    theirs = await images.uploaded(other_staff, png(32, 32))
    mine = await images.uploaded(staff, png(32, 32))
    attachment = await images.uploaded(staff, b"%PDF-1.7\n", purpose="attachment")
    pending = await images.client.post(
        "/uploads",
        json={
            "purpose": "product_image",
            "filename": "a.png",
            "content_type": "image/png",
            "size": 10,
        },
        headers=staff.headers,
    )

    refusals = {
        "another user's upload": await attach(images, staff, product_id, theirs["id"]),
        "an attachment": await attach(images, staff, product_id, attachment["id"]),
        "a pending upload": await attach(images, staff, product_id, pending.json()["id"]),
        "no such product": await attach(images, staff, UUID(int=7), mine["id"]),
    }

    assert {name: reply.status_code for name, reply in refusals.items()} == {
        "another user's upload": 422,
        "an attachment": 422,
        "a pending upload": 409,
        "no such product": 404,
    }
    # Another user's upload reads exactly as one that does not exist.
    unknown = await attach(images, staff, product_id, str(UUID(int=9)))
    assert unknown.json()["detail"] == refusals["another user's upload"].json()["detail"]
    assert theirs["key"] not in refusals["another user's upload"].text
    async with AsyncSession(images.engine) as session:
        product = await session.get(Product, product_id)
        assert product is not None
        assert product.image_upload_id is None


async def test_an_object_overwritten_after_its_verification_is_not_published(
    images: ImageStack,
) -> None:
    staff, product_id = await staff_and_product(images)
    # Verified as a 64x64 PNG, then replaced (by a smaller one: the policy allows up to the
    # declared size) through the same, still valid, presigned POST.
    upload = await images.uploaded(staff, png(64, 64), then_overwrite_with=png(32, 32))
    assert (await attach(images, staff, product_id, upload["id"])).status_code == 202

    outcome = await write_product_image(
        images.worker, product_id, UUID(upload["id"]), upload["etag"]
    )

    assert outcome == "rejected"
    mine = await images.client.get(f"/uploads/{upload['id']}", headers=staff.headers)
    assert mine.json()["rejected_reason"] == "The file changed after upload."
    assert await images.worker.storage.head(upload["key"]) is None


# --- kill -9 mid-task: real worker processes on the Redis broker ---------------------------


@pytest.fixture(scope="module")
def image_workers(
    jobs_database_url: str, redis_url: str, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[JobStack, list[CeleryProcess]]]:
    require_broker("redis", broker_url("redis"))
    env = {
        "S3_ENDPOINT_URL": s3.endpoint,
        "S3_BUCKET": s3.bucket,
        "S3_ACCESS_KEY_ID": s3.access_key,
        "S3_SECRET_ACCESS_KEY": s3.secret_key,
    }
    stack = JobStack(
        "redis", jobs_database_url, redis_url, tmp_path_factory.mktemp("images"), extra_env=env
    )
    try:
        yield stack, stack.start_workers(2)
    finally:
        stack.close()


async def test_a_worker_killed_mid_render_leaves_exactly_one_set_of_thumbnails(
    image_workers: tuple[JobStack, list[CeleryProcess]], jobs_engine: AsyncEngine
) -> None:
    stack, workers = image_workers
    settings = stack.settings()
    storage = create_storage(settings)
    source = png(900, 300)
    digest = hashlib.sha256(source).hexdigest()
    key = f"render-{secrets.token_hex(4)}"
    try:
        # An uploaded, verified product image, attached to a product (as PUT .../image leaves
        # them; the API would also enqueue the real job, which this proof replaces by its own).
        async with AsyncSession(jobs_engine, expire_on_commit=False) as session:
            staff = await make_user(session, settings, staff=True)
            product = await make_product(session)
            upload = Upload(
                owner_id=staff.id,
                purpose=UploadPurpose.product_image,
                filename="p.png",
                content_type="image/png",
                size=len(source),
                key=f"uploads/{staff.id}/{key}",
                status=UploadStatus.uploaded,
            )
            session.add(upload)
            await session.flush()
            upload.etag = await storage.put_bytes(upload.key, source, content_type="image/png")
            product.image_upload_id = upload.id
            await session.commit()
        redis = stack.redis()
        stack.send(
            "proof.render_image_held",
            key=key,
            product_id=str(product.id),
            upload_id=str(upload.id),
            etag=upload.etag,
            hold_s=30.0,
        )

        async def held() -> bool:
            return int(redis.llen(f"proof:{key}:held")) == 1

        await eventually(held, within=60, what="the job holding after its S3 writes")
        first_parent = int(str(redis.lindex(deliveries_key(key), 0)).split(":")[1])
        victim = next(w for w in workers if w.pid == first_parent)
        assert await storage.count(f"images/{digest}/") == 2  # written, not recorded
        victim.kill_hard()  # kill -9, parent and child

        async def recorded() -> bool:
            async with AsyncSession(jobs_engine) as session:
                row = await session.get(Product, product.id)
                return row is not None and row.image_keys is not None

        await eventually(recorded, within=90, what="the redelivered job recording the images")
        async with AsyncSession(jobs_engine) as session:
            row = await session.get(Product, product.id)
            assert row is not None
            assert row.image_keys is not None
            keys = sorted(row.image_keys.values())
        assert int(redis.llen(deliveries_key(key))) == 2
        assert keys == [f"images/{digest}/1024.webp", f"images/{digest}/256.webp"]
        assert await storage.count(f"images/{digest}/") == 2  # one set, not two
    finally:
        storage.close()
