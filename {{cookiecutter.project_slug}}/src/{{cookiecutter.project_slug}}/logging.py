"""structlog JSON logging for the app and for every stdlib logger it pulls in.

Guarantees one JSON object per line on stdout, with ``timestamp``, ``level``, ``event`` (a stable
dotted name) and whatever fields were bound for the request or job (``request_id`` among
them). Exceptions render as structured frames, never with their local variables. uvicorn's,
SQLAlchemy's and alembic's loggers go through the same renderer, so a log shipper sees one
format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.tracing import add_trace_ids


def _orjson_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is at emit time, so tools that swap it (pytest's
    capture, reloaders) still receive every line."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure_logging(settings: Settings) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if settings.log_json:
        # Frames without their local variables: locals carry passwords, tokens and request
        # bodies into the logs, and rendering them cost 40 CPU ms per logged error against 1.6
        # without (docs/observability.md), so a burst of errors stalled every other request.
        tracebacks = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        shared.append(structlog.processors.ExceptionRenderer(tracebacks))
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer()

    structlog.configure(
        # filter_by_level first: a line below the level is dropped before any processor
        # formats it (the access log logs every request; a probe's line is debug). Not in the
        # stdlib chain: those records were filtered by their logger already.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    handler = _StdoutHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Our access log replaces uvicorn's; its error logger still reports server problems.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Client libraries log every call at INFO; keep their warnings only.
    for name in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
