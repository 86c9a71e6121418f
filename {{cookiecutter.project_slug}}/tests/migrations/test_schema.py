"""The migrated schema keeps its promises: it matches the models to the last index option,
names every constraint, indexes every foreign key, and enforces the rules itself."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import NullPool, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from {{ cookiecutter.project_slug }}.models import Base
from tests.conftest import drop_database, recreate_database, run_database_name

PREFIXES = {"p": "pk_", "u": "uq_", "f": "fk_", "c": "ck_"}

# Postgres's own rendering of every index, constraint and enum: two schemas that print the same
# here are the same, down to INCLUDE columns, operator classes and partial-index predicates
# (which Alembic's autogenerate comparison does not look at).
DEFINITIONS = """
SELECT 'index ' || indexname, indexdef FROM pg_indexes
 WHERE schemaname = 'public' AND tablename <> 'alembic_version'
UNION ALL
SELECT 'constraint ' || conname, conrelid::regclass::text || ': ' || pg_get_constraintdef(oid)
  FROM pg_constraint
 WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'alembic_version'
UNION ALL
SELECT 'enum ' || t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
  FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname
"""


@pytest.fixture(scope="module")
async def model_definitions(worker_id: str) -> AsyncIterator[dict[str, str]]:
    """The definitions of a schema built straight from the models: a reference to compare the
    migrations against, never a schema the app runs on."""
    name = run_database_name("models", worker_id)
    engine = create_async_engine(await recreate_database(name), poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
            yield dict((await connection.execute(text(DEFINITIONS))).all())
    finally:
        await engine.dispose()
        await drop_database(name)


async def test_migrations_build_exactly_the_indexes_and_constraints_of_the_models(
    connection: AsyncConnection, model_definitions: dict[str, str]
) -> None:
    migrated: dict[str, str] = dict((await connection.execute(text(DEFINITIONS))).all())
    assert migrated == model_definitions


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
