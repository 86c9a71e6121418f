"""A sent notification is marked delivered, so the cleanup job forgets it after retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.jobs.repository import JobRepository
from {{ cookiecutter.project_slug }}.models import Notification
from {{ cookiecutter.project_slug }}.notifications.notifier import Message, OutboxNotifier


async def test_a_sent_notification_is_delivered_and_cleanup_deletes_it_after_retention(
    session: AsyncSession,
) -> None:
    await OutboxNotifier().send(
        session,
        Message(recipient="a@example.com", subject="Hi", body="Hello", idempotency_key="k1"),
    )
    [delivered_at] = (await session.scalars(select(Notification.delivered_at))).all()
    assert delivered_at is not None

    repository = JobRepository(session)
    # Within retention: kept. Past it: deleted.
    kept = await repository.delete_stale(delivered_at - timedelta(seconds=1))
    assert kept["notifications"] == 0
    gone = await repository.delete_stale(datetime.now(UTC) + timedelta(days=1))
    assert gone["notifications"] == 1
    assert await session.scalar(select(func.count()).select_from(Notification)) == 0
