"""The migrated schema keeps its promises: named constraints, indexed foreign keys, and rules
the database itself enforces."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

PREFIXES = {"p": "pk_", "u": "uq_", "f": "fk_", "c": "ck_"}


async def test_every_constraint_and_index_has_a_conventional_name(
    connection: AsyncConnection,
) -> None:
    constraints = await connection.execute(
        text(
            "SELECT conrelid::regclass::text, conname, contype::text FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u', 'f', 'c')"
            " AND conrelid <> 'alembic_version'::regclass"
        )
    )
    for table, name, kind in constraints:
        assert name.startswith(PREFIXES[kind] + table), f"{table}: {name}"
    indexes = await connection.execute(
        text(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version'"
        )
    )
    for table, name in indexes:
        assert name.startswith((f"ix_{table}", f"uq_{table}", f"pk_{table}")), f"{table}: {name}"


async def test_every_foreign_key_leads_an_index(connection: AsyncConnection) -> None:
    # Without one, every lookup by the key (and every delete of a referenced row) scans.
    unindexed = await connection.execute(
        text(
            """
            SELECT c.conrelid::regclass::text, c.conname
            FROM pg_constraint c
            WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
              AND NOT EXISTS (
                SELECT FROM pg_index i
                WHERE i.indrelid = c.conrelid AND i.indpred IS NULL
                  AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey
              )
            """
        )
    )
    assert unindexed.all() == []


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("UPDATE inventory SET stock = -1", "ck_inventory_stock_non_negative"),
        ("UPDATE order_items SET quantity = 0", "ck_order_items_quantity_positive"),
        ("UPDATE products SET price_cents = -1", "ck_products_price_cents_non_negative"),
        (
            "UPDATE orders SET idempotency_key = 'k', request_fingerprint = NULL",
            "ck_orders_idempotency_key_has_fingerprint",
        ),
    ],
)
async def test_the_database_refuses_impossible_rows(
    connection: AsyncConnection, statement: str, constraint: str
) -> None:
    await connection.execute(
        text(
            """
            WITH u AS (INSERT INTO users (id, email, password_hash)
                       VALUES (gen_random_uuid(), 'rules@example.com', '!') RETURNING id),
                 p AS (INSERT INTO products (id, sku, name, price_cents)
                       VALUES (gen_random_uuid(), 'RULES', 'Rules', 100) RETURNING id),
                 i AS (INSERT INTO inventory (product_id, stock) SELECT id, 1 FROM p),
                 o AS (INSERT INTO orders (id, user_id, total_cents)
                       SELECT gen_random_uuid(), u.id, 100 FROM u RETURNING id)
            INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
            SELECT o.id, p.id, 1, 100 FROM o, p
            """
        )
    )
    savepoint = await connection.begin_nested()
    with pytest.raises(IntegrityError, match=constraint):
        await connection.execute(text(statement))
    await savepoint.rollback()
