"""Uploads: declare, upload straight to S3 with a presigned request, verify, sweep.

The API never sees the file's bytes. It signs a request that S3 itself enforces (key,
Content-Type, size range, expiry, per-part SHA-256), then checks what S3 holds against the
declaration before anything uses the object.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotFound, Unprocessable
from {{ cookiecutter.project_slug }}.models import Upload, UploadPurpose, UploadStatus, User
from {{ cookiecutter.project_slug }}.patterns.storage import (
    ObjectStorage,
    PresignedPart,
    PresignedPost,
)
from {{ cookiecutter.project_slug }}.uploads.repository import UploadRepository

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
# S3's own limit on parts per upload.
MAX_PARTS = 10_000


@dataclass(frozen=True)
class PurposeRule:
    content_types: frozenset[str]
    max_size: int
    multipart: bool


PURPOSES: dict[UploadPurpose, PurposeRule] = {
    UploadPurpose.product_image: PurposeRule(
        frozenset({"image/jpeg", "image/png", "image/webp"}), 10 * MiB, multipart=False
    ),
    UploadPurpose.attachment: PurposeRule(
        frozenset({"application/pdf", "text/csv", "application/zip", "application/octet-stream"}),
        5 * 1024 * MiB,
        multipart=True,
    ),
}


@dataclass(frozen=True)
class Ticket:
    upload: Upload
    post: PresignedPost | None
    parts: list[PresignedPart] | None


def object_key(owner_id: UUID) -> str:
    # Never the client's filename: no traversal, no collisions, no guessable names.
    return f"uploads/{owner_id}/{uuid7()}"


def part_count(size: int, part_size: int) -> int:
    return -(-size // part_size)


async def create_upload(
    session: AsyncSession,
    storage: ObjectStorage,
    settings: Settings,
    user: User,
    *,
    purpose: UploadPurpose,
    filename: str,
    content_type: str,
    size: int,
    sha256: str | None,
    parts_sha256: list[str] | None,
) -> Ticket:
    rule = PURPOSES[purpose]
    if content_type not in rule.content_types:
        raise Unprocessable(
            f"{content_type} is not accepted for {purpose.value}.",
            allowed=sorted(rule.content_types),
        )
    if size > rule.max_size:
        raise Unprocessable(f"{purpose.value} files are at most {rule.max_size} bytes.")
    upload = Upload(
        owner_id=user.id,
        purpose=purpose,
        filename=filename,
        content_type=content_type,
        size=size,
        sha256=sha256,
        key=object_key(user.id),
    )
    if rule.multipart and size > settings.multipart_threshold:
        part_size = settings.multipart_part_size
        count = part_count(size, part_size)
        if count > MAX_PARTS:
            raise Unprocessable("The file needs more than 10000 parts.")
        if parts_sha256 is None or len(parts_sha256) != count:
            raise Unprocessable(
                f"Declare the SHA-256 of each of the {count} parts of {part_size} bytes.",
                part_size=part_size,
                parts=count,
            )
        upload.part_size = part_size
        upload.part_checksums = parts_sha256
        upload.multipart_upload_id = await storage.create_multipart(
            upload.key, content_type=content_type
        )
        await UploadRepository(session).add(upload)
        parts = [
            storage.presign_part(
                upload.key,
                upload.multipart_upload_id,
                number,
                checksum_sha256=checksum,
                expires_in=settings.upload_url_ttl,
            )
            for number, checksum in enumerate(parts_sha256, start=1)
        ]
        log.info("upload.created", upload_id=str(upload.id), multipart=True, parts=count)
        return Ticket(upload, None, parts)
    await UploadRepository(session).add(upload)
    post = storage.presign_post(
        upload.key, content_type=content_type, max_size=size, expires_in=settings.upload_url_ttl
    )
    log.info("upload.created", upload_id=str(upload.id), multipart=False, size=size)
    return Ticket(upload, post, None)


async def get_upload_for(session: AsyncSession, upload_id: UUID, user: User) -> Upload:
    upload = await UploadRepository(session).get_for_owner(upload_id, user.id)
    if upload is None:
        raise NotFound("No such upload.")
    return upload


async def _reject(storage: ObjectStorage, upload: Upload, reason: str) -> Upload:
    # The object goes first: a row marked rejected never points at bytes someone could use.
    await storage.delete(upload.key)
    upload.status = UploadStatus.rejected
    upload.rejected_reason = reason
    log.warning("upload.rejected", upload_id=str(upload.id), reason=reason)
    return upload


async def complete_upload(
    session: AsyncSession, storage: ObjectStorage, upload_id: UUID, user: User
) -> Upload:
    """Verify what S3 holds against the declaration. Idempotent: a finished upload is returned."""
    upload = await UploadRepository(session).get_for_owner(upload_id, user.id, for_update=True)
    if upload is None:
        raise NotFound("No such upload.")
    if upload.status is not UploadStatus.pending:
        return upload
    if upload.multipart_upload_id is not None:
        parts = await storage.list_parts(upload.key, upload.multipart_upload_id)
        checksums = upload.part_checksums or []
        if len(parts) != len(checksums):
            raise Conflict(
                f"{len(parts)} of {len(checksums)} parts are uploaded.",
                uploaded_parts=len(parts),
            )
        await storage.complete_multipart(
            upload.key,
            upload.multipart_upload_id,
            [(number, etag, checksums[number - 1]) for number, etag, _size in parts],
        )
        upload.multipart_upload_id = None
    head = await storage.head(upload.key)
    if head is None:
        raise Conflict("The file has not been uploaded yet.")
    if head.size != upload.size:
        return await _reject(storage, upload, f"size {head.size} is not the declared {upload.size}")
    if head.content_type != upload.content_type:
        return await _reject(storage, upload, f"content type {head.content_type} was not declared")
    if upload.sha256 is not None and upload.part_checksums is None:
        # A POST upload carries no checksum S3 kept; the declared one is checked by reading
        # the object back, which only purposes with small limits allow.
        digest = base64.b64encode(hashlib.sha256(await storage.get_bytes(upload.key)).digest())
        if digest.decode() != upload.sha256:
            return await _reject(storage, upload, "sha256 does not match the declaration")
    upload.status = UploadStatus.uploaded
    upload.etag = head.etag
    upload.version_id = head.version_id
    upload.uploaded_at = datetime.now(UTC)
    log.info("upload.completed", upload_id=str(upload.id), size=head.size, etag=head.etag)
    return upload


async def sweep_abandoned(
    session: AsyncSession, storage: ObjectStorage, settings: Settings, *, now: datetime
) -> int:
    """Delete pending uploads older than UPLOAD_ABANDON_AFTER, with their objects and parts.

    Idempotent: deleting a missing object or aborting a finished upload is a no-op, and the
    rows go in the same transaction the caller commits.
    """
    older_than = now - timedelta(minutes=settings.upload_abandon_after_minutes)
    repository = UploadRepository(session)
    rows = await repository.abandoned(older_than, settings.upload_sweep_batch_size)
    for upload in rows:
        if upload.multipart_upload_id is not None:
            await storage.abort_multipart(upload.key, upload.multipart_upload_id)
    await storage.delete_many([upload.key for upload in rows])
    await repository.delete(rows)
    log.info("upload.swept", removed=len(rows))
    return len(rows)
