"""Rows for tests, inserted directly: fast, and independent of the endpoints under test."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import Inventory, Product, User

# Not an Argon2 hash, so nobody can log in with a password: tests mint tokens instead.
UNUSABLE_PASSWORD_HASH = "!"


@dataclass(frozen=True)
class Caller:
    id: UUID
    headers: dict[str, str]


def auth_headers(user_id: UUID, settings: Settings) -> dict[str, str]:
    token, _ = create_access_token(user_id, settings)
    return {"Authorization": f"Bearer {token}"}


async def make_user(session: AsyncSession, settings: Settings, *, staff: bool = False) -> Caller:
    user = User(
        email=f"user-{secrets.token_hex(6)}@example.com",
        password_hash=UNUSABLE_PASSWORD_HASH,
        is_staff=staff,
    )
    session.add(user)
    await session.flush()
    return Caller(id=user.id, headers=auth_headers(user.id, settings))


async def make_product(
    session: AsyncSession,
    *,
    price_cents: int = 1000,
    stock: int = 10,
    attributes: dict[str, Any] | None = None,
) -> Product:
    product = Product(
        sku=f"SKU-{secrets.token_hex(6)}",
        name="A product",
        price_cents=price_cents,
        attributes=attributes or {},
    )
    session.add(product)
    await session.flush()
    session.add(Inventory(product_id=product.id, stock=stock))
    await session.flush()
    return product


async def insert_users(connection: AsyncConnection, count: int) -> list[UUID]:
    """``count`` users in one statement (the load proofs need hundreds)."""
    result = await connection.execute(
        text(
            "INSERT INTO users (id, email, password_hash)"
            " SELECT gen_random_uuid(), 'buyer-' || g || '-' || :tag || '@example.com', '!'"
            " FROM generate_series(1, :count) AS g RETURNING id"
        ),
        {"count": count, "tag": secrets.token_hex(4)},
    )
    return list(result.scalars())


async def insert_products(
    connection: AsyncConnection, stocks: Sequence[int], *, price_cents: int = 500
) -> list[UUID]:
    """One product per entry of ``stocks``, with that much stock."""
    ids = []
    for stock in stocks:
        product_id = (
            await connection.execute(
                text(
                    "INSERT INTO products (id, sku, name, price_cents)"
                    " VALUES (gen_random_uuid(), :sku, 'Contended', :price) RETURNING id"
                ),
                {"sku": f"LOAD-{secrets.token_hex(6)}", "price": price_cents},
            )
        ).scalar_one()
        await connection.execute(
            text("INSERT INTO inventory (product_id, stock) VALUES (:id, :stock)"),
            {"id": product_id, "stock": stock},
        )
        ids.append(product_id)
    return ids
