from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.storage import ObjectStorage
from tests.lifespan import running
from tests.s3_server import S3Server, on_s3


@dataclass
class UploadsApp:
    client: AsyncClient
    storage: ObjectStorage
    settings: Settings
    engine: AsyncEngine

    def body_bytes(self) -> float:
        """Request body bytes the API process received (its own metric)."""
        value = self.client._transport.app.state.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "http_request_body_bytes_total"
        )
        return float(value or 0.0)


@pytest.fixture
async def uploads_app(
    committed_settings: Settings, committed_engine: AsyncEngine, s3: S3Server
) -> AsyncIterator[UploadsApp]:
    """The real app on the committed database (real concurrency) and the real S3."""
    settings = on_s3(
        committed_settings,
        s3,
        multipart_threshold=5 * 1024 * 1024,
        multipart_part_size=5 * 1024 * 1024,
    )
    app = create_app(settings)
    async with running(app):
        await empty_bucket(app.state.storage)
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield UploadsApp(client, app.state.storage, settings, committed_engine)
        await empty_bucket(app.state.storage)


async def empty_bucket(storage: ObjectStorage) -> None:
    """Each proof counts objects from zero: the server is shared by the session."""
    for upload in await storage.list_multipart(""):
        await storage.abort_multipart(upload.key, upload.upload_id)
    await storage.delete_many(await storage.list_keys(""))
