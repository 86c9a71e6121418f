from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Path, Query, Request, Response, status

from {{ cookiecutter.project_slug }}.auth.dependencies import StaffUser
from {{ cookiecutter.project_slug }}.caching import AppCache
from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotFound, Unprocessable
from {{ cookiecutter.project_slug }}.patterns.http_cache import (
    CachePolicy,
    add_surrogate_keys,
    cache_policy,
    conditional,
)
from {{ cookiecutter.project_slug }}.patterns.keyset import Page
from {{ cookiecutter.project_slug }}.patterns.problem import problems
from {{ cookiecutter.project_slug }}.patterns.storage import ObjectMissing
from {{ cookiecutter.project_slug }}.patterns.strict_input import contains_nul
from {{ cookiecutter.project_slug }}.postgres import DbSession, Jobs
from {{ cookiecutter.project_slug }}.products import service
from {{ cookiecutter.project_slug }}.products.schemas import (
    ProductCreate,
    ProductImageSet,
    ProductRead,
    ProductUpdate,
)
from {{ cookiecutter.project_slug }}.products.service import ProductNotFound
from {{ cookiecutter.project_slug }}.storage import Storage

router = APIRouter(prefix="/products", tags=["products"])
media_router = APIRouter(prefix="/media", tags=["media"])

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

# A rendition's bytes never change under its content-addressed key: every cache may keep it for
# a year, and browsers do not revalidate it.
IMMUTABLE = CachePolicy.public(max_age=31_536_000, s_maxage=31_536_000, immutable=True)


class ImageNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such image.")


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


@router.put(
    "/{product_id}/image",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {"description": "Attached; `images` fill in once the thumbnails are rendered."},
        **problems(ProductNotFound, Conflict, Unprocessable),
    },
)
async def attach_product_image(
    product_id: UUID, body: ProductImageSet, session: DbSession, jobs: Jobs, user: StaffUser
) -> ProductRead:
    return await service.attach_image(session, jobs, user, product_id, body.upload_id)


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


@media_router.get(
    "/images/{digest}/{size}.webp",
    dependencies=[cache_policy(IMMUTABLE)],
    response_class=Response,
    responses={200: {"content": {"image/webp": {}}}, **problems(ImageNotFound)},
)
async def product_image(
    digest: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")],
    size: Annotated[int, Path(ge=16, le=4096)],
    storage: Storage,
) -> Response:
    """A rendition, from S3. The edge keeps it (a year, immutable), so the origin reads each
    key about once per edge; the bytes are the public thumbnail, never the private upload."""
    try:
        data = await storage.get_bytes(f"images/{digest}/{size}.webp")
    except ObjectMissing as exc:
        raise ImageNotFound() from exc
    return Response(data, media_type="image/webp")
