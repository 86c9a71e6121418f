"""Pub-sub metrics on every API instance's ``/metrics``.

Outbox lag (age of the oldest unpublished row), stream length, per-group pending and lag are
read every ``REFRESH_SECONDS`` by one task per process (prometheus-client collectors are
synchronous, and a scrape must not wait on Postgres); SSE figures are read at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.outbox import oldest_unpublished_age
from {{ cookiecutter.project_slug }}.patterns.sse import Fanout
from {{ cookiecutter.project_slug }}.pubsub.events import ORDER, PRODUCT

log = structlog.get_logger(__name__)

REFRESH_SECONDS = 5.0


class _SseCollector(Collector):
    def __init__(self, fanout: Callable[[], Fanout | None]) -> None:
        self._fanout = fanout

    def collect(self) -> Iterator[Metric]:
        fanout = self._fanout()
        if fanout is None:
            return
        m = fanout.metrics
        yield GaugeMetricFamily("sse_connections", "Open SSE connections", value=m.connected)
        yield CounterMetricFamily("sse_dropped_clients", "Clients dropped as too slow", m.dropped)
        yield CounterMetricFamily("sse_events_delivered", "Events sent to SSE clients", m.delivered)
        yield CounterMetricFamily(
            "sse_reader_timeouts",
            "XREADs of the live-event reader that timed out",
            m.reader_timeouts,
        )


class PubSubMetrics:
    def __init__(self, registry: CollectorRegistry, fanout: Callable[[], Fanout | None]) -> None:
        self.outbox_lag = Gauge(
            "outbox_lag_seconds", "Age of the oldest unpublished outbox event", registry=registry
        )
        self.stream_length = Gauge(
            "events_stream_length", "Entries in an event stream", ["stream"], registry=registry
        )
        self.pending = Gauge(
            "events_consumer_pending",
            "Delivered, not acked",
            ["stream", "group"],
            registry=registry,
        )
        self.lag = Gauge(
            "events_consumer_lag",
            "Entries not yet delivered to the group",
            ["stream", "group"],
            registry=registry,
        )
        registry.register(_SseCollector(fanout))


async def refresh_pubsub_metrics(
    metrics: PubSubMetrics, engine: AsyncEngine, redis: Redis, settings: Settings
) -> None:
    streams = [f"{settings.events_stream_prefix}{kind}" for kind in (PRODUCT, ORDER)]
    while True:
        with contextlib.suppress(Exception):
            metrics.outbox_lag.set(await oldest_unpublished_age(engine))
            for stream in streams:
                if not await redis.exists(stream):
                    continue
                metrics.stream_length.labels(stream).set(await redis.xlen(stream))
                groups: Any = await redis.xinfo_groups(stream)
                for group in groups:
                    name = (
                        group["name"].decode()
                        if isinstance(group["name"], bytes)
                        else group["name"]
                    )
                    metrics.pending.labels(stream, name).set(int(group["pending"]))
                    metrics.lag.labels(stream, name).set(int(group.get("lag") or 0))
        await asyncio.sleep(REFRESH_SECONDS)
