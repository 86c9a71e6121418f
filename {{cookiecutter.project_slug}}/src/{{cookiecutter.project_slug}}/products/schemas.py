from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from {{ cookiecutter.project_slug }}.models import Product
from {{ cookiecutter.project_slug }}.patterns.strict_input import JsonInteger, PgJsonObject, PgText

# Generous, but bounded: a price or a stock figure outside these is a typo, not a product.
MAX_PRICE_CENTS = 10**10
MAX_STOCK = 10**9
# The renditions' public path: GET /media/{key} (products/router.py), which the CDN edge keeps
# for a year. A CDN in front of the bucket can serve the same paths from its images/ prefix.
MEDIA_PATH = "/media/"


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: PgText = Field(min_length=1, max_length=200)
    price_cents: Annotated[int, Field(ge=0, le=MAX_PRICE_CENTS, strict=True), JsonInteger]
    attributes: PgJsonObject = Field(default_factory=dict)
    stock: Annotated[int, Field(ge=0, le=MAX_STOCK, strict=True), JsonInteger] = 0


class ProductUpdate(BaseModel):
    """Fields to change (absent or null: unchanged); the SKU is the merchant's key and never
    changes."""

    model_config = ConfigDict(extra="forbid")

    name: PgText | None = Field(default=None, min_length=1, max_length=200)
    price_cents: (
        Annotated[int, Field(ge=0, le=MAX_PRICE_CENTS, strict=True), JsonInteger] | None
    ) = None
    attributes: PgJsonObject | None = None
    # A delta, not an absolute value: "set stock to 10" would overwrite the sales made
    # between the stocktake and the request; "+10" composes with them. The stock it leaves
    # must stay within 0..MAX_STOCK (409 otherwise), as on create.
    stock_delta: (
        Annotated[int, Field(ge=-MAX_STOCK, le=MAX_STOCK, strict=True), JsonInteger] | None
    ) = None


class ProductRead(BaseModel):
    id: UUID
    sku: str
    name: str
    price_cents: int
    attributes: dict[str, Any]
    stock: int
    images: dict[str, str] = Field(
        default_factory=dict,
        description="The product image's public URLs by size (longer side, pixels); empty "
        "until one is attached and rendered.",
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, product: Product, stock: int) -> ProductRead:
        return cls(
            id=product.id,
            sku=product.sku,
            name=product.name,
            price_cents=product.price_cents,
            attributes=product.attributes,
            stock=stock,
            images={size: MEDIA_PATH + key for size, key in (product.image_keys or {}).items()},
            created_at=product.created_at,
            updated_at=product.updated_at,
        )


class ProductImageSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upload_id: UUID = Field(
        description="A completed upload of purpose product_image, made by the caller."
    )
