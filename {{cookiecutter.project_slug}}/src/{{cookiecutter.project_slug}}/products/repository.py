"""Catalog and stock SQL. Every read on a request path is a registered hot query: the plan
guard (tests/test_query_plans.py) proves each is served by an index."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Select, Update, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import Inventory, Product
from {{ cookiecutter.project_slug }}.patterns.keyset import Keyset
from {{ cookiecutter.project_slug }}.patterns.plan_guard import hot_query

# Newest first; served by ix_products_created_at_id.
CATALOG_ORDER = Keyset((Product.created_at, Product.id))

ProductRow = tuple[Product, int]


@hot_query("products.newest", forbid_sort=True)
def newest_products(after: Sequence[Any] | None, limit: int) -> Select[Product, int]:
    statement = select(Product, Inventory.stock).join(Inventory)
    return CATALOG_ORDER.paginate(statement, after, limit)


# For a selective filter the planner collects the few matches from the GIN index and sorts
# them; for a common one it walks the created_at index and filters. The guard accepts both:
# no table scan, and an ordered path exists.
@hot_query("products.newest_matching", forbid_sort=True)
def newest_products_matching(
    attributes: Mapping[str, Any], after: Sequence[Any] | None, limit: int
) -> Select[Product, int]:
    statement = (
        select(Product, Inventory.stock)
        .join(Inventory)
        .where(Product.attributes.contains(attributes))
    )
    return CATALOG_ORDER.paginate(statement, after, limit)


@hot_query("products.get")
def product_with_stock(product_id: UUID) -> Select[Product, int]:
    return select(Product, Inventory.stock).join(Inventory).where(Product.id == product_id)


@hot_query("products.prices")
def prices_of(product_ids: Collection[UUID]) -> Select[UUID, int]:
    return select(Product.id, Product.price_cents).where(Product.id.in_(product_ids))


@hot_query("inventory.take")
def take_stock_statement(product_id: UUID, quantity: int) -> Update:
    # One conditional statement: the row lock taken by UPDATE serialises buyers of this
    # product, and "stock >= :quantity" is re-checked against the row as the previous buyer
    # left it (READ COMMITTED re-evaluates the WHERE after waiting). No read-then-write, no
    # lost update, and stock cannot go below zero.
    return (
        update(Inventory)
        .where(Inventory.product_id == product_id, Inventory.stock >= quantity)
        .values(stock=Inventory.stock - quantity, updated_at=func.now())
        .returning(Inventory.stock)
        .execution_options(synchronize_session=False)
    )


@hot_query("inventory.adjust")
def adjust_stock_statement(product_id: UUID, delta: int, ceiling: int | None = None) -> Update:
    bounds = [Inventory.stock + delta >= 0]
    if ceiling is not None:
        bounds.append(Inventory.stock + delta <= ceiling)
    return (
        update(Inventory)
        .where(Inventory.product_id == product_id, *bounds)
        .values(stock=Inventory.stock + delta, updated_at=func.now())
        .returning(Inventory.stock)
        .execution_options(synchronize_session=False)
    )


class ProductRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_if_absent(
        self, *, sku: str, name: str, price_cents: int, attributes: dict[str, Any]
    ) -> Product | None:
        """Insert a product; ``None`` when the SKU is taken (the unique constraint decides)."""
        statement = (
            insert(Product)
            .values(sku=sku, name=name, price_cents=price_cents, attributes=attributes)
            .on_conflict_do_nothing(index_elements=[Product.sku])
            .returning(Product)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def create_inventory(self, product_id: UUID, stock: int) -> None:
        self.session.add(Inventory(product_id=product_id, stock=stock))
        await self.session.flush()

    async def get_with_stock(self, product_id: UUID) -> ProductRow | None:
        row = (await self.session.execute(product_with_stock(product_id))).one_or_none()
        if row is None:
            return None
        product, stock = row
        return product, stock

    async def update_fields(self, product_id: UUID, values: Mapping[str, Any]) -> Product | None:
        statement = (
            update(Product)
            .where(Product.id == product_id)
            .values(**values, updated_at=func.now())
            .returning(Product)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def get(self, product_id: UUID) -> Product | None:
        return await self.session.get(Product, product_id)

    async def set_image(self, product_id: UUID, upload_id: UUID) -> Product | None:
        """Point the product at a new image; its renditions are gone until the job records
        the new ones (so "rendered" is always "rendered from this upload")."""
        return await self.update_fields(
            product_id, {"image_upload_id": upload_id, "image_keys": None}
        )

    async def record_image(
        self, product_id: UUID, upload_id: UUID, keys: Mapping[str, str]
    ) -> bool:
        """Record the renditions, only if the product still shows this upload and has none
        yet: a newer image attached meanwhile wins, and a second run records nothing."""
        statement = (
            update(Product)
            .where(
                Product.id == product_id,
                Product.image_upload_id == upload_id,
                Product.image_keys.is_(None),
            )
            .values(image_keys=dict(keys), updated_at=func.now())
            .returning(Product.id)
            .execution_options(synchronize_session=False)
        )
        return (await self.session.execute(statement)).scalar_one_or_none() is not None

    async def drop_image(self, product_id: UUID, upload_id: UUID) -> None:
        """Detach an image that cannot be rendered, if it is still the product's."""
        await self.session.execute(
            update(Product)
            .where(Product.id == product_id, Product.image_upload_id == upload_id)
            .values(image_upload_id=None, image_keys=None, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )

    async def list_newest(
        self,
        *,
        after: Sequence[Any] | None,
        limit: int,
        attributes: Mapping[str, Any] | None = None,
    ) -> list[ProductRow]:
        statement = (
            newest_products_matching(attributes, after, limit)
            if attributes
            else newest_products(after, limit)
        )
        return [(product, stock) for product, stock in await self.session.execute(statement)]

    async def prices(self, product_ids: Collection[UUID]) -> dict[UUID, int]:
        rows = await self.session.execute(prices_of(product_ids))
        return dict(rows.all())


class InventoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def take(self, product_id: UUID, quantity: int) -> int | None:
        """Take ``quantity`` units; the stock left, or ``None`` when there was not enough."""
        result = await self.session.execute(take_stock_statement(product_id, quantity))
        return result.scalar_one_or_none()

    async def adjust(self, product_id: UUID, delta: int, ceiling: int | None = None) -> int | None:
        """Add ``delta`` (may be negative); ``None`` when that would go below zero (or above
        ``ceiling``)."""
        result = await self.session.execute(adjust_stock_statement(product_id, delta, ceiling))
        return result.scalar_one_or_none()


def catalog_key(row: ProductRow) -> tuple[datetime, UUID]:
    return row[0].created_at, row[0].id
