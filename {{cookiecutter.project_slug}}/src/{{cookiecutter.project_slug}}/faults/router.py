"""Routes that fail on purpose, so the proofs can send poison through the real gateway.

Mounted by the app factory only when ``ENVIRONMENT=test`` (never in development or
production): the topology proofs start their stack with that setting.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import text

from {{ cookiecutter.project_slug }}.postgres import DbSession

router = APIRouter(prefix="/_faults", tags=["faults"], include_in_schema=False)


class InjectedFaultError(RuntimeError):
    """Raised on purpose: an error no handler knows, as a bug would be."""


@router.api_route("/unhandled", methods=["GET", "POST"])
async def unhandled() -> None:
    raise InjectedFaultError("injected fault")


@router.get("/slow")
async def slow(seconds: Annotated[float, Query(ge=0, le=10)] = 1.0) -> dict[str, float]:
    """Answers 200 after ``seconds``: slow, not down (the latency alert's proof)."""
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@router.get("/slow-db")
async def slow_db(
    session: DbSession, seconds: Annotated[float, Query(ge=0, le=10)] = 1.0
) -> dict[str, float]:
    """Holds a pooled connection for ``seconds`` (``pg_sleep``): the pool-saturation proof."""
    await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": seconds})
    return {"slept": seconds}
