"""Alembic environment: async engine from DATABASE_URL, or a connection handed in by a caller.

Migrations are the only source of the schema; tests apply them too (never ``create_all``).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.project_slug }}.config import DatabaseSettings
from {{ cookiecutter.project_slug }}.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    # Callers (tests, the CLI) may pass a URL explicitly; otherwise DATABASE_URL decides.
    url = config.get_main_option("sqlalchemy.url")
    return url or DatabaseSettings().database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        # Each migration in its own transaction: a failure leaves the previous ones applied
        # and the failing one fully rolled back (Postgres has transactional DDL).
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(engine: AsyncEngine | None) -> None:
    owned = engine is None
    engine = engine or create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        if owned:
            await engine.dispose()


def run_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


# A caller may hand in a connection or an async engine (tests, pytest-alembic); otherwise
# connect to DATABASE_URL.
connectable = config.attributes.get("connection")
if context.is_offline_mode():
    run_offline()
elif isinstance(connectable, Connection):
    _run(connectable)
else:
    asyncio.run(_run_async(connectable if isinstance(connectable, AsyncEngine) else None))
