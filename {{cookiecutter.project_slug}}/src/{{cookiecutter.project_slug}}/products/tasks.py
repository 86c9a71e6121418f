"""Product jobs: render an attached image into public thumbnails."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from uuid import UUID

import anyio.to_thread
import structlog

from {{ cookiecutter.project_slug }}.models import UploadStatus
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import job
from {{ cookiecutter.project_slug }}.patterns.storage import ObjectChanged, ObjectMissing
from {{ cookiecutter.project_slug }}.patterns.thumbnails import NotAnImage, render_thumbnails
from {{ cookiecutter.project_slug }}.products.repository import ProductRepository
from {{ cookiecutter.project_slug }}.products.service import RENDER_IMAGE, invalidate_products
from {{ cookiecutter.project_slug }}.uploads.repository import UploadRepository
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext

log = structlog.get_logger(__name__)

RENDITION_CONTENT_TYPE = "image/webp"


def rendition_key(source_sha256: str, size: int) -> str:
    """Content-addressed by the source's bytes: a rerun overwrites the same objects instead of
    adding a set, and the bytes under a key never change, so they are served immutable. (A
    change to how renditions are made needs a new prefix, or caches keep the old ones.)"""
    return f"images/{source_sha256}/{size}.webp"


@job(RENDER_IMAGE)
async def render_product_image(
    ctx: WorkerContext, *, product_id: str, upload_id: str, etag: str
) -> str:
    """The task: :func:`write_product_image`."""
    return await write_product_image(ctx, UUID(product_id), UUID(upload_id), etag)


async def write_product_image(
    ctx: WorkerContext,
    product_id: UUID,
    upload_id: UUID,
    etag: str,
    *,
    before_record: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """Render the upload the product shows into thumbnails and record them on the product.

    Idempotent per product and object ETag: the renditions go to S3 first, under
    content-addressed keys, and the product records them with one conditional update; a run
    that dies between the two is repeated whole and overwrites the same objects. Only the
    verified version of the object is read (``if_match``). A file that is no image rejects the
    upload, deletes its object and detaches it. ``before_record`` runs between the writes and
    the record: the kill -9 proof holds the job there.
    """
    async with ctx.transaction() as session:
        product = await ProductRepository(session).get(product_id)
        upload = await UploadRepository(session).get(upload_id)
        if (
            product is None
            or upload is None
            or product.image_upload_id != upload_id
            or upload.etag != etag
            or upload.status not in (UploadStatus.uploaded, UploadStatus.processed)
        ):
            log.info("product.image_superseded", product_id=str(product_id))
            return "duplicate"
        if product.image_keys is not None:
            return "duplicate"
        source_key = upload.key
    try:
        source = await ctx.storage.get_bytes(source_key, if_match=etag)
        renditions = await anyio.to_thread.run_sync(
            lambda: render_thumbnails(
                source, ctx.settings.thumbnail_sizes, max_pixels=ctx.settings.image_max_pixels
            )
        )
    except (NotAnImage, ObjectChanged, ObjectMissing) as exc:
        reason = str(exc) if isinstance(exc, NotAnImage) else "The file changed after upload."
        await reject_image(ctx, product_id, upload_id, source_key, reason)
        return "rejected"
    digest = hashlib.sha256(source).hexdigest()
    keys = {str(size): rendition_key(digest, size) for size in renditions}
    await asyncio.gather(
        *(
            ctx.storage.put_bytes(keys[str(size)], data, content_type=RENDITION_CONTENT_TYPE)
            for size, data in renditions.items()
        )
    )
    if before_record is not None:
        await before_record()
    async with ctx.transaction() as session:
        recorded = await ProductRepository(session).record_image(product_id, upload_id, keys)
        upload = await UploadRepository(session).get(upload_id, for_update=True)
        if upload is not None and upload.status is UploadStatus.uploaded:
            upload.status = UploadStatus.processed
        if recorded:
            # After the commit, from the worker as from the API: Redis and the edge drop it.
            invalidate_products(session, [product_id])
    log.info(
        "product.image_rendered",
        product_id=str(product_id),
        upload_id=str(upload_id),
        sizes=sorted(renditions),
        recorded=recorded,
    )
    return "done" if recorded else "duplicate"


async def reject_image(
    ctx: WorkerContext, product_id: UUID, upload_id: UUID, source_key: str, reason: str
) -> None:
    # The object goes first: a rejected row never points at bytes someone could use.
    await ctx.storage.delete(source_key)
    async with ctx.transaction() as session:
        upload = await UploadRepository(session).get(upload_id, for_update=True)
        if upload is not None:
            upload.status = UploadStatus.rejected
            upload.rejected_reason = reason[:200]
        await ProductRepository(session).drop_image(product_id, upload_id)
        invalidate_products(session, [product_id])
    log.warning(
        "product.image_rejected",
        product_id=str(product_id),
        upload_id=str(upload_id),
        reason=reason,
    )
