from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotFound, Unprocessable
from {{ cookiecutter.project_slug }}.patterns.keyset import InvalidCursor, Page
from {{ cookiecutter.project_slug }}.products.repository import (
    CATALOG_ORDER,
    InventoryRepository,
    ProductRepository,
    catalog_key,
)
from {{ cookiecutter.project_slug }}.products.schemas import ProductCreate, ProductRead, ProductUpdate

log = structlog.get_logger(__name__)


class ProductNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No product with this id.")


async def create_product(session: AsyncSession, body: ProductCreate) -> ProductRead:
    products = ProductRepository(session)
    product = await products.insert_if_absent(
        sku=body.sku, name=body.name, price_cents=body.price_cents, attributes=body.attributes
    )
    if product is None:
        raise Conflict("A product with this SKU already exists.", sku=body.sku)
    await products.create_inventory(product.id, body.stock)
    log.info("product.created", product_id=str(product.id), sku=product.sku, stock=body.stock)
    return ProductRead.from_row(product, body.stock)


async def update_product(
    session: AsyncSession, product_id: UUID, body: ProductUpdate
) -> ProductRead:
    products = ProductRepository(session)
    # null means "leave as is": every column here is NOT NULL.
    fields = body.model_dump(exclude_unset=True, exclude_none=True, exclude={"stock_delta"})
    if fields and (await products.update_fields(product_id, fields)) is None:
        raise ProductNotFound()
    if body.stock_delta:
        left = await InventoryRepository(session).adjust(product_id, body.stock_delta)
        if left is None:
            if await products.get_with_stock(product_id) is None:
                raise ProductNotFound()
            raise Conflict("Stock cannot go below zero.", product_id=str(product_id))
    row = await products.get_with_stock(product_id)
    if row is None:
        raise ProductNotFound()
    log.info(
        "product.updated",
        product_id=str(product_id),
        fields=sorted(fields),
        stock_delta=body.stock_delta,
    )
    return ProductRead.from_row(*row)


async def get_product(session: AsyncSession, product_id: UUID) -> ProductRead:
    row = await ProductRepository(session).get_with_stock(product_id)
    if row is None:
        raise ProductNotFound()
    return ProductRead.from_row(*row)


async def list_products(
    session: AsyncSession,
    *,
    cursor: str | None,
    limit: int,
    attributes: Mapping[str, Any] | None,
) -> Page[ProductRead]:
    try:
        after = CATALOG_ORDER.decode(cursor) if cursor else None
    except InvalidCursor as exc:
        raise Unprocessable("The cursor is not valid for this listing.") from exc
    rows = await ProductRepository(session).list_newest(
        after=after, limit=limit, attributes=attributes
    )
    items, next_cursor = CATALOG_ORDER.page(rows, limit, catalog_key)
    return Page[ProductRead](
        items=[ProductRead.from_row(*row) for row in items], next_cursor=next_cursor
    )
