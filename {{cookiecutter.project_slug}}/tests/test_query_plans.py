"""The plan guard: every hot query is served by an index, on a database the size of production.

A database of its own per worker is seeded with 200k orders (set-based SQL, seconds) and
ANALYZEd, so the planner chooses as it would in production. Every statement builder registered
with ``@hot_query`` is then EXPLAINed (custom and generic plan) and must not Seq Scan a large
table, nor Sort when it is paginated. The last tests prove the guard can fail: an unindexed
variant, a partial index that a bound parameter defeats, and the hot index dropped.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import ModuleType
from typing import Any
from uuid import UUID

import anyio.to_thread
import pytest
from sqlalchemy import NullPool, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head
from {{ cookiecutter.project_slug }}.models import Order, OrderStatus
from {{ cookiecutter.project_slug }}.orders import repository as orders
from {{ cookiecutter.project_slug }}.patterns import plan_guard
from {{ cookiecutter.project_slug }}.patterns.plan_guard import HotQuery, QueryPlanError
from {{ cookiecutter.project_slug }}.products import repository as products
from {{ cookiecutter.project_slug }}.reports import repository as reports
from {{ cookiecutter.project_slug }}.seed import Volume, seed_volume
from tests.conftest import drop_database, recreate_database, run_database_name

# 200k orders over 2k users (100 each, as at 1.2M over 10k users); a catalog of 100k products.
VOLUME = Volume(users=2_000, orders=200_000, products=100_000)


@dataclass(frozen=True)
class Seeded:
    """Real values from the seeded data, for the hot queries' parameters."""

    user_id: UUID
    order_id: UUID
    order_cursor: tuple[datetime, UUID]
    last_page_cursor: tuple[datetime, UUID]
    product_id: UUID
    product_cursor: tuple[datetime, UUID]


TODAY = datetime.combine(datetime.now(UTC).date(), time.min, tzinfo=UTC)

# Parameters for every registered hot query, as production would pass them: first pages and
# later pages, common and rare attribute filters.
SAMPLES: dict[str, list[Callable[[Seeded], dict[str, Any]]]] = {
    "orders.newest_for_user": [
        lambda s: {"user_id": s.user_id, "after": None, "limit": 50},
        lambda s: {"user_id": s.user_id, "after": s.order_cursor, "limit": 50},
        lambda s: {"user_id": s.user_id, "after": s.last_page_cursor, "limit": 50},
    ],
    "orders.get_for_user": [lambda s: {"order_id": s.order_id, "user_id": s.user_id}],
    "orders.items": [lambda s: {"order_ids": [s.order_id]}],
    "orders.by_idempotency_key": [lambda s: {"user_id": s.user_id, "key": "checkout-1"}],
    "orders.pending_oldest_first": [
        lambda s: {"placed_before": datetime.now(UTC), "limit": 100},
    ],
    "products.newest": [
        lambda s: {"after": None, "limit": 50},
        lambda s: {"after": s.product_cursor, "limit": 50},
    ],
    "products.newest_matching": [
        lambda s: {"attributes": {"color": "red"}, "after": None, "limit": 50},
        lambda s: {"attributes": {"color": "red", "batch": 5}, "after": None, "limit": 50},
        lambda s: {"attributes": {"size": "m"}, "after": s.product_cursor, "limit": 50},
    ],
    "products.get": [lambda s: {"product_id": s.product_id}],
    "products.prices": [lambda s: {"product_ids": [s.product_id]}],
    "inventory.take": [lambda s: {"product_id": s.product_id, "quantity": 1}],
    "inventory.adjust": [lambda s: {"product_id": s.product_id, "delta": -1}],
    # The sales report: a year of closed days from the roll-up, today from the orders, and
    # the one-off roll-up of closed days the roll-up lacks (a month of them).
    "reports.rolled_up_days": [lambda s: {"first": date(2025, 1, 1), "last": date(2025, 12, 31)}],
    "reports.paid_orders_by_day": [lambda s: {"start": TODAY, "end": TODAY + timedelta(days=1)}],
    "reports.roll_up_days": [
        lambda s: {"days": [date(2025, 3, 1) + timedelta(days=n) for n in range(31)]}
    ],
}

CASES = [
    pytest.param(name, index, id=f"{name}[{index}]")
    for name in sorted(plan_guard.registered())
    for index in range(len(SAMPLES.get(name, [])))
]


@pytest.fixture(scope="module")
async def planner_engine(worker_id: str) -> AsyncIterator[AsyncEngine]:
    name = run_database_name("plans", worker_id)
    url = await recreate_database(name)
    await anyio.to_thread.run_sync(upgrade_to_head, url)
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.begin() as connection:
        await seed_volume(connection, VOLUME)
    async with engine.connect() as connection:
        # As production's autovacuum would have: the visibility map lets index-only scans
        # skip the heap.
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM orders"))
    yield engine
    await engine.dispose()
    await drop_database(name)


@pytest.fixture(scope="module")
async def seeded(planner_engine: AsyncEngine) -> Seeded:
    async with AsyncSession(planner_engine) as c:
        # A user with more orders than one page, so the LIMIT really cuts.
        user_id = (
            await c.execute(
                text("SELECT user_id FROM orders GROUP BY 1 HAVING count(*) > 60 LIMIT 1")
            )
        ).scalar_one()
        newest = (await c.execute(orders.newest_for_user(user_id, after=None, limit=1000))).all()
        catalog = (await c.execute(products.newest_products(after=None, limit=50))).all()
    return Seeded(
        user_id=user_id,
        order_id=newest[0].id,
        order_cursor=(newest[49].created_at, newest[49].id),
        # A few orders from the end: Postgres may well collect and sort those few rows instead
        # of walking the index, and that must pass (an ordered path exists).
        last_page_cursor=(newest[-5].created_at, newest[-5].id),
        product_id=catalog[0][0].id,
        product_cursor=(catalog[-1][0].created_at, catalog[-1][0].id),
    )


