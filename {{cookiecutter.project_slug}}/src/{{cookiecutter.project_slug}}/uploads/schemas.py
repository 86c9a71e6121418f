from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from {{ cookiecutter.project_slug }}.models import UploadPurpose, UploadStatus
from {{ cookiecutter.project_slug }}.patterns.strict_input import JsonInteger

SHA256_B64 = r"^[A-Za-z0-9+/]{43}=$"


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: UploadPurpose
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(min_length=3, max_length=127)
    size: Annotated[
        int,
        Field(gt=0, strict=True, description="Bytes; the upload is refused above it."),
        JsonInteger,
    ]
    sha256: str | None = Field(
        default=None, pattern=SHA256_B64, description="Base64 SHA-256 of the whole file."
    )
    # Multipart uploads (size above MULTIPART_THRESHOLD): the base64 SHA-256 of each part,
    # in order, parts of `part_size` bytes as the 201 answer states (ask with parts_sha256=[]
    # omitted first to learn part_size, or use MULTIPART_PART_SIZE).
    parts_sha256: list[str] | None = Field(default=None, max_length=10_000)


class PresignedPostRead(BaseModel):
    url: str
    fields: dict[str, str]


class PartRead(BaseModel):
    part_number: int
    url: str
    # Send it as the x-amz-checksum-sha256 header; S3 refuses a part whose bytes differ.
    checksum_sha256: str


class UploadRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    purpose: UploadPurpose
    status: UploadStatus
    filename: str
    content_type: str
    size: int
    key: str
    etag: str | None
    rejected_reason: str | None
    created_at: datetime
    uploaded_at: datetime | None
    download_url: str | None = None


class UploadTicket(UploadRead):
    """The 201 answer: where to send the bytes."""

    expires_in: int
    post: PresignedPostRead | None = None
    part_size: int | None = None
    parts: list[PartRead] | None = None
