from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.project_slug }}.seed import DEMO_ORDERS, DEMO_PRODUCTS, seed_sample_data

COUNTS = """
SELECT (SELECT count(*) FROM products),
       (SELECT count(*) FROM orders o JOIN users u ON u.id = o.user_id
         WHERE u.email = 'demo@example.com'),
       (SELECT count(*) FROM orders o
         WHERE NOT EXISTS (SELECT FROM order_items i WHERE i.order_id = o.id)),
       (SELECT bool_and(is_staff) FROM users WHERE email = 'staff@example.com')
"""


async def test_sample_data_gives_the_demo_user_products_and_orders_once(
    committed_engine: AsyncEngine, committed_database_url: str
) -> None:
    await seed_sample_data(committed_database_url)
    await seed_sample_data(committed_database_url)  # `make dev` runs it on every start

    async with committed_engine.connect() as connection:
        products, demo_orders, orders_without_items, staff = (
            await connection.execute(text(COUNTS))
        ).one()
        stock = (await connection.execute(text("SELECT sum(stock) FROM inventory"))).scalar_one()

    assert (products, demo_orders, orders_without_items, staff) == (
        len(DEMO_PRODUCTS),
        len(DEMO_ORDERS),
        0,
        True,
    )
    sold = sum(quantity for lines in DEMO_ORDERS for _, quantity in lines)
    assert stock == sum(product[-1] for product in DEMO_PRODUCTS) - sold