@pytest.fixture
async def planner(planner_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with planner_engine.connect() as connection:
        yield connection
        await connection.rollback()


async def guard(connection: AsyncConnection, query: HotQuery, params: dict[str, Any]) -> None:
    await plan_guard.check_plan(connection, query.build(**params), forbid_sort=query.forbid_sort)


def test_the_seed_is_production_sized() -> None:
    assert VOLUME.orders >= 200_000


def test_every_hot_query_has_sample_parameters() -> None:
    # A new @hot_query without samples here fails this test, so it cannot dodge the guard.
    assert set(SAMPLES) == set(plan_guard.registered())


@pytest.mark.parametrize("module", [orders, products, reports], ids=lambda m: m.__name__)
def test_every_statement_builder_in_a_repository_is_guarded(module: ModuleType) -> None:
    # A new query builder that forgets @hot_query fails here, so it cannot dodge the guard.
    guarded = {query.build for query in plan_guard.registered().values()}
    builders = [
        function
        for _, function in inspect.getmembers(module, inspect.isfunction)
        if function.__module__ == module.__name__
        and re.match(
            r"(Select|Insert|Update|Delete)\b", str(function.__annotations__.get("return"))
        )
    ]
    assert builders
    assert [f.__name__ for f in builders if f not in guarded] == []


async def test_the_planner_sees_large_tables(planner: AsyncConnection) -> None:
    large = await plan_guard.large_tables(planner)
    assert {"orders", "order_items", "products", "inventory"} <= large


@pytest.mark.parametrize(("name", "index"), CASES)
async def test_hot_queries_are_served_by_indexes(
    planner: AsyncConnection, seeded: Seeded, name: str, index: int
) -> None:
    query = plan_guard.registered()[name]
    await guard(planner, query, SAMPLES[name][index](seeded))


async def test_the_hot_query_reads_one_page_of_the_index_and_no_more(
    planner: AsyncConnection, seeded: Seeded
) -> None:
    statement = orders.newest_for_user(seeded.user_id, after=None, limit=50)
    document = await plan_guard.explain_analyze(planner, statement)
    [scan] = [n for n in plan_guard.walk(document["Plan"]) if "Index Name" in n]
    assert scan["Index Name"] == "ix_orders_user_id_created_at_id"
    assert scan["Node Type"] == "Index Only Scan"
    # 51 index entries read (one page plus the next-page probe) of the user's 60+: every
    # listed column is in the index, so the heap is only visited for rows the visibility map
    # does not yet mark all-visible. That is 0 right after VACUUM on a quiet server; a
    # long-running transaction elsewhere on the same server can hold VACUUM back, so the bound
    # is "never more than the page", not 0.
    assert scan["Actual Rows"] == 51
    assert scan["Heap Fetches"] <= scan["Actual Rows"]


# --- the guard fails when it should ------------------------------------------------------


def unindexed_sort(user_id: UUID) -> Any:
    # "Biggest orders first": no index orders a user's orders by total.
    return (
        select(Order).where(Order.user_id == user_id).order_by(Order.total_cents.desc()).limit(50)
    )


def unindexed_filter(fingerprint: str) -> Any:
    # No index on request_fingerprint.
    return select(Order).where(Order.request_fingerprint == fingerprint).limit(50)


def bound_partial_predicate(placed_before: datetime) -> Any:
    # The scheduler's queue with the status bound instead of inlined: fine for the custom
    # plan, but the generic plan cannot use the partial index.
    return (
        select(Order.id)
        .where(Order.status == OrderStatus.pending, Order.created_at < placed_before)
        .order_by(Order.created_at)
        .limit(100)
    )


async def test_the_guard_catches_a_sort_on_a_paginated_query(
    planner: AsyncConnection, seeded: Seeded
) -> None:
    query = HotQuery("orders.biggest_first", unindexed_sort, forbid_sort=True)
    with pytest.raises(QueryPlanError, match="Sort"):
        await guard(planner, query, {"user_id": seeded.user_id})


async def test_the_guard_catches_a_scan_of_a_large_table(planner: AsyncConnection) -> None:
    query = HotQuery("orders.by_fingerprint", unindexed_filter, forbid_sort=False)
    with pytest.raises(QueryPlanError, match="Seq Scan on large table orders"):
        await guard(planner, query, {"fingerprint": "0" * 64})


async def test_the_guard_catches_a_partial_index_defeated_by_a_bound_parameter(
    planner: AsyncConnection,
) -> None:
    query = HotQuery("orders.pending_bound", bound_partial_predicate, forbid_sort=True)
    with pytest.raises(QueryPlanError, match="generic plan"):
        await guard(planner, query, {"placed_before": datetime.now(UTC)})


async def test_dropping_the_hot_index_fails_the_guard(
    planner: AsyncConnection, seeded: Seeded
) -> None:
    query = plan_guard.registered()["orders.newest_for_user"]
    params = SAMPLES["orders.newest_for_user"][0](seeded)
    # DDL is transactional: the index is gone for this transaction only (rolled back after).
    await planner.execute(text("DROP INDEX ix_orders_user_id_created_at_id"))
    with pytest.raises(QueryPlanError) as caught:
        await guard(planner, query, params)
    assert any("Sort" in problem or "Seq Scan" in problem for problem in caught.value.problems)
