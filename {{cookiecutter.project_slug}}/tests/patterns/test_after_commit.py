"""Jobs leave after the commit, never before it, and never after a rollback.

Runs on real Postgres with committed data: at the moment a job is published, a second
connection (standing in for a worker) must already see the row the job is about.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import anyio.from_thread
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from {{ cookiecutter.project_slug }}.models import Notification
from {{ cookiecutter.project_slug }}.patterns.after_commit import Job, jobs_for, publish_committed


class VisibilityRecorder:
    """A publisher that, for each job, asks another connection whether its row exists."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.published: list[tuple[str, bool]] = []

    async def _visible(self, key: str) -> bool:
        async with self.engine.connect() as connection:
            found = await connection.scalar(
                text("SELECT count(*) FROM notifications WHERE idempotency_key = :k"), {"k": key}
            )
        return bool(found)

    def __call__(self, job: Job, headers: Mapping[str, str]) -> None:
        key = str(job.kwargs["key"])
        self.published.append((key, anyio.from_thread.run(self._visible, key)))


def row(key: str) -> Notification:
    return Notification(channel="test", recipient="r", subject="s", body="b", idempotency_key=key)


async def test_jobs_are_published_after_the_commit_and_see_its_rows(
    jobs_engine: AsyncEngine,
) -> None:
    recorder = VisibilityRecorder(jobs_engine)
    key = f"ac-{secrets.token_hex(4)}"
    async with AsyncSession(jobs_engine) as session:
        session.add(row(key))
        jobs_for(session, recorder).enqueue("notifications.send", key=key)
        await session.flush()
        assert recorder.published == []  # flushed is not committed
        await session.commit()
        assert await publish_committed(session) == 1
    assert recorder.published == [(key, True)]


async def test_a_rollback_discards_the_jobs_of_the_transaction(jobs_engine: AsyncEngine) -> None:
    recorder = VisibilityRecorder(jobs_engine)
    key = f"rb-{secrets.token_hex(4)}"
    async with AsyncSession(jobs_engine) as session:
        session.add(row(key))
        jobs = jobs_for(session, recorder)
        jobs.enqueue("notifications.send", key=key)
        await session.flush()
        await session.rollback()
        assert jobs.pending == []
        assert await publish_committed(session) == 0
        # The session goes on: a later transaction's jobs are unaffected.
        session.add(row(key + "-2"))
        jobs.enqueue("notifications.send", key=key + "-2")
        await session.commit()
        await publish_committed(session)
    assert recorder.published == [(key + "-2", True)]


async def test_a_rolled_back_savepoint_discards_only_its_own_jobs(
    jobs_engine: AsyncEngine,
) -> None:
    recorder = VisibilityRecorder(jobs_engine)
    tag = secrets.token_hex(4)
    async with AsyncSession(jobs_engine) as session:
        jobs = jobs_for(session, recorder)
        session.add(row(f"{tag}-a"))
        jobs.enqueue("notifications.send", key=f"{tag}-a")
        savepoint = await session.begin_nested()
        session.add(row(f"{tag}-b"))
        jobs.enqueue("notifications.send", key=f"{tag}-b")
        await savepoint.rollback()
        async with session.begin_nested():  # released: its job stays with the outer one
            session.add(row(f"{tag}-c"))
            jobs.enqueue("notifications.send", key=f"{tag}-c")
        assert [job.kwargs["key"] for job in jobs.pending] == [f"{tag}-a", f"{tag}-c"]
        await session.commit()
        await publish_committed(session)
    assert recorder.published == [(f"{tag}-a", True), (f"{tag}-c", True)]


async def test_a_released_savepoint_does_not_publish_before_the_outer_commit(
    jobs_engine: AsyncEngine,
) -> None:
    recorder = VisibilityRecorder(jobs_engine)
    key = f"sp-{secrets.token_hex(4)}"
    async with AsyncSession(jobs_engine) as session:
        jobs = jobs_for(session, recorder)
        async with session.begin_nested():
            session.add(row(key))
            jobs.enqueue("notifications.send", key=key)
        assert await publish_committed(session) == 0  # released, but not committed
        await session.rollback()
        assert await publish_committed(session) == 0
    assert recorder.published == []


async def test_a_failed_publish_is_logged_and_does_not_stop_the_others(
    jobs_engine: AsyncEngine,
) -> None:
    sent: list[str] = []

    def flaky(job: Job, headers: Mapping[str, str]) -> None:
        if job.kwargs["key"] == "down":
            raise ConnectionError("broker unreachable")
        sent.append(str(job.kwargs["key"]))

    async with AsyncSession(jobs_engine) as session:
        jobs = jobs_for(session, flaky)
        for key in ("one", "down", "two"):
            jobs.enqueue("notifications.send", key=key)
        await session.commit()
        assert await publish_committed(session) == 2
    assert sent == ["one", "two"]
