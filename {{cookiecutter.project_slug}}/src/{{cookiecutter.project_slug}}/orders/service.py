"""Placing and reading orders.

Placing an order is one transaction (the request's): insert the order row (where the
Idempotency-Key's unique index decides about retries), insert its lines, then take each
product's stock with one conditional UPDATE, in product-id order. Any failure raises, and the
request rolls the whole transaction back: an order never exists without its lines or its stock.

The confirmation job is enqueued before the stock is taken, into the request's after-commit
buffer (patterns/after_commit.py): it leaves only if the whole transaction commits, so a
rejected order (not enough stock) never confirms anything.

Stock is taken last on purpose: the UPDATE locks the product's inventory row until the commit,
and every other buyer of that product queues behind the lock. With nothing left to do between
the UPDATE and the COMMIT, the queue moves as fast as Postgres can commit.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar
from uuid import UUID

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.caching import invalidate_after_commit
from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotFound, Unprocessable
from {{ cookiecutter.project_slug }}.models import Order, OrderStatus, User
from {{ cookiecutter.project_slug }}.orders.repository import (
    NEWEST_FIRST,
    OrderRepository,
    newest_first_key,
)
from {{ cookiecutter.project_slug }}.orders.schemas import OrderCreate, OrderLine, OrderSummary
from {{ cookiecutter.project_slug }}.orders.tasks import send_order_confirmation
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.after_commit import AfterCommitJobs
from {{ cookiecutter.project_slug }}.patterns.cache import Cache, Cached, CacheRegion
from {{ cookiecutter.project_slug }}.patterns.keyset import InvalidCursor, Page
from {{ cookiecutter.project_slug }}.products.repository import (
    InventoryRepository,
    ProductRepository,
)
from {{ cookiecutter.project_slug }}.products.service import invalidate_products
from {{ cookiecutter.project_slug }}.pubsub.events import (
    ORDER_PAID,
    ORDER_PLACED,
    order_event,
    stock_changed,
)

log = structlog.get_logger(__name__)

# "My orders" is the seed's hot query: cached per user in Redis (never at the edge: it is
# private), each user's pages one scope that their next order moves on.
ORDER_SUMMARIES = CacheRegion("order-summaries", Page[OrderSummary], ttl=60, stale_ttl=0)


def summaries_scope(user_id: UUID) -> str:
    return f"orders-of:{user_id}"


class InsufficientStock(Conflict):
    title: ClassVar[str] = "Insufficient Stock"

    def __init__(self, product_id: UUID, requested: int) -> None:
        super().__init__(
            "Not enough stock for this order; nothing was charged or reserved.",
            product_id=str(product_id),
            requested=requested,
        )


class UnknownProducts(Unprocessable):
    def __init__(self, product_ids: list[UUID]) -> None:
        super().__init__(
            "The order names products that do not exist.",
            product_ids=[str(product_id) for product_id in product_ids],
        )


class IdempotencyKeyReused(Unprocessable):
    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was already used with a different request body; "
            "use a new key for a new order."
        )


class OrderNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No order with this id.")


@dataclass(frozen=True)
class PlacedOrder:
    order: Order
    # True when the Idempotency-Key matched an earlier request: nothing new was written.
    replayed: bool


def merge_lines(lines: list[OrderLine]) -> list[tuple[UUID, int]]:
    """One line per product, sorted by product id.

    The sort is the lock order: every transaction takes inventory row locks in the same
    order, so two orders over overlapping products wait for each other instead of deadlocking.
    """
    quantities: Counter[UUID] = Counter()
    for line in lines:
        quantities[line.product_id] += line.quantity
    return sorted(quantities.items())


def fingerprint(lines: list[tuple[UUID, int]]) -> str:
    """The request as the service understands it: same products and quantities, same
    fingerprint, whatever the order or splitting of the lines in the body."""
    canonical = orjson.dumps([[str(product_id), quantity] for product_id, quantity in lines])
    return hashlib.sha256(canonical).hexdigest()


async def place_order(
    session: AsyncSession,
    jobs: AfterCommitJobs,
    user: User,
    body: OrderCreate,
    idempotency_key: str | None,
) -> PlacedOrder:
    lines = merge_lines(body.items)
    request_fingerprint = fingerprint(lines) if idempotency_key is not None else None

    # Prices are read once and captured on the lines, so the total and the lines agree even
    # if a price changes while the order is placed.
    prices = await ProductRepository(session).prices([product_id for product_id, _ in lines])
    unknown = [product_id for product_id, _ in lines if product_id not in prices]
    if unknown:
        raise UnknownProducts(unknown)

    orders = OrderRepository(session)
    order = await orders.insert(
        user_id=user.id,
        total_cents=sum(prices[product_id] * quantity for product_id, quantity in lines),
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
    )
    if order is None:
        assert idempotency_key is not None  # only a keyed insert can conflict
        return await _replay(orders, user, idempotency_key, request_fingerprint)

    await orders.add_items(order, [(p, q, prices[p]) for p, q in lines])
    # After the commit: the stock shown with each product changed, and so did this user's list.
    invalidate_products(session, [product_id for product_id, _ in lines])
    invalidate_after_commit(session, scopes=[summaries_scope(user.id)])
    # Buffered, not sent: it leaves after the commit, or never if the stock below runs out.
    send_order_confirmation.enqueue(jobs, order_id=str(order.id))

    inventory = InventoryRepository(session)
    left: list[tuple[UUID, int]] = []
    for product_id, quantity in lines:
        stock = await inventory.take(product_id, quantity)
        if stock is None:
            log.info("order.rejected", reason="insufficient_stock", product_id=str(product_id))
            raise InsufficientStock(product_id, quantity)
        left.append((product_id, stock))
    # In the same transaction, after the inventory locks: each product's events enter the
    # outbox in commit order (patterns/outbox.py).
    await outbox.add(
        session,
        order_event(
            ORDER_PLACED,
            order.id,
            user.id,
            status=OrderStatus.pending.value,
            total_cents=order.total_cents,
        ),
        *(stock_changed(product_id, stock) for product_id, stock in left),
    )
    log.info(
        "order.placed",
        order_id=str(order.id),
        user_id=str(user.id),
        lines=len(lines),
        total_cents=order.total_cents,
    )
    return PlacedOrder(order=order, replayed=False)


async def _replay(
    orders: OrderRepository, user: User, key: str, request_fingerprint: str | None
) -> PlacedOrder:
    existing = await orders.get_by_idempotency_key(user.id, key)
    if existing is None:  # the winner's order was deleted in between: rare, and retryable
        raise Conflict("The order placed with this Idempotency-Key is gone; retry.")
    if existing.request_fingerprint != request_fingerprint:
        raise IdempotencyKeyReused()
    await orders.load_items([existing])
    log.info("order.replayed", order_id=str(existing.id), user_id=str(user.id))
    return PlacedOrder(order=existing, replayed=True)


async def mark_order_paid(session: AsyncSession, order_id: UUID, amount_cents: int) -> bool:
    """The one place an order becomes paid (``pending -> paid``, conditional). Whatever must
    happen when an order is paid (an outbox event, a receipt) hooks in here, in the same
    transaction. False: the order was not payable (not pending, or another amount)."""
    user_id = await OrderRepository(session).mark_paid(order_id, amount_cents)
    if user_id is None:
        log.info("order.not_payable", order_id=str(order_id))
        return False
    invalidate_after_commit(session, scopes=[summaries_scope(user_id)])
    # Same transaction as the status change: the revenue roll-up and SSE see every payment.
    await outbox.add(
        session,
        order_event(
            ORDER_PAID,
            order_id,
            user_id,
            status=OrderStatus.paid.value,
            total_cents=amount_cents,
        ),
    )
    log.info("order.paid", order_id=str(order_id), amount_cents=amount_cents)
    return True


async def get_order(session: AsyncSession, user: User, order_id: UUID) -> Order:
    orders = OrderRepository(session)
    order = await orders.get_for_user(order_id, user.id)
    if order is None:
        raise OrderNotFound()
    await orders.load_items([order])
    return order


async def list_orders(
    session: AsyncSession, cache: Cache, user: User, *, cursor: str | None, limit: int
) -> Cached:
    """The page as its JSON body: served from the cache as stored bytes."""
    try:
        after = NEWEST_FIRST.decode(cursor) if cursor else None
    except InvalidCursor as exc:
        raise Unprocessable("The cursor is not valid for this listing.") from exc

    async def load() -> Page[OrderSummary]:
        rows = await OrderRepository(session).list_newest(user.id, after=after, limit=limit)
        items, next_cursor = NEWEST_FIRST.page(rows, limit, newest_first_key)
        return Page[OrderSummary](
            items=[OrderSummary.model_validate(order) for order in items], next_cursor=next_cursor
        )

    page = await cache.get_or_load_json(
        ORDER_SUMMARIES, f"{cursor}:{limit}", load, scope=summaries_scope(user.id)
    )
    assert page is not None  # a listing always exists, if empty
    return page
