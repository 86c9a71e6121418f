"""The app factory and its lifespan: the only place clients are created and closed.

Run it with ``uvicorn {{ cookiecutter.project_slug }}.app:create_app --factory`` (the ``serve``
command does, with uvloop and httptools).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from {{ cookiecutter.project_slug }}.auth.router import router as auth_router
from {{ cookiecutter.project_slug }}.caching import create_cache, create_purger
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.health.router import router as health_router
from {{ cookiecutter.project_slug }}.logging import configure_logging
from {{ cookiecutter.project_slug }}.orders.router import router as orders_router
from {{ cookiecutter.project_slug }}.patterns.access_log import (
    AccessLogMiddleware,
    is_acceptable_request_id,
)
from {{ cookiecutter.project_slug }}.patterns.graceful import Drain, DrainMiddleware
from {{ cookiecutter.project_slug }}.patterns.http_cache import install_http_cache
from {{ cookiecutter.project_slug }}.patterns.metrics import (
    HttpMetrics,
    PrometheusMiddleware,
    metrics_router,
    register_pool_metrics,
)
from {{ cookiecutter.project_slug }}.patterns.problem import install_problem_handlers
from {{ cookiecutter.project_slug }}.postgres import create_engine, create_sessionmaker
from {{ cookiecutter.project_slug }}.products.router import router as products_router
from {{ cookiecutter.project_slug }}.redis import create_redis

log = structlog.get_logger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = create_engine(settings)
    redis = create_redis(settings)
    app.state.engine = engine
    app.state.sessionmaker = create_sessionmaker(engine)
    app.state.redis = redis
    # The cache has a Redis client of its own: short timeouts, no retries (fail-open).
    app.state.cache = create_cache(settings, app.state.metrics.registry)
    app.state.purger = create_purger(settings)
    register_pool_metrics(app.state.metrics.registry, engine)
    log.info("app.started", environment=settings.environment.value)
    try:
        # SIGTERM: fail readiness, keep serving DRAIN_SECONDS, then let the server stop.
        with app.state.drain.handle_sigterm():
            yield
    finally:
        await app.state.purger.aclose()
        await app.state.cache.aclose()
        await redis.aclose()
        await engine.dispose()
        log.info("app.stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings)

    app = FastAPI(
        title="{{ cookiecutter.project_name }}",
        description="{{ cookiecutter.description }}",
        version="0.1.0",
        lifespan=lifespan,
        # Interactive docs are for people building against the API, not for the internet.
        docs_url="/docs" if settings.environment.value != "production" else None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = HttpMetrics(CollectorRegistry())
    app.state.drain = Drain(settings.drain_seconds)

    install_problem_handlers(app)

    # Added innermost first: the request id is bound before the access log and metrics run.
    # Caching headers innermost: they describe the body exactly as the app produced it.
    install_http_cache(app)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    app.add_middleware(PrometheusMiddleware, metrics=app.state.metrics)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name="X-Request-ID",
        validator=is_acceptable_request_id,
    )

    app.include_router(health_router)
    app.include_router(metrics_router(app.state.metrics.registry))
    app.include_router(auth_router)
    app.include_router(products_router)
    app.include_router(orders_router)
    return app
