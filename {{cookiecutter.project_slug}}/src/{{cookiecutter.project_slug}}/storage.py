"""Object storage wiring: the process's one :class:`ObjectStorage`, and its dependency."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import structlog
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.storage import ObjectStorage

log = structlog.get_logger(__name__)


def create_storage(
    settings: Settings, *, on_request: Callable[[str], None] | None = None
) -> ObjectStorage:
    """``on_request``: told each S3 operation made (the process's ``s3_requests_total``)."""
    return ObjectStorage(
        bucket=settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id or None,
        secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
        path_style=settings.s3_force_path_style,
        max_concurrency=settings.s3_max_concurrency,
        on_request=on_request,
    )


def s3_request_counter(registry: CollectorRegistry) -> Callable[[str], None]:
    """``s3_requests_total{operation}`` in ``registry``, as a storage's ``on_request``."""
    counter = Counter(
        "s3_requests",
        "S3 API calls this process made, by operation.",
        ["operation"],
        registry=registry,
    )
    return lambda operation: counter.labels(operation).inc()


async def init_bucket(settings: Settings) -> dict[str, bool]:
    """Once per environment (the bucket-init job): bucket, CORS, lifecycle. Safe to rerun."""
    storage = create_storage(settings)
    try:
        await storage.ensure_bucket()
        applied = await storage.configure_bucket(
            cors_origins=settings.s3_cors_origin_list,
            abort_incomplete_after_days=settings.s3_abort_incomplete_after_days,
        )
    finally:
        storage.close()
    log.info("storage.initialised", bucket=settings.s3_bucket, **applied)
    return applied


async def get_storage(request: Request) -> ObjectStorage:
    storage: ObjectStorage = request.app.state.storage
    return storage


Storage = Annotated[ObjectStorage, Depends(get_storage)]


class RequestBodyBytes:
    """Counts the request body bytes the API receives: the proof that files bypass it.

    Pure ASGI (wraps ``receive``), so streaming bodies are counted as they arrive.
    """

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.counter = Counter(
            "http_request_body_bytes",
            "Request body bytes received by this process.",
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.counter.inc(len(message.get("body", b"")))
            return message

        await self.app(scope, counting, send)
