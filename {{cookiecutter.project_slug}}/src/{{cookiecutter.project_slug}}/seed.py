"""Sample data. :func:`seed_sample_data` gives a fresh ``make dev`` stack something to show and
is safe to run repeatedly; :func:`seed_volume` fills a scratch database with production-sized
tables (the plan-guard tests, the benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine

from {{ cookiecutter.project_slug }}.auth.repository import UserRepository
from {{ cookiecutter.project_slug }}.auth.security import hash_password
from {{ cookiecutter.project_slug }}.config import DatabaseSettings, Environment
from {{ cookiecutter.project_slug }}.models import Order, Product, User
from {{ cookiecutter.project_slug }}.orders import service as orders
from {{ cookiecutter.project_slug }}.orders.schemas import OrderCreate, OrderLine
from {{ cookiecutter.project_slug }}.patterns.after_commit import AfterCommitJobs
from {{ cookiecutter.project_slug }}.products.repository import ProductRepository

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-123"  # noqa: S105  # published on purpose: local sample data
STAFF_EMAIL = "staff@example.com"

# (sku, name, price in cents, attributes, stock)
DEMO_PRODUCTS = [
    ("TEE-RED-M", "T-shirt, red, M", 1999, {"color": "red", "size": "m"}, 120),
    ("TEE-BLK-L", "T-shirt, black, L", 1999, {"color": "black", "size": "l"}, 80),
    ("MUG-WHT", "Mug, white", 1250, {"color": "white", "material": "ceramic"}, 40),
    ("CAP-BLU", "Cap, blue", 1500, {"color": "blue", "size": "one"}, 25),
    ("POSTER-A2", "Poster A2", 900, {"material": "paper"}, 3),
]
# Orders placed for the demo user on a fresh database: (sku, quantity) per order.
DEMO_ORDERS = [
    [("TEE-RED-M", 1), ("MUG-WHT", 2)],
    [("CAP-BLU", 1)],
    [("TEE-BLK-L", 2), ("POSTER-A2", 1)],
]

log = structlog.get_logger(__name__)

# Where the published demo and staff passwords may exist.
SEEDABLE = frozenset({Environment.development, Environment.test})


class SeedRefused(RuntimeError):
    pass


class SeedSettings(DatabaseSettings):
    environment: Environment = Environment.development


async def seed_sample_data(
    database_url: str, *, environment: Environment = Environment.development
) -> None:
    """Create the demo and staff accounts (their password is published: DEMO_PASSWORD), the
    demo products and orders. Refused outside development and test, where a published staff
    password would be a way in."""
    if environment not in SEEDABLE:
        raise SeedRefused(
            f"seed creates accounts with a published password; refused when "
            f"ENVIRONMENT={environment.value} (allowed: development, test)"
        )
    engine = create_async_engine(database_url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            users = UserRepository(session)
            password_hash = await hash_password(DEMO_PASSWORD)
            created = await users.insert_if_absent(DEMO_EMAIL, password_hash)
            # A staff account (same password) for trying the catalog's write endpoints.
            if await users.insert_if_absent(STAFF_EMAIL, password_hash) is not None:
                await session.execute(
                    update(User).where(User.email == STAFF_EMAIL).values(is_staff=True)
                )
            products = ProductRepository(session)
            products_created = 0
            for sku, name, price, attributes, stock in DEMO_PRODUCTS:
                product = await products.insert_if_absent(
                    sku=sku, name=name, price_cents=price, attributes=attributes
                )
                if product is not None:
                    await products.create_inventory(product.id, stock)
                    products_created += 1
            orders_placed = await _place_demo_orders(session)
            await session.commit()
        log.info(
            "seed.done",
            demo_user_created=created is not None,
            products_created=products_created,
            orders_placed=orders_placed,
        )
    finally:
        await engine.dispose()


async def _place_demo_orders(session: AsyncSession) -> int:
    """Place the demo orders through the real service, once: not when the user has any."""
    demo = await UserRepository(session).get_by_email(DEMO_EMAIL)
    assert demo is not None
    if await session.scalar(select(Order.id).where(Order.user_id == demo.id).limit(1)):
        return 0
    skus = {sku for lines in DEMO_ORDERS for sku, _ in lines}
    rows = await session.execute(select(Product.sku, Product.id).where(Product.sku.in_(skus)))
    ids = dict(rows.all())
    # Sample orders have nobody to confirm them to: their jobs are buffered and dropped.
    confirm_nothing = AfterCommitJobs(lambda job, headers: None)
    for lines in DEMO_ORDERS:
        body = OrderCreate(items=[OrderLine(product_id=ids[sku], quantity=q) for sku, q in lines])
        await orders.place_order(session, confirm_nothing, demo, body, idempotency_key=None)
    return len(DEMO_ORDERS)


@dataclass(frozen=True)
class Volume:
    users: int
    orders: int
    products: int


def _uuid7(timestamp: str) -> str:
    """SQL for a version-7 UUID at ``timestamp`` (Postgres before 18 has no uuidv7()): the
    48-bit millisecond prefix keeps ids time-ordered, as the application's ids are."""
    return (
        f"(lpad(to_hex(floor(extract(epoch FROM {timestamp}) * 1000)::bigint), 12, '0')"
        " || '7' || substr(md5(random()::text), 1, 3)"
        " || substr('89ab', 1 + floor(random() * 4)::int, 1)"
        " || substr(md5(random()::text), 1, 15))::uuid"
    )


