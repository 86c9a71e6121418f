from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, status

from {{ cookiecutter.project_slug }}.auth.dependencies import StaffUser
from {{ cookiecutter.project_slug }}.exceptions import Unprocessable
from {{ cookiecutter.project_slug }}.patterns.keyset import Page
from {{ cookiecutter.project_slug }}.postgres import DbSession
from {{ cookiecutter.project_slug }}.products import service
from {{ cookiecutter.project_slug }}.products.schemas import ProductCreate, ProductRead, ProductUpdate

router = APIRouter(prefix="/products", tags=["products"])

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def _attribute_filter(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable("attributes must be a JSON object.") from exc
    if not isinstance(value, dict):
        raise Unprocessable("attributes must be a JSON object.")
    return value


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_product(body: ProductCreate, session: DbSession, _: StaffUser) -> ProductRead:
    return await service.create_product(session, body)


@router.patch("/{product_id}")
async def update_product(
    product_id: UUID, body: ProductUpdate, session: DbSession, _: StaffUser
) -> ProductRead:
    return await service.update_product(session, product_id, body)


@router.get("/{product_id}")
async def get_product(product_id: UUID, session: DbSession) -> ProductRead:
    return await service.get_product(session, product_id)


@router.get("")
async def list_products(
    session: DbSession,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    attributes: Annotated[
        str | None,
        Query(
            max_length=1000,
            description="Only products whose attributes contain this JSON object, "
            'e.g. {"color":"red"}.',
        ),
    ] = None,
) -> Page[ProductRead]:
    return await service.list_products(
        session, cursor=cursor, limit=limit, attributes=_attribute_filter(attributes)
    )
