from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.project_slug }}.config import Environment
from {{ cookiecutter.project_slug }}.seed import DEMO_ORDERS, DEMO_PRODUCTS, SeedRefused, seed_sample_data

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


@pytest.mark.parametrize("environment", [Environment.production])
async def test_seed_refuses_outside_development_and_test(
    committed_engine: AsyncEngine, committed_database_url: str, environment: Environment
) -> None:
    # The staff account's password is published: outside development it would be a way in.
    with pytest.raises(SeedRefused, match="ENVIRONMENT=production"):
        await seed_sample_data(committed_database_url, environment=environment)
    async with committed_engine.connect() as connection:
        users = (await connection.execute(text("SELECT count(*) FROM users"))).scalar_one()
    assert users == 0


def test_the_seed_command_exits_with_a_message_in_production(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from {{ cookiecutter.project_slug }}.cli import main

    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["seed"]) == 2
    assert "published password" in capsys.readouterr().err
