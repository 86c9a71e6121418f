"""Liveness and readiness probes, and the bodies of the gateway's own refusals.

``/_gateway/errors/{status}`` is the body the gateway sends for a refusal of its own (a body
over its limit: 413), so clients get problem+json there too.

``/healthz`` answers from the process alone (no I/O): a restart would not fix a database
outage, so liveness must not depend on one. ``/readyz`` answers 503, naming what failed, only
when Postgres is down: nothing can be served without it. Redis down is 200 ``degraded``: the
cache is fail-open and jobs retry their publish, and since every instance shares that Redis,
failing readiness on it would take every instance out of rotation at once.
While the process drains before shutting down (patterns/graceful.py), ``/readyz`` answers 503
"draining" without touching any dependency and ``/healthz`` stays 200: the instance is alive and
still serving, it only asks to be taken out of rotation.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import text
from starlette.responses import Response

from {{ cookiecutter.project_slug }}.patterns.problem import problem_response
from {{ cookiecutter.project_slug }}.patterns.readiness import run_checks

router = APIRouter(tags=["ops"])

# What an instance cannot serve without; every other check only reports "degraded".
REQUIRED = frozenset({"postgres"})


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Postgres answers (Redis is reported, degraded when down)",
    responses={503: {"description": "A dependency is down; `checks` says which."}},
    response_model=None,
)
async def readyz(request: Request) -> dict[str, Any] | Response:
    state = request.app.state
    if state.drain.draining:
        return problem_response(503, title="Not Ready", detail="draining", checks={})

    async def probe_postgres() -> None:
        async with state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    # A statement that succeeded a moment ago proves Postgres answers: a busy instance must not
    # queue its probe behind its own traffic and miss the gateway's health-check timeout.
    postgres = state.postgres_seen.or_probe(probe_postgres)

    async def redis() -> None:
        await state.redis.ping()

    results = await run_checks(
        {"postgres": postgres, "redis": redis}, deadline=state.settings.readiness_timeout
    )
    for name, result in results.items():
        required = "true" if name in REQUIRED else "false"
        state.dependency_up.labels(dependency=name, required=required).set(int(result.ok))
    checks = {name: result.as_dict() for name, result in results.items()}
    failed = sorted(name for name in REQUIRED if not results[name].ok)
    degraded = sorted(name for name, result in results.items() if not result.ok)
    if failed:
        return problem_response(
            503,
            title="Not Ready",
            detail=f"Unavailable: {', '.join(failed)}",
            checks=checks,
            degraded=degraded,
        )
    if degraded:
        return {"status": "degraded", "degraded": degraded, "checks": checks}
    return {"status": "ready", "checks": checks}


# The gateway's own refusals, as problems (deploy/traefik/dynamic/gateway.yml, `gateway-errors`):
# Traefik answers them before any instance is involved, as text/plain; its errors middleware
# fetches the body from here instead and sends it with the original status.
GATEWAY_ERRORS = {
    413: (
        "The request body is larger than the gateway accepts (1 MiB). JSON bodies are small; "
        "files go to object storage with a presigned upload (POST /uploads)."
    ),
}


@router.get("/_gateway/errors/{status}", include_in_schema=False)
async def gateway_error(status: int) -> Response:
    """The problem body for a refusal the gateway made itself (never the API's own errors)."""
    if status not in GATEWAY_ERRORS:
        return problem_response(404, detail=f"No gateway error page for status {status}")
    return problem_response(status, detail=GATEWAY_ERRORS[status])
