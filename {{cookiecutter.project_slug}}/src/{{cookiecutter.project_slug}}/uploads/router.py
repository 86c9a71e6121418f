"""Uploads straight to object storage: declare (201 + presigned request), upload, complete."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Depends, status

from {{ cookiecutter.project_slug }}.auth.dependencies import CurrentUser, user_rate_limit
from {{ cookiecutter.project_slug }}.dependencies import SettingsDep
from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotFound
from {{ cookiecutter.project_slug }}.models import Upload, UploadStatus
from {{ cookiecutter.project_slug }}.patterns.problem import problems
from {{ cookiecutter.project_slug }}.patterns.storage import ObjectStorage
from {{ cookiecutter.project_slug }}.postgres import DbSession
from {{ cookiecutter.project_slug }}.storage import Storage
from {{ cookiecutter.project_slug }}.uploads import service
from {{ cookiecutter.project_slug }}.uploads.schemas import (
    PartRead,
    PresignedPostRead,
    UploadCreate,
    UploadRead,
    UploadTicket,
)

router = APIRouter(tags=["uploads"])


def upload_read(upload: Upload, storage: ObjectStorage, ttl: int) -> UploadRead:
    read = UploadRead.model_validate(upload)
    if upload.status in (UploadStatus.uploaded, UploadStatus.processed):
        # Private: a short-lived link that downloads (never renders) under the declared name.
        read.download_url = storage.presign_get(
            upload.key, expires_in=ttl, filename=upload.filename, content_type=upload.content_type
        )
    return read


@router.post(
    "/uploads",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(user_rate_limit(lambda limits: limits.uploads))],
)
async def create_upload(
    body: UploadCreate,
    session: DbSession,
    storage: Storage,
    settings: SettingsDep,
    user: CurrentUser,
) -> UploadTicket:
    ticket = await service.create_upload(
        session,
        storage,
        settings,
        user,
        purpose=body.purpose,
        filename=body.filename,
        content_type=body.content_type,
        size=body.size,
        sha256=body.sha256,
        parts_sha256=body.parts_sha256,
    )
    read = UploadRead.model_validate(ticket.upload)
    return UploadTicket(
        **read.model_dump(),
        expires_in=settings.upload_url_ttl,
        post=PresignedPostRead(url=ticket.post.url, fields=ticket.post.fields)
        if ticket.post
        else None,
        part_size=ticket.upload.part_size,
        parts=[
            PartRead(part_number=p.part_number, url=p.url, checksum_sha256=p.checksum_sha256)
            for p in ticket.parts
        ]
        if ticket.parts
        else None,
    )


@router.get("/uploads/{upload_id}", responses=problems(NotFound))
async def get_upload(
    upload_id: UUID, session: DbSession, storage: Storage, settings: SettingsDep, user: CurrentUser
) -> UploadRead:
    upload = await service.get_upload_for(session, upload_id, user)
    return upload_read(upload, storage, settings.download_url_ttl)


@router.post("/uploads/{upload_id}/complete", responses=problems(NotFound, Conflict))
async def complete_upload(
    upload_id: UUID, session: DbSession, storage: Storage, settings: SettingsDep, user: CurrentUser
) -> UploadRead:
    upload = await service.complete_upload(session, storage, upload_id, user)
    return upload_read(upload, storage, settings.download_url_ttl)
