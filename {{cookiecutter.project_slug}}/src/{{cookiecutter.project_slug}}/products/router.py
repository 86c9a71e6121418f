from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request, Response, status

from {{ cookiecutter.project_slug }}.auth.dependencies import StaffUser
from {{ cookiecutter.project_slug }}.caching import AppCache
from {{ cookiecutter.project_slug }}.exceptions import Conflict, Unprocessable
from {{ cookiecutter.project_slug }}.patterns.http_cache import (
    CachePolicy,
    add_surrogate_keys,
    cache_policy,
    conditional,
)
from {{ cookiecutter.project_slug }}.patterns.keyset import Page
from {{ cookiecutter.project_slug }}.patterns.problem import problems
from {{ cookiecutter.project_slug }}.patterns.strict_input import contains_nul
from {{ cookiecutter.project_slug }}.postgres import DbSession
from {{ cookiecutter.project_slug }}.products import service
from {{ cookiecutter.project_slug }}.products.schemas import ProductCreate, ProductRead, ProductUpdate
from {{ cookiecutter.project_slug }}.products.service import ProductNotFound

router = APIRouter(prefix="/products", tags=["products"])

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100

# Public and the same for everyone: browsers keep it briefly (they cannot be purged), the edge
# for five minutes (it is purged on every write), and both serve it stale for a minute while
# they refetch; the edge serves it up to an hour stale while the origin fails (stale-if-error,
# deploy/varnish/default.vcl). Everything else in the API is private, no-store
# (patterns/http_cache.py).
CATALOG = CachePolicy.public(
    max_age=10, s_maxage=300, stale_while_revalidate=60, stale_if_error=3600
)


def _attribute_filter(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable("attributes must be a JSON object.") from exc
    if not isinstance(value, dict):
        raise Unprocessable("attributes must be a JSON object.")
    if contains_nul(value):
        raise Unprocessable("attributes must not contain NUL (\\u0000) characters.")
    return value


@router.post("", status_code=status.HTTP_201_CREATED, responses=problems(Conflict))
async def create_product(body: ProductCreate, session: DbSession, _: StaffUser) -> ProductRead:
    return await service.create_product(session, body)


@router.patch("/{product_id}", responses=problems(ProductNotFound, Conflict))
async def update_product(
    product_id: UUID, body: ProductUpdate, session: DbSession, _: StaffUser
) -> ProductRead:
    return await service.update_product(session, product_id, body)


@router.get(
    "/{product_id}", dependencies=[cache_policy(CATALOG)], responses=problems(ProductNotFound)
)
async def get_product(
    product_id: UUID, request: Request, session: DbSession, cache: AppCache
) -> ProductRead:
    product = await service.get_product(session, cache, product_id)
    add_surrogate_keys(request, service.product_key(product_id))
    # A revalidation is answered from the versions, before the body is rendered.
    conditional(request, etag=service.product_etag(product))
    return product


@router.get("", dependencies=[cache_policy(CATALOG)], response_model=Page[ProductRead])
async def list_products(
    request: Request,
    session: DbSession,
    cache: AppCache,
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
) -> Response:
    page = await service.list_products(
        session, cache, cursor=cursor, limit=limit, attributes=_attribute_filter(attributes)
    )
    add_surrogate_keys(request, service.CATALOG_KEY)
    # The ETag was computed over these bytes when they were stored; a match is a 304 now.
    conditional(request, etag=page.etag)
    return Response(page.body, media_type="application/json")
