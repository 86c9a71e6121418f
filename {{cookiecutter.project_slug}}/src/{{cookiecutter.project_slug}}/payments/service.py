"""Starting payments and applying the provider's events.

A webhook is applied in one transaction (the request's): the event row is inserted first
(its id is the idempotency key), then the order is paid with a conditional update. A
duplicate delivery finds the event row and changes nothing; a crash before the commit leaves
neither, and the provider's retry applies it.
"""

from __future__ import annotations

from uuid import UUID

import structlog
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.exceptions import BadRequest, Conflict, NotFound, Unprocessable
from {{ cookiecutter.project_slug }}.models import OrderStatus, User
from {{ cookiecutter.project_slug }}.orders.repository import OrderRepository
from {{ cookiecutter.project_slug }}.orders.service import mark_order_paid
from {{ cookiecutter.project_slug }}.payments.provider import PaymentProvider, StartedPayment
from {{ cookiecutter.project_slug }}.payments.repository import PaymentEventRepository
from {{ cookiecutter.project_slug }}.payments.schemas import (
    PAYMENT_SUCCEEDED,
    PaymentEventIn,
    WebhookOutcome,
)
from {{ cookiecutter.project_slug }}.payments.signing import InvalidSignature, verify

log = structlog.get_logger(__name__)


class InvalidWebhook(BadRequest):
    title = "Invalid Webhook"


async def start_payment(
    session: AsyncSession, provider: PaymentProvider, user: User, order_id: UUID
) -> StartedPayment:
    order = await OrderRepository(session).get_for_user(order_id, user.id)
    if order is None:
        raise NotFound("No order with this id.")
    if order.status is not OrderStatus.pending:
        raise Conflict("Only a pending order can be paid.", order_status=order.status.value)
    started = await provider.start(order_id=order.id, amount_cents=order.total_cents)
    log.info("payment.started", order_id=str(order.id), payment_id=started.payment_id)
    return started


def parse_webhook(settings: Settings, body: bytes, signature: str | None) -> PaymentEventIn:
    """Verify the signature (before anything is read or written), then parse the event."""
    try:
        verify(
            settings.payments_webhook_secret.get_secret_value(),
            body,
            signature,
            tolerance=settings.payments_webhook_tolerance_seconds,
        )
    except InvalidSignature as exc:
        log.warning("payment.webhook_rejected", reason=str(exc))
        raise InvalidWebhook(str(exc)) from exc
    try:
        return PaymentEventIn.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidWebhook("The event is not a payment event this shop understands.") from exc


async def apply_event(session: AsyncSession, event: PaymentEventIn) -> WebhookOutcome:
    events = PaymentEventRepository(session)
    try:
        first_time = await events.record(
            event_id=event.id,
            type=event.type,
            order_id=event.data.order_id,
            amount_cents=event.data.amount_cents,
        )
    except IntegrityError as exc:  # the foreign key: no such order (the request rolls back)
        raise Unprocessable("The event names an order that does not exist.") from exc
    if not first_time:
        log.info("payment.webhook_duplicate", event_id=event.id)
        return WebhookOutcome(event_id=event.id, outcome="duplicate")
    paid = event.type == PAYMENT_SUCCEEDED and await mark_order_paid(
        session, event.data.order_id, event.data.amount_cents
    )
    if paid:
        await events.set_outcome(event.id, "paid")
    log.info("payment.webhook_applied", event_id=event.id, paid=paid)
    return WebhookOutcome(event_id=event.id, outcome="paid" if paid else "ignored")
