from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any
from uuid import UUID

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.caching import invalidate_after_commit
from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotFound, Unprocessable
from {{ cookiecutter.project_slug }}.models import UploadPurpose, UploadStatus, User
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.after_commit import AfterCommitJobs
from {{ cookiecutter.project_slug }}.patterns.cache import Cache, Cached, CacheRegion
from {{ cookiecutter.project_slug }}.patterns.http_cache import make_etag
from {{ cookiecutter.project_slug }}.patterns.keyset import InvalidCursor, Page
from {{ cookiecutter.project_slug }}.products.repository import (
    CATALOG_ORDER,
    InventoryRepository,
    ProductRepository,
    catalog_key,
)
from {{ cookiecutter.project_slug }}.products.schemas import (
    MAX_STOCK,
    ProductCreate,
    ProductRead,
    ProductUpdate,
)
from {{ cookiecutter.project_slug }}.pubsub.events import price_changed, stock_changed
from {{ cookiecutter.project_slug }}.uploads.repository import UploadRepository

log = structlog.get_logger(__name__)

# The thumbnail job (products/tasks.py). Its name lives here, where it is enqueued: the task
# module imports this one, so this one enqueues by name.
RENDER_IMAGE = "products.render_image"

# The catalog is read far more than it is written, by everyone alike: cached in Redis (and at
# the edge, see router.py). Writes invalidate after their commit, so the TTLs only bound what
# a *failed* invalidation could leave behind.
PRODUCTS = CacheRegion("product", ProductRead, ttl=60, stale_ttl=300, negative_ttl=5)
CATALOG_PAGES = CacheRegion("catalog-page", Page[ProductRead], ttl=30, stale_ttl=120)
# Every catalog page is one scope: any product write moves it on (docs/cache.md).
CATALOG_SCOPE = "catalog"
# Surrogate keys: a product's own page carries product-<id>, every listing "catalog" (every
# product write purges both, so a listing needs no per-product keys: its body stays bytes).
CATALOG_KEY = "catalog"


def product_key(product_id: UUID) -> str:
    return f"product-{product_id}"


def product_etag(product: ProductRead) -> str:
    """A strong ETag from what versions a product's representation: its row's updated_at, its
    stock (another row) and the schema, without serialising the body."""
    return make_etag(PRODUCTS.fingerprint, product.id, product.updated_at, product.stock)


def invalidate_products(session: AsyncSession, product_ids: Collection[UUID]) -> None:
    """After this transaction commits: drop these products from Redis and the edge, and every
    catalog page with them. Anything that changes a product or its stock calls it."""
    invalidate_after_commit(
        session,
        keys={PRODUCTS: [str(product_id) for product_id in product_ids]},
        scopes=[CATALOG_SCOPE],
        surrogate_keys=[CATALOG_KEY, *(product_key(product_id) for product_id in product_ids)],
    )


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
    # A "not found" for this id may be cached, and every listing has a new first item.
    invalidate_products(session, [product.id])
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
        # Bounded as on create: unbounded deltas would end in "integer out of range".
        left = await InventoryRepository(session).adjust(
            product_id, body.stock_delta, ceiling=MAX_STOCK
        )
        if left is None:
            if await products.get_with_stock(product_id) is None:
                raise ProductNotFound()
            raise Conflict(
                f"Stock must stay between 0 and {MAX_STOCK}.", product_id=str(product_id)
            )
    row = await products.get_with_stock(product_id)
    if row is None:
        raise ProductNotFound()
    product, stock = row
    events = []
    if "price_cents" in fields:
        events.append(price_changed(product_id, product.price_cents))
    if body.stock_delta:
        events.append(stock_changed(product_id, stock))
    await outbox.add(session, *events)
    invalidate_products(session, [product_id])
    log.info(
        "product.updated",
        product_id=str(product_id),
        fields=sorted(fields),
        stock_delta=body.stock_delta,
    )
    return ProductRead.from_row(*row)


class UnknownUpload(Unprocessable):
    """An upload id in the body that is not the caller's: a 422, as for an order's unknown
    products (the URL's product exists), the same for another user's upload as for none."""

    def __init__(self) -> None:
        super().__init__("No such upload of yours.")


async def attach_image(
    session: AsyncSession, jobs: AfterCommitJobs, user: User, product_id: UUID, upload_id: UUID
) -> ProductRead:
    """Show the caller's completed product-image upload on the product; the thumbnail job
    renders it after the commit, and until it has, the product has no images."""
    # The caller's own uploads only: another user's upload is not found (BOLA).
    upload = await UploadRepository(session).get_for_owner(upload_id, user.id)
    if upload is None:
        raise UnknownUpload()
    if upload.purpose is not UploadPurpose.product_image:
        raise Unprocessable(f"A {upload.purpose.value} upload cannot be a product image.")
    if upload.status not in (UploadStatus.uploaded, UploadStatus.processed) or upload.etag is None:
        raise Conflict(
            "The upload is not complete: POST /uploads/{id}/complete first.",
            upload_status=upload.status.value,
        )
    products = ProductRepository(session)
    if await products.set_image(product_id, upload.id) is None:
        raise ProductNotFound()
    jobs.enqueue(
        RENDER_IMAGE, product_id=str(product_id), upload_id=str(upload.id), etag=upload.etag
    )
    invalidate_products(session, [product_id])
    log.info("product.image_attached", product_id=str(product_id), upload_id=str(upload.id))
    row = await products.get_with_stock(product_id)
    assert row is not None  # updated in this transaction
    return ProductRead.from_row(*row)


async def get_product(session: AsyncSession, cache: Cache, product_id: UUID) -> ProductRead:
    async def load() -> ProductRead | None:
        row = await ProductRepository(session).get_with_stock(product_id)
        return ProductRead.from_row(*row) if row else None

    product = await cache.get_or_load(PRODUCTS, str(product_id), load)
    if product is None:
        raise ProductNotFound()
    return product


async def list_products(
    session: AsyncSession,
    cache: Cache,
    *,
    cursor: str | None,
    limit: int,
    attributes: Mapping[str, Any] | None,
) -> Cached:
    """The page as its JSON body and ETag: served from the cache as stored bytes."""
    try:
        after = CATALOG_ORDER.decode(cursor) if cursor else None
    except InvalidCursor as exc:
        raise Unprocessable("The cursor is not valid for this listing.") from exc

    async def load() -> Page[ProductRead]:
        rows = await ProductRepository(session).list_newest(
            after=after, limit=limit, attributes=attributes
        )
        items, next_cursor = CATALOG_ORDER.page(rows, limit, catalog_key)
        return Page[ProductRead](
            items=[ProductRead.from_row(*row) for row in items], next_cursor=next_cursor
        )

    # One entry per distinct request: the filter in canonical form, so key order in the
    # query string does not split the cache.
    key = orjson.dumps([cursor, limit, attributes], option=orjson.OPT_SORT_KEYS).decode()
    page = await cache.get_or_load_json(CATALOG_PAGES, key, load, scope=CATALOG_SCOPE)
    assert page is not None  # a listing always exists, if empty
    return page
