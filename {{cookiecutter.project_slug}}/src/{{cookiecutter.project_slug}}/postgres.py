"""The async SQLAlchemy engine and the per-request session.

The request decides when to commit: :func:`get_db_session` opens one session per request,
commits it after the endpoint returns and *before* the response is sent (``scope="function"``),
and rolls back on any error. Services and repositories only ``flush()``.

Side effects a request registers with ``on_commit`` (cache invalidation, CDN purges) and
jobs it enqueues (:data:`Jobs`, buffered in the session) run right after that commit and
before the response; a rollback discards both (patterns/on_commit.py,
patterns/after_commit.py).

Connection health and read cost (patterns/lazy_transaction.py): no ``pool_pre_ping`` (a round
trip per checkout); connections are recycled after ``DB_POOL_RECYCLE_SECONDS``, a disconnect
invalidates the pool, and a read that met a dead connection first is retried once. The API's
reads run in autocommit (no ``BEGIN``/``COMMIT``) and its transaction starts on the first
write, so a read-only request costs its queries and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import sqlalchemy.ext.asyncio
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from {{ cookiecutter.project_slug }}.auth.user_cache import bind_user_cache
from {{ cookiecutter.project_slug }}.caching import bind_invalidation
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.after_commit import (
    AfterCommitJobs,
    finish_commit,
    jobs_for,
)
from {{ cookiecutter.project_slug }}.patterns.lazy_transaction import (
    ReadRetrySession,
    install_lazy_begin,
)


def create_engine(
    settings: Settings, *, application_name: str = "api", lazy_begin: bool | None = None
) -> AsyncEngine:
    """The engine of one process. ``lazy_begin`` (default: on for the API only) runs reads
    without a transaction until the first write; workers keep a transaction per unit of work
    until their jobs are measured with it."""
    # Looked up on the module at call time: tracing (patterns/tracing.py) wraps that attribute.
    engine = sqlalchemy.ext.asyncio.create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        # No pre-ping (a round trip per checkout): a connection older than this is replaced at
        # checkout, before a server's or proxy's idle timeout closes it; one that died anyway
        # (restart, failover) invalidates the pool and its read is retried once.
        pool_recycle=settings.db_pool_recycle_seconds,
        connect_args={
            "timeout": settings.readiness_timeout * 5,
            "server_settings": {
                "application_name": f"{settings.jwt_issuer}-{application_name}",
                "statement_timeout": str(settings.db_statement_timeout_ms),
            },
        },
    )
    if lazy_begin if lazy_begin is not None else application_name == "api":
        install_lazy_begin(engine)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: the response is serialised after the commit, from loaded rows.
    return async_sessionmaker(
        engine,
        expire_on_commit=False,
        autoflush=False,
        sync_session_class=ReadRetrySession,
    )


async def get_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        # What this request's writes invalidate goes through the app's cache and edge clients.
        state = request.app.state
        bind_invalidation(session, getattr(state, "cache", None), getattr(state, "purger", None))
        # A write to a user forgets its cached copy after the commit (auth/user_cache.py).
        bind_user_cache(session, getattr(state, "user_cache", None))
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()
            # After the commit, before the response: a 2xx means caches and edge are clean and
            # each job's publish was tried (with the broker client's retries). One that still
            # failed is logged as jobs.publish_failed; a report's jobs row stays queued and the
            # cleanup job re-sends it (job_requeue_after_minutes). Events go through the outbox.
            # Workers finish their transactions the same way (patterns/after_commit.py).
            await finish_commit(session)


# scope="function": the commit happens before the response leaves, so a client never sees a
# 2xx for a write that then failed to commit.
DbSession = Annotated[AsyncSession, Depends(get_db_session, scope="function")]


def get_jobs(request: Request, session: DbSession) -> AfterCommitJobs:
    return jobs_for(session, request.app.state.job_publisher)


# Enqueue background jobs from an endpoint or service; they leave after the commit.
Jobs = Annotated[AfterCommitJobs, Depends(get_jobs)]


async def get_sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return sessionmaker


# Sessions the endpoint opens and ends itself, when it must not hold a connection for the
# whole request (login: the read ends before the password hash runs).
Sessions = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
