from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from {{ cookiecutter.project_slug }}.patterns.strict_input import JsonInteger

PAYMENT_SUCCEEDED = "payment.succeeded"


class PaymentEventData(BaseModel):
    order_id: UUID
    amount_cents: Annotated[int, Field(ge=0, strict=True), JsonInteger]
    payment_id: str = Field(min_length=1, max_length=255)


class PaymentEventIn(BaseModel):
    """The provider's event, as the webhook receives it."""

    model_config = ConfigDict(extra="ignore")  # providers add fields; unknown ones are fine

    id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=64)
    data: PaymentEventData


class PaymentStarted(BaseModel):
    order_id: UUID
    payment_id: str
    status: Literal["pending"] = "pending"


class WebhookOutcome(BaseModel):
    event_id: str
    # paid: this event paid the order; ignored: the order was not payable (already paid,
    # cancelled, another amount) or the type is not one the shop acts on; duplicate: this
    # event id was applied before.
    outcome: Literal["paid", "ignored", "duplicate"]
