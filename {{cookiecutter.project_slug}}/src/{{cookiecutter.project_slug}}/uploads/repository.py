from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import Upload, UploadStatus


class UploadRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_for_owner(
        self, upload_id: UUID, owner_id: UUID, *, for_update: bool = False
    ) -> Upload | None:
        # The owner is part of the lookup: another user's upload is simply not found (BOLA).
        statement = select(Upload).where(Upload.id == upload_id, Upload.owner_id == owner_id)
        if for_update:
            statement = statement.with_for_update()
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def get(self, upload_id: UUID, *, for_update: bool = False) -> Upload | None:
        """By id alone: for jobs, which act for the owner who already passed the check."""
        statement = select(Upload).where(Upload.id == upload_id)
        if for_update:
            statement = statement.with_for_update()
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def add(self, upload: Upload) -> Upload:
        self.session.add(upload)
        await self.session.flush()
        return upload

    async def abandoned(self, older_than: datetime, limit: int) -> Sequence[Upload]:
        # Served by the partial index ix_uploads_pending_created_at; SKIP LOCKED lets a
        # complete() in flight keep its row, and two sweepers split the work.
        statement = (
            select(Upload)
            .where(Upload.status == UploadStatus.pending, Upload.created_at < older_than)
            .order_by(Upload.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return (await self.session.execute(statement)).scalars().all()

    async def delete(self, uploads: Sequence[Upload]) -> None:
        for upload in uploads:
            await self.session.delete(upload)
        await self.session.flush()
