"""Prometheus metrics for HTTP and the database pool.

Guarantees: ``http_requests_total`` and ``http_request_duration_seconds`` labelled by method,
route *template* and status (bounded cardinality), ``http_requests_in_flight``, and
``db_pool_checked_out`` read live from the SQLAlchemy pool at scrape time. Each app gets its
own ``CollectorRegistry``, so several apps in one process (tests) never clash.

The bill, per route template: ``http_response_body_bytes_total`` (bytes sent) and
``http_request_db_seconds_total`` (time in database statements while serving, from every
engine's cursor events once :func:`time_statements` ran; background work started by the
request counts to it too).

Needs: prometheus-client; a pure ASGI middleware (no BaseHTTPMiddleware: it would add a
task and a body copy per request). Each API process exposes its own ``/metrics``; Prometheus
scrapes every instance, which is why no multiprocess mode is needed.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.project_slug }}.patterns.asgi import StatusRecordingSend, route_template

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The serving request's database seconds so far: a box the cursor events add to, set by the
# middleware (a mutable box, so work the request hands to a child task adds to it as well).
_db_seconds: ContextVar[list[float] | None] = ContextVar("request_db_seconds", default=None)
_STARTED = "metrics_statement_started"


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
        self.response_bytes = Counter(
            "http_response_body_bytes",
            "Response body bytes sent, by route template.",
            ["route"],
            registry=registry,
        )
        self.db_seconds = Counter(
            "http_request_db_seconds",
            "Seconds spent in database statements while serving requests, by route template.",
            ["route"],
            registry=registry,
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
        body_bytes = 0

        async def counting_send(message: Message) -> None:
            nonlocal body_bytes
            if message["type"] == "http.response.body":
                body_bytes += len(message.get("body", b""))
            await status(message)

        db_seconds = [0.0]
        token = _db_seconds.set(db_seconds)
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.in_flight.dec()
            _db_seconds.reset(token)
            route = route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status.code)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
            self.metrics.response_bytes.labels(route).inc(body_bytes)
            if db_seconds[0]:
                self.metrics.db_seconds.labels(route).inc(db_seconds[0])


def _statement_started(conn: Any, *_: Any) -> None:
    if _db_seconds.get() is not None:
        conn.info.setdefault(_STARTED, []).append(time.perf_counter())


def _statement_ended(conn: Any, *_: Any) -> None:
    box, starts = _db_seconds.get(), conn.info.get(_STARTED)
    if box is not None and starts:
        box[0] += time.perf_counter() - starts.pop()


def _statement_failed(context: Any) -> None:
    if context.connection is not None:  # a failed statement's time counts too
        _statement_ended(context.connection)


def time_statements() -> None:
    """Count every engine's statement time to the request being served (idempotent)."""
    if not event.contains(Engine, "before_cursor_execute", _statement_started):
        event.listen(Engine, "before_cursor_execute", _statement_started)
        event.listen(Engine, "after_cursor_execute", _statement_ended)
        event.listen(Engine, "handle_error", _statement_failed)


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
