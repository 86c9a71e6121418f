"""Files clients upload straight to object storage, declared first and verified after."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from sqlalchemy import BigInteger, CheckConstraint, Enum, ForeignKey, Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.project_slug }}.models.base import Base, Timestamps, UUIDv7PrimaryKey


class UploadStatus(StrEnum):
    # pending -> uploaded -> processed | rejected (and pending -> rejected on a failed check)
    pending = "pending"
    uploaded = "uploaded"
    processed = "processed"
    rejected = "rejected"


class UploadPurpose(StrEnum):
    product_image = "product_image"
    attachment = "attachment"


class Upload(UUIDv7PrimaryKey, Timestamps, Base):
    __tablename__ = "uploads"

    owner_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[UploadPurpose] = mapped_column(
        Enum(
            UploadPurpose,
            name="upload_purpose",
            native_enum=False,
            create_constraint=True,
            length=32,
            values_callable=lambda members: [member.value for member in members],
        )
    )
    status: Mapped[UploadStatus] = mapped_column(
        Enum(
            UploadStatus,
            name="upload_status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda members: [member.value for member in members],
        ),
        default=UploadStatus.pending,
        server_default=UploadStatus.pending.value,
    )
    # What the client declared; the object is checked against it on completion.
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(BigInteger)
    # Base64 SHA-256 of the whole file, when the client declared one.
    sha256: Mapped[str | None] = mapped_column(String(64))
    # uploads/{owner}/{uuid}: never the client's filename (no traversal, no collisions).
    key: Mapped[str] = mapped_column(String(1024), unique=True)
    # Multipart uploads only: S3's id for the open upload, until it completes or is aborted.
    multipart_upload_id: Mapped[str | None] = mapped_column(String(512))
    part_size: Mapped[int | None] = mapped_column(BigInteger)
    # The declared base64 SHA-256 of each part, signed into its UploadPart URL.
    part_checksums: Mapped[list[str] | None] = mapped_column(JSONB)
    etag: Mapped[str | None] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(128))
    rejected_reason: Mapped[str | None] = mapped_column(String(200))
    uploaded_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("size > 0", name="size_positive"),
        # A user's own uploads, newest first.
        Index("ix_uploads_owner_id_created_at", "owner_id", "created_at"),
        # The sweeper: pending rows by age, and nothing else in the index.
        Index(
            "ix_uploads_pending_created_at",
            "created_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )
