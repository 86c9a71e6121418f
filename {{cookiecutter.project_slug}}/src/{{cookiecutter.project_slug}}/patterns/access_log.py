"""One structured log line per request, with the request id bound for everything it logs.

Guarantees: every HTTP request produces exactly one ``http.request`` event carrying
``request_id``, ``method``, ``route`` (template), ``path``, ``status``, ``duration_ms``,
``client`` and ``scheme`` (behind a trusted proxy: the real client's address and scheme, see
``FORWARDED_ALLOW_IPS``); the request id is bound in structlog's contextvars so every other
line logged while serving the request carries it too. Probe and scrape routes log at debug
level so they do not drown real traffic.

Needs: structlog, asgi-correlation-id's ``CorrelationIdMiddleware`` placed *outside* this one
(it accepts a sane incoming ``X-Request-ID`` or makes one, and echoes it back).
"""

from __future__ import annotations

import logging
import time

import structlog
from asgi_correlation_id import correlation_id
from starlette.types import ASGIApp, Receive, Scope, Send

from {{ cookiecutter.project_slug }}.patterns.asgi import StatusRecordingSend, route_template

QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})

log = structlog.get_logger("http.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=correlation_id.get())
        status = StatusRecordingSend(send)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, status)
        finally:
            route = route_template(scope)
            client = scope.get("client")
            log.log(
                logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                "http.request",
                method=scope["method"],
                route=route,
                path=scope["path"],
                status=status.code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                client=client[0] if client else None,
                scheme=scope["scheme"],
            )


def is_acceptable_request_id(value: str) -> bool:
    """Accept ids from gateways and clients, but only short plain tokens: an id is echoed into
    every log line and response, so newlines or kilobytes from a client must not get through."""
    return 0 < len(value) <= 128 and all(c.isalnum() or c in "-_.:" for c in value)
