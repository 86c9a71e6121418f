from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from {{ cookiecutter.project_slug }}.models import OrderStatus
from {{ cookiecutter.project_slug }}.patterns.strict_input import JsonInteger

MAX_LINES = 100
MAX_QUANTITY = 1000


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: UUID
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY, strict=True), JsonInteger]


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[OrderLine] = Field(min_length=1, max_length=MAX_LINES)


class OrderItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    product_id: UUID
    quantity: int
    unit_price_cents: int = Field(description="The price when the order was placed.")


class OrderSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    status: OrderStatus
    total_cents: int
    created_at: datetime


class OrderRead(OrderSummary):
    items: list[OrderItemRead]
