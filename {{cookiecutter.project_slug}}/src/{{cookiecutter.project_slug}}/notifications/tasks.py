"""Jobs that notify people. Each carries an idempotency key: one message per key, ever."""

from __future__ import annotations

from {{ cookiecutter.project_slug }}.models import IdempotencyKey
from {{ cookiecutter.project_slug }}.notifications.notifier import Message
from {{ cookiecutter.project_slug }}.patterns.idempotency import claim
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import job
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext

SEND = "notifications.send"


@job(SEND)
async def send_notification(
    ctx: WorkerContext, *, key: str, recipient: str, subject: str, body: str
) -> str:
    """Send one message; a redelivered or duplicated job with the same key sends nothing."""
    async with ctx.transaction() as session:
        # Claim and message commit together: either both happened or neither did.
        if not await claim(session, IdempotencyKey, key, task_name=SEND):
            return "duplicate"
        await ctx.notifier.send(
            session, Message(recipient=recipient, subject=subject, body=body, idempotency_key=key)
        )
    return "sent"
