from __future__ import annotations

from uuid import UUID

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import PaymentEvent


class PaymentEventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record(self, *, event_id: str, type: str, order_id: UUID, amount_cents: int) -> bool:
        """Record the event once; False when this event id was recorded before.

        ON CONFLICT on the primary key: a concurrent delivery of the same event waits for the
        first one's transaction and then finds the row, so the event is applied once."""
        statement = (
            insert(PaymentEvent)
            .values(
                provider_event_id=event_id,
                type=type,
                order_id=order_id,
                amount_cents=amount_cents,
                outcome="ignored",
            )
            .on_conflict_do_nothing(index_elements=[PaymentEvent.provider_event_id])
            .returning(PaymentEvent.provider_event_id)
        )
        return (await self.session.execute(statement)).scalar_one_or_none() is not None

    async def set_outcome(self, event_id: str, outcome: str) -> None:
        await self.session.execute(
            update(PaymentEvent)
            .where(PaymentEvent.provider_event_id == event_id)
            .values(outcome=outcome)
        )
