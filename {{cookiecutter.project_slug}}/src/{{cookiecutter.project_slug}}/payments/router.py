from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Request, status

from {{ cookiecutter.project_slug }}.auth.dependencies import CurrentUser
from {{ cookiecutter.project_slug }}.dependencies import SettingsDep
from {{ cookiecutter.project_slug }}.patterns.http_cache import PRIVATE_NO_STORE, cache_policy
from {{ cookiecutter.project_slug }}.payments import service
from {{ cookiecutter.project_slug }}.payments.provider import PaymentProvider
from {{ cookiecutter.project_slug }}.payments.schemas import PaymentStarted, WebhookOutcome
from {{ cookiecutter.project_slug }}.payments.signing import HEADER
from {{ cookiecutter.project_slug }}.postgres import DbSession

router = APIRouter(tags=["payments"], dependencies=[cache_policy(PRIVATE_NO_STORE)])


def get_provider(request: Request) -> PaymentProvider:
    provider: PaymentProvider = request.app.state.payments
    return provider


Provider = Annotated[PaymentProvider, Depends(get_provider)]


@router.post(
    "/orders/{order_id}/payment",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "No such order *of yours*."},
        409: {"description": "The order is not pending (already paid, or expired)."},
    },
)
async def start_payment(
    order_id: UUID,
    session: DbSession,
    provider: Provider,
    user: CurrentUser,
    background: BackgroundTasks,
) -> PaymentStarted:
    """Start paying the order; it becomes ``paid`` when the provider's webhook arrives."""
    started = await service.start_payment(session, provider, user, order_id)
    if started.follow_up is not None:
        background.add_task(started.follow_up)
    return PaymentStarted(order_id=order_id, payment_id=started.payment_id)


@router.post(
    "/webhooks/payments",
    responses={400: {"description": "Bad or stale signature, or not an event; nothing written."}},
)
async def payment_webhook(
    request: Request,
    session: DbSession,
    settings: SettingsDep,
    signature: Annotated[str | None, Header(alias=HEADER)] = None,
) -> WebhookOutcome:
    """The provider's events, signed. Applied once per event id; a duplicate answers 200 (the
    provider stops retrying) and changes nothing."""
    event = service.parse_webhook(settings, await request.body(), signature)
    return await service.apply_event(session, event)
