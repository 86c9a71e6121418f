"""The payment provider interface, and the local signer used in development and tests.

A provider starts a payment for an order and later reports the result by POSTing a signed
event to ``POST /webhooks/payments``. A real provider (Stripe, Adyen, ...) implements
:class:`PaymentProvider` with its SDK; the webhook side stays the same.

:class:`LocalSigner` plays the provider: starting a payment returns at once, and a follow-up
(run after the response) POSTs a real ``payment.succeeded`` event, signed with the webhook
secret, to the configured URL, or into this app in-process when none is set. The webhook
cannot tell it from a provider's.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import httpx
import orjson
import structlog
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.payments.schemas import PAYMENT_SUCCEEDED
from {{ cookiecutter.project_slug }}.payments.signing import HEADER, sign

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/webhooks/payments"


@dataclass(frozen=True)
class StartedPayment:
    payment_id: str
    # Work to do once the response has left (the local signer's webhook); None for a real
    # provider, which calls back on its own.
    follow_up: Callable[[], Awaitable[None]] | None = None


class PaymentProvider(Protocol):
    async def start(self, *, order_id: UUID, amount_cents: int) -> StartedPayment: ...

    async def aclose(self) -> None: ...


def signed_event(
    secret: str,
    *,
    event_id: str,
    order_id: UUID,
    amount_cents: int,
    payment_id: str,
    timestamp: int | None = None,
    type: str = PAYMENT_SUCCEEDED,
) -> tuple[bytes, dict[str, str]]:
    """A provider event's body and headers, signed: what the local signer (and tests) POST."""
    body = orjson.dumps(
        {
            "id": event_id,
            "type": type,
            "data": {
                "order_id": str(order_id),
                "amount_cents": amount_cents,
                "payment_id": payment_id,
            },
        }
    )
    headers = {HEADER: sign(secret, body, timestamp), "Content-Type": "application/json"}
    return body, headers


class LocalSigner:
    def __init__(self, secret: str, client: httpx.AsyncClient) -> None:
        self._secret = secret
        self._client = client

    async def start(self, *, order_id: UUID, amount_cents: int) -> StartedPayment:
        payment_id = f"pay_{secrets.token_hex(12)}"

        async def succeed() -> None:
            body, headers = signed_event(
                self._secret,
                event_id=f"evt_{secrets.token_hex(12)}",
                order_id=order_id,
                amount_cents=amount_cents,
                payment_id=payment_id,
            )
            response = await self._client.post(WEBHOOK_PATH, content=body, headers=headers)
            log.info(
                "payment.local_webhook_sent",
                order_id=str(order_id),
                payment_id=payment_id,
                status=response.status_code,
            )

        return StartedPayment(payment_id=payment_id, follow_up=succeed)

    async def aclose(self) -> None:
        await self._client.aclose()


def create_payment_provider(settings: Settings, app: FastAPI) -> PaymentProvider:
    """The provider the settings name. ``app``: the ASGI app, for in-process delivery."""
    if settings.payments_webhook_url:
        client = httpx.AsyncClient(base_url=settings.payments_webhook_url, timeout=10.0)
    else:
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://local-signer")
    return LocalSigner(settings.payments_webhook_secret.get_secret_value(), client)