# Set-based: each table is one INSERT ... SELECT over generate_series, so a million rows take
# seconds, not the minutes a row-by-row loop through the ORM would.
_VOLUME_USERS = f"""
INSERT INTO users (id, email, password_hash, created_at, updated_at)
SELECT {_uuid7("t.at")}, 'volume-' || g || '@example.invalid', '!', t.at, t.at
FROM generate_series(1, :users) AS g,
     LATERAL (SELECT now() - interval '3 years' + g * interval '1 minute' AS at) AS t
"""  # noqa: S608  # no user input: a fixed expression

_VOLUME_PRODUCTS = f"""
WITH p AS MATERIALIZED (
    SELECT {_uuid7("t.at")} AS id, g, t.at
    FROM generate_series(1, :products) AS g,
         LATERAL (SELECT now() - interval '3 years' + g * interval '1 hour' AS at) AS t
), inserted AS (
    INSERT INTO products (id, sku, name, price_cents, attributes, created_at, updated_at)
    SELECT id, 'VOL-' || g, 'Volume product ' || g, 100 + (g * 7919) % 100000,
           jsonb_build_object(
               'color',
               (ARRAY['red','green','blue','black','white','yellow','purple','grey'])[1 + g % 8],
               'size', (ARRAY['xs','s','m','l','xl'])[1 + g % 5],
               'material',
               (ARRAY['cotton','wool','linen','ceramic','paper','steel','oak'])[1 + g % 7],
               'batch', g % 997),
           at, at
    FROM p
)
INSERT INTO inventory (product_id, stock) SELECT id, 1000 FROM p
"""  # noqa: S608  # no user input: a fixed expression

# Each order has one line; orders are inserted in time order, as production appends them.
# Statuses: the last day's orders are still pending (the scheduler's queue), 5% cancelled.
_VOLUME_ORDERS = f"""
WITH u AS (SELECT array_agg(id) AS ids, count(*)::int AS n FROM users),
     p AS (SELECT array_agg(id ORDER BY id) AS ids, array_agg(price_cents ORDER BY id) AS prices,
                  count(*)::int AS n FROM products),
     source AS MATERIALIZED (
        SELECT {_uuid7("o.at")} AS id, o.at, o.user_id, o.product_id, o.price, o.quantity
        FROM (
            SELECT now() - random() * interval '730 days' AS at,
                   u.ids[1 + floor(random() * u.n)::int] AS user_id,
                   p.ids[k] AS product_id, p.prices[k] AS price,
                   1 + floor(random() * 3)::int AS quantity
            FROM generate_series(1, :orders) AS g, u, p,
                 LATERAL (SELECT 1 + floor(random() * p.n)::int + g * 0 AS k) AS pick
        ) AS o
        ORDER BY o.at
     ),
     inserted AS (
        INSERT INTO orders (id, user_id, status, total_cents, created_at, updated_at)
        SELECT id, user_id,
               CASE WHEN at > now() - interval '1 day' THEN 'pending'
                    WHEN random() < 0.05 THEN 'cancelled'
                    ELSE 'paid' END::order_status,
               price * quantity, at, at
        FROM source
     )
INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
SELECT id, product_id, quantity, price FROM source
"""  # noqa: S608  # no user input: a fixed expression


async def seed_volume(connection: AsyncConnection, volume: Volume) -> None:
    """Insert ``volume`` rows into an empty, migrated database, then ANALYZE it.

    The caller commits. Users cannot log in (their password hash is not a hash).
    """
    await connection.execute(text(_VOLUME_USERS), {"users": volume.users})
    await connection.execute(text(_VOLUME_PRODUCTS), {"products": volume.products})
    await connection.execute(text(_VOLUME_ORDERS), {"orders": volume.orders})
    await connection.execute(text("ANALYZE"))
    log.info("seed.volume", users=volume.users, orders=volume.orders, products=volume.products)
