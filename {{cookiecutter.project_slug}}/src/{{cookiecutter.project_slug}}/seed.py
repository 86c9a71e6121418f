"""A little sample data so a fresh stack has something to show. Safe to run repeatedly."""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from {{ cookiecutter.project_slug }}.auth.repository import UserRepository
from {{ cookiecutter.project_slug }}.auth.security import hash_password

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-123"  # noqa: S105  # published on purpose: local sample data

log = structlog.get_logger(__name__)


async def seed_sample_data(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with AsyncSession(engine) as session:
            users = UserRepository(session)
            created = await users.insert_if_absent(DEMO_EMAIL, await hash_password(DEMO_PASSWORD))
            await session.commit()
        log.info("seed.done", demo_user_created=created is not None)
    finally:
        await engine.dispose()
