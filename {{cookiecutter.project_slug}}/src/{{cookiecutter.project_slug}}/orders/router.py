from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Response, status

from {{ cookiecutter.project_slug }}.auth.dependencies import CurrentUser, user_rate_limit
from {{ cookiecutter.project_slug }}.caching import AppCache
from {{ cookiecutter.project_slug }}.orders import service
from {{ cookiecutter.project_slug }}.orders.schemas import OrderCreate, OrderRead, OrderSummary
from {{ cookiecutter.project_slug }}.patterns.http_cache import PRIVATE_NO_STORE, cache_policy
from {{ cookiecutter.project_slug }}.patterns.keyset import Page
from {{ cookiecutter.project_slug }}.postgres import DbSession, Jobs

# A user's orders are theirs alone: no cache between them and the API may keep a copy (this is
# also the default for any route without a policy; said here because it matters here).
router = APIRouter(prefix="/orders", tags=["orders"], dependencies=[cache_policy(PRIVATE_NO_STORE)])

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique string per intended order (a UUID is fine). A retry with the "
        "same key and body returns the original order instead of placing a second one.",
    ),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(user_rate_limit(lambda limits: limits.orders))],
    responses={
        409: {"description": "Not enough stock; nothing was written."},
        422: {"description": "Unknown product, or Idempotency-Key reused with another body."},
    },
)
async def place_order(
    body: OrderCreate,
    session: DbSession,
    jobs: Jobs,
    user: CurrentUser,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> OrderRead:
    placed = await service.place_order(session, jobs, user, body, idempotency_key)
    if placed.replayed:
        # Same status and body as the first response; the header tells a curious client.
        response.headers["Idempotent-Replayed"] = "true"
    return OrderRead.model_validate(placed.order)


@router.get("", response_model=Page[OrderSummary])
async def list_orders(
    session: DbSession,
    cache: AppCache,
    user: CurrentUser,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
) -> Response:
    # The cached bytes as they are: validated and rendered once, when the page was stored.
    page = await service.list_orders(session, cache, user, cursor=cursor, limit=limit)
    return Response(page.body, media_type="application/json")


@router.get("/{order_id}", responses={404: {"description": "No such order *of yours*."}})
async def get_order(order_id: UUID, session: DbSession, user: CurrentUser) -> OrderRead:
    return OrderRead.model_validate(await service.get_order(session, user, order_id))
