"""OpenTelemetry traces across the API, its jobs and its events; exported over OTLP, off by default.

Guarantees, once :func:`configure_tracing` ran with an OTLP endpoint:

- every request (FastAPI, through :func:`instrument_app`), SQL statement (SQLAlchemy), Redis
  command, outgoing HTTP call (httpx) and job publish and run (Celery) is a span, with the
  official instrumentations;
- the W3C trace context travels in the Celery message headers (the instrumentation's
  ``before_task_publish`` hook), so the worker's ``run/<task>`` span continues the trace of
  the request that enqueued the job; outbox rows carry it too (:func:`current_context`,
  :func:`continued`), so a consumer's handling continues the request's trace;
- log lines carry ``trace_id`` and ``span_id`` (:func:`add_trace_ids`, a structlog processor);
- spans leave through a batch processor to ``<endpoint>/v1/traces`` (OTLP over HTTP/protobuf,
  the exporter's standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_BSP_*`` variables apply), and
  :func:`shutdown_tracing` flushes them.

Without an endpoint nothing is installed: the API's tracer is a no-op, nothing is exported,
and :func:`current_context` returns ``{}``.

Needs: opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http and the celery, fastapi,
httpx, redis and sqlalchemy instrumentations; one call per process, before the process
creates its engine (in a prefork worker: in each child, ``worker_process_init``, because the
batch processor's thread does not survive a fork). Engines must be created through
``sqlalchemy.ext.asyncio.create_async_engine`` looked up at call time: the instrumentation
wraps that attribute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from fastapi import FastAPI
from opentelemetry import context, propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_provider: TracerProvider | None = None


def configure_tracing(endpoint: str, service_name: str) -> TracerProvider | None:
    """Install the provider and the instrumentations once per process; ``""`` installs none."""
    global _provider
    if not endpoint or _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # The instrumentation declares sqlalchemy < 2.1 and silently does nothing on 2.1; its
    # engine events are unchanged in 2.1, and tests/observability/test_traces.py fails if
    # SQL spans go missing.
    SQLAlchemyInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    RedisInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    _provider = provider
    return provider


def instrument_app(app: FastAPI) -> None:
    """Trace ``app``'s requests, if :func:`configure_tracing` installed a provider."""
    if _provider is not None:
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=_provider, excluded_urls="healthz,readyz,metrics"
        )


def shutdown_tracing() -> None:
    """Export what is still buffered (the end of a process)."""
    if _provider is not None:
        _provider.shutdown()


def current_context() -> dict[str, str]:
    """The W3C trace context (``traceparent``, ``tracestate``) of the current span, or ``{}``."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def continued(name: str, carrier: Mapping[str, str], **attributes: Any) -> Iterator[None]:
    """A span ``name`` that continues the trace ``carrier`` names (a consumed event's)."""
    parent = propagate.extract(dict(carrier))
    token = context.attach(parent)
    try:
        tracer = trace.get_tracer(__name__)
        with tracer.start_as_current_span(name, kind=trace.SpanKind.CONSUMER) as span:
            span.set_attributes(attributes)
            yield
    finally:
        context.detach(token)


def add_trace_ids(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current span's ``trace_id`` and ``span_id``, when there is one."""
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event.setdefault("trace_id", format(span.trace_id, "032x"))
        event.setdefault("span_id", format(span.span_id, "016x"))
    return event
