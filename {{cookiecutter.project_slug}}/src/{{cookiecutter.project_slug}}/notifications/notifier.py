"""How the app tells people things: a small interface with pluggable senders.

The default, :class:`OutboxNotifier`, writes the message to the ``notifications`` table in the
caller's transaction: together with an idempotency claim in the same transaction, a message is
recorded exactly once. It hands the message to its transport (here a log line; a mail
service's client in production) and stamps ``delivered_at`` when the transport accepted it,
so the cleanup job can forget delivered messages after the retention period.
:class:`LogNotifier` only logs (handy in development). A real provider implements
:class:`Notifier` and passes the idempotency key on, so a retried call is not sent twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import Notification

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    recipient: str
    subject: str
    body: str
    idempotency_key: str
    channel: str = "email"


class Notifier(Protocol):
    async def send(self, session: AsyncSession, message: Message) -> None: ...


class OutboxNotifier:
    async def send(self, session: AsyncSession, message: Message) -> None:
        notification = Notification(
            channel=message.channel,
            recipient=message.recipient,
            subject=message.subject,
            body=message.body,
            idempotency_key=message.idempotency_key,
        )
        session.add(notification)
        await session.flush()
        # The transport: a log line stands in for the mail service. If the transaction then
        # rolls back, the claim goes too and a retry sends again (at least once, never lost).
        log.info(
            "notification.sent",
            channel=message.channel,
            recipient=message.recipient,
            key=message.idempotency_key,
        )
        notification.delivered_at = await session.scalar(select(func.now()))
        await session.flush()


class LogNotifier:
    async def send(self, session: AsyncSession, message: Message) -> None:
        log.info(
            "notification.sent",
            channel=message.channel,
            recipient=message.recipient,
            subject=message.subject,
            key=message.idempotency_key,
        )


def create_notifier(kind: str) -> Notifier:
    return LogNotifier() if kind == "log" else OutboxNotifier()
