"""The app factory and its lifespan: the only place clients are created and closed.

Run it with ``uvicorn {{ cookiecutter.project_slug }}.app:create_app --factory`` (the ``serve``
command does, with uvloop and httptools).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import sqlalchemy.exc
import structlog
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from sqlalchemy import event

from {{ cookiecutter.project_slug }}.auth.router import router as auth_router
from {{ cookiecutter.project_slug }}.auth.user_cache import UserCache
from {{ cookiecutter.project_slug }}.caching import create_cache, create_purger
from {{ cookiecutter.project_slug }}.config import Environment, Settings
from {{ cookiecutter.project_slug }}.exceptions import Forbidden, NotAuthenticated
from {{ cookiecutter.project_slug }}.faults.injection import FaultInjectionMiddleware
from {{ cookiecutter.project_slug }}.faults.router import router as faults_router
from {{ cookiecutter.project_slug }}.health.router import router as health_router
from {{ cookiecutter.project_slug }}.jobs.router import router as jobs_router
from {{ cookiecutter.project_slug }}.logging import configure_logging
from {{ cookiecutter.project_slug }}.orders.router import router as orders_router
from {{ cookiecutter.project_slug }}.patterns.access_log import (
    AccessLogMiddleware,
    is_acceptable_request_id,
)
from {{ cookiecutter.project_slug }}.patterns.after_commit import celery_publisher
from {{ cookiecutter.project_slug }}.patterns.graceful import Drain, DrainMiddleware
from {{ cookiecutter.project_slug }}.patterns.http_cache import install_http_cache
from {{ cookiecutter.project_slug }}.patterns.metrics import (
    HttpMetrics,
    PrometheusMiddleware,
    metrics_router,
    register_pool_metrics,
    time_statements,
)
from {{ cookiecutter.project_slug }}.patterns.problem import (
    install_problem_handlers,
    install_unavailable_handler,
    problems,
)
from {{ cookiecutter.project_slug }}.patterns.rate_limit import RateLimited, RateLimitHeaders
from {{ cookiecutter.project_slug }}.patterns.readiness import RecentSuccess, dependency_gauge
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import stamp_published_messages
from {{ cookiecutter.project_slug }}.patterns.sse import Fanout
from {{ cookiecutter.project_slug }}.patterns.storage import StorageUnavailable
from {{ cookiecutter.project_slug }}.patterns.tracing import configure_tracing, instrument_app
from {{ cookiecutter.project_slug }}.payments.provider import create_payment_provider
from {{ cookiecutter.project_slug }}.payments.router import router as payments_router
from {{ cookiecutter.project_slug }}.postgres import create_engine, create_sessionmaker
from {{ cookiecutter.project_slug }}.products.router import media_router
from {{ cookiecutter.project_slug }}.products.router import router as products_router
from {{ cookiecutter.project_slug }}.pubsub.events import ORDER, PRODUCT
from {{ cookiecutter.project_slug }}.pubsub.metrics import PubSubMetrics, refresh_pubsub_metrics
from {{ cookiecutter.project_slug }}.pubsub.router import decode_entry
from {{ cookiecutter.project_slug }}.pubsub.router import router as events_router
from {{ cookiecutter.project_slug }}.rate_limits import build_policies, create_rate_limiter
from {{ cookiecutter.project_slug }}.redis import create_redis
from {{ cookiecutter.project_slug }}.reports.router import router as reports_router
from {{ cookiecutter.project_slug }}.storage import (
    RequestBodyBytes,
    create_storage,
    s3_request_counter,
)
from {{ cookiecutter.project_slug }}.uploads.router import router as uploads_router
from {{ cookiecutter.project_slug }}.worker.celery_app import create_celery, warm_up

log = structlog.get_logger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = create_engine(settings)
    redis = create_redis(settings)
    app.state.engine = engine
    # Readiness counts any statement that succeeded within the probe's deadline as Postgres up.
    # The listener runs after every statement: it holds the tracker itself, not a state lookup.
    postgres_seen = RecentSuccess(fresh_for=settings.readiness_timeout)
    app.state.postgres_seen = postgres_seen
    event.listen(engine.sync_engine, "after_cursor_execute", lambda *_: postgres_seen.record())
    app.state.sessionmaker = create_sessionmaker(engine)
    app.state.redis = redis
    # The cache has a Redis client of its own: short timeouts, no retries (fail-open).
    app.state.cache = create_cache(settings, app.state.metrics.registry)
    app.state.purger = create_purger(settings)
    # Rate limits: a Redis client of their own, short timeouts, a fallback per policy.
    app.state.rate_limiter = create_rate_limiter(settings, app.state.metrics.registry)
    # The API only publishes jobs; the broker connection opens on the first one.
    celery = create_celery(settings)
    app.state.celery = celery
    app.state.job_publisher = celery_publisher(celery)
    stamp_published_messages()
    # Connect to the broker now rather than in the first request that enqueues a job; but a
    # broker that is down (or hangs) must not hold the API's start-up: publishes retry.
    with anyio.move_on_after(settings.readiness_timeout * 2):
        try:
            await anyio.to_thread.run_sync(warm_up, celery, abandon_on_cancel=True)
        except Exception as exc:
            log.warning("jobs.broker_unreachable", error_type=type(exc).__name__)
    register_pool_metrics(app.state.metrics.registry, engine)
    time_statements()
    app.state.payments = create_payment_provider(settings, app)
    # One Redis Streams reader per process for every SSE client (patterns/sse.py).
    app.state.fanout = Fanout(
        redis,
        [f"{settings.events_stream_prefix}{PRODUCT}", f"{settings.events_stream_prefix}{ORDER}"],
        decode=decode_entry,
        queue_size=settings.sse_queue_size,
        # Below the client's socket timeout, or every idle XREAD would end in a timeout error.
        block_ms=max(10, int(settings.redis_socket_timeout * 1000 * 0.6)),
    )
    await app.state.fanout.start()
    # begin() runs inside the SIGTERM handler: the drain itself runs on the loop, next tick.
    loop = asyncio.get_running_loop()
    app.state.drain.on_begin(lambda: loop.call_soon_threadsafe(app.state.fanout.drain))
    pubsub_metrics = asyncio.create_task(
        refresh_pubsub_metrics(app.state.pubsub_metrics, engine, redis, settings)
    )
    # One S3 client per process; presigning is local, its I/O runs in bounded threads.
    app.state.storage = create_storage(
        settings, on_request=s3_request_counter(app.state.metrics.registry)
    )
    log.info("app.started", environment=settings.environment.value)
    try:
        # SIGTERM: fail readiness, keep serving DRAIN_SECONDS, then let the server stop.
        with app.state.drain.handle_sigterm():
            yield
    finally:
        await app.state.payments.aclose()
        pubsub_metrics.cancel()
        await asyncio.wait({pubsub_metrics}, timeout=2.0)
        await app.state.fanout.stop()
        app.state.storage.close()
        await app.state.purger.aclose()
        await app.state.cache.aclose()
        if app.state.rate_limiter is not None:
            await app.state.rate_limiter.aclose()
        celery.close()
        await redis.aclose()
        await engine.dispose()
        log.info("app.stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings)
    # Before the lifespan creates the engine and clients, so they are traced (if enabled).
    configure_tracing(*settings.tracing_for("api"))

    app = FastAPI(
        title="{{ cookiecutter.project_name }}",
        description="{{ cookiecutter.description }}",
        version="0.1.0",
        lifespan=lifespan,
        # Interactive docs and the schema are for people building against the API, not for the
        # internet: off in production unless OPENAPI_PUBLIC says otherwise.
        docs_url="/docs" if settings.openapi_enabled else None,
        openapi_url="/openapi.json" if settings.openapi_enabled else None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = HttpMetrics(CollectorRegistry())
    app.state.drain = Drain(settings.drain_seconds)
    app.state.pubsub_metrics = PubSubMetrics(app.state.metrics.registry, lambda: app.state.fanout)
    app.state.dependency_up = dependency_gauge(app.state.metrics.registry)
    app.state.rate_limit_policies = build_policies(settings)
    app.state.rate_limiter = None  # the lifespan creates it (unless RATE_LIMIT_ENABLED=false)
    app.state.user_cache = UserCache(
        settings.user_cache_ttl_seconds, settings.user_cache_max_entries
    )

    # Every operation behind the bearer token may answer these, and every staff route a 403
    # (auth/dependencies.py).
    install_problem_handlers(
        app, secured=problems(NotAuthenticated, RateLimited), restricted=problems(Forbidden)
    )
    # Postgres unreachable (refused, pool exhausted, connection lost), or S3: 503, not 500.
    install_unavailable_handler(
        app,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,
        OSError,
        StorageUnavailable,
    )

    # Added innermost first: the request id is bound before the access log and metrics run.
    # Caching headers innermost: they describe the body exactly as the app produced it.
    install_http_cache(app)
    # RateLimit-Policy / RateLimit on every response a policy counted, 429s included.
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    if settings.environment is Environment.test and (
        settings.fault_error_rate or settings.fault_delay_seconds
    ):
        # Inside the metrics middleware, so the injected failures and delays are counted.
        app.add_middleware(
            FaultInjectionMiddleware,
            error_rate=settings.fault_error_rate,
            delay_seconds=settings.fault_delay_seconds,
        )
    app.add_middleware(PrometheusMiddleware, metrics=app.state.metrics)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name="X-Request-ID",
        validator=is_acceptable_request_id,
    )
    # An allow-list of browser origins (CORS_ALLOW_ORIGINS); none by default. Bearer tokens, no
    # cookies: credentials are never allowed cross-origin.
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-ID"],
            max_age=600,
        )
    # Outermost: every request body byte this process receives (files must not be among them).
    app.add_middleware(RequestBodyBytes, registry=app.state.metrics.registry)

    app.include_router(health_router)
    app.include_router(metrics_router(app.state.metrics.registry))
    app.include_router(auth_router)
    app.include_router(jobs_router)
    app.include_router(products_router)
    app.include_router(media_router)
    app.include_router(orders_router)
    app.include_router(reports_router)
    app.include_router(payments_router)
    app.include_router(events_router)
    if settings.environment is Environment.test:
        # Routes that fail on purpose, for the fault-injection proofs only.
        app.include_router(faults_router)
    app.include_router(uploads_router)
    instrument_app(app)  # outermost: the span covers everything the request does
    return app
