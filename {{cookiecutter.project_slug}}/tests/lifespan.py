"""The app's real lifespan in a test, with room for a loaded machine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from starlette.types import ASGIApp

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.worker.celery_app import create_celery
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext, WorkerContextFactory

# asgi-lifespan allows startup and shutdown 5 s each. A suite sharing 2 cores with topology
# stacks has stalled past that in teardown (a bare TimeoutError, nothing wrong with the app);
# a real hang still fails, just later.
LIFESPAN_SECONDS = 30.0


def running(app: ASGIApp) -> LifespanManager:
    """``async with running(app):`` runs the app's startup, then its shutdown on exit."""
    return LifespanManager(app, startup_timeout=LIFESPAN_SECONDS, shutdown_timeout=LIFESPAN_SECONDS)


@dataclass
class AppAndWorker:
    client: AsyncClient
    worker: WorkerContext
    settings: Settings


@asynccontextmanager
async def app_and_worker(settings: Settings) -> AsyncIterator[AppAndWorker]:
    """The real app (a client on it) and a worker process's context, from the same factory
    the worker uses, on ``settings``: a proof runs a job's function where the worker would."""
    app = create_app(settings)
    factory = WorkerContextFactory(settings, create_celery(settings))
    async with running(app):
        worker = await factory.open()
        try:
            transport = ASGITransport(app=app, raise_app_exceptions=False)
            async with AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield AppAndWorker(client, worker, settings)
        finally:
            await factory.close(worker)
