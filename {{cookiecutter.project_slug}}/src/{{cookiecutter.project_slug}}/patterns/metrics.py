"""Prometheus metrics for HTTP and the database pool.

Guarantees: ``http_requests_total`` and ``http_request_duration_seconds`` labelled by method,
route *template* and status (bounded cardinality), ``http_requests_in_flight``, and
``db_pool_checked_out`` read live from the SQLAlchemy pool at scrape time. Each app gets its
own ``CollectorRegistry``, so several apps in one process (tests) never clash.

Needs: prometheus-client; a pure ASGI middleware (no BaseHTTPMiddleware: it would add a
task and a body copy per request). Each API process exposes its own ``/metrics``; Prometheus
scrapes every instance, which is why no multiprocess mode is needed.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from {{ cookiecutter.project_slug }}.patterns.asgi import StatusRecordingSend, route_template

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request start to the last response byte, by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight", "Requests being served right now.", registry=registry
        )


class PrometheusMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = StatusRecordingSend(send)
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, status)
        finally:
            self.metrics.in_flight.dec()
            route = route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status.code)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def register_pool_metrics(registry: CollectorRegistry, engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool
    checked_out = Gauge(
        "db_pool_checked_out",
        "Database connections currently lent to requests or jobs.",
        registry=registry,
    )
    # QueuePool reports live counts; read them at scrape time instead of tracking events.
    checked_out.set_function(lambda: float(getattr(pool, "checkedout", lambda: 0)()))
    size = Gauge("db_pool_size", "Configured database pool size.", registry=registry)
    size.set_function(lambda: float(getattr(pool, "size", lambda: 0)()))


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
