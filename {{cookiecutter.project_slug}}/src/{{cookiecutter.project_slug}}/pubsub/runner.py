"""The relay and consumer processes: ``{{ cookiecutter.project_slug }} relay`` / ``consumers``.

Each owns its clients for its lifetime and stops cleanly on SIGTERM/SIGINT (the current
batch finishes; nothing is acked or marked that was not done).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.caching import bind_invalidation, create_cache, create_purger
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.after_commit import finish_commit
from {{ cookiecutter.project_slug }}.patterns.consumer import Consumer
from {{ cookiecutter.project_slug }}.patterns.outbox import Event, Relay
from {{ cookiecutter.project_slug }}.patterns.tracing import configure_tracing
from {{ cookiecutter.project_slug }}.postgres import create_engine, create_sessionmaker
from {{ cookiecutter.project_slug }}.pubsub.events import stream_name
from {{ cookiecutter.project_slug }}.pubsub.handlers import SUBSCRIPTIONS, Subscription, record_dead_letter
from {{ cookiecutter.project_slug }}.redis import create_redis
from {{ cookiecutter.project_slug }}.worker.heartbeat import HEARTBEAT_EVERY, heartbeat_file

log = structlog.get_logger(__name__)


async def _beat(role: str, stop: asyncio.Event) -> None:
    """The container health check's heartbeat, from the event loop itself: a hung loop stops
    beating and the process is restarted."""
    path = heartbeat_file(role)
    while not stop.is_set():
        path.touch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_EVERY)
    path.unlink(missing_ok=True)


class _Counts(Collector):
    """What a relay or consumer process counted, read at scrape time."""

    def __init__(self, read: Callable[[], Iterator[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._read()


def _serve_metrics(settings: Settings, port: int, read: Callable[[], Iterator[Metric]]) -> None:
    """This process's metrics (its counts, CPU, memory) on ``port``; 0 serves none."""
    if port:
        REGISTRY.register(_Counts(read))
        start_http_server(port, addr=settings.worker_metrics_host)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_relay(settings: Settings) -> None:
    configure_tracing(*settings.tracing_for("relay"))
    engine = create_engine(
        settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}),
        application_name="relay",
    )
    redis = create_redis(settings)
    relay = Relay(
        engine=engine,
        redis=redis,
        stream_for=partial(_stream, settings.events_stream_prefix),
        maxlen=settings.events_stream_maxlen,
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval,
    )

    def relay_counts() -> Iterator[Metric]:
        yield CounterMetricFamily(
            "outbox_relay_published", "Events this relay published", value=relay.published
        )

    _serve_metrics(settings, settings.relay_metrics_port, relay_counts)
    log.info("outbox.relay_started")
    stop = _stop_on_signals()
    try:
        await asyncio.gather(relay.run(stop), _beat("relay", stop))
    finally:
        log.info("outbox.relay_stopped", published=relay.published)
        await redis.aclose()
        await engine.dispose()


def _stream(prefix: str, event: Event) -> str:
    return stream_name(prefix, event)


async def run_consumers(
    settings: Settings, subscriptions: Sequence[Subscription] = SUBSCRIPTIONS
) -> None:
    configure_tracing(*settings.tracing_for("consumers"))
    engine = create_engine(
        settings.model_copy(update={"db_pool_size": len(subscriptions) + 1}),
        application_name="consumers",
    )
    sessionmaker = create_sessionmaker(engine)
    redis = create_redis(settings)
    cache = create_cache(settings, CollectorRegistry())
    purger = create_purger(settings)
    name = f"{socket.gethostname()}-{os.getpid()}"

    def opened() -> AsyncSession:
        session = sessionmaker()
        bind_invalidation(session, cache, purger)
        return session

    async def dead_letter(group: str, event: Event | None, error: str, deliveries: int) -> None:
        async with sessionmaker() as session:
            await record_dead_letter(session, group, event, error, deliveries)
            await session.commit()

    consumers = [
        Consumer(
            redis=redis,
            sessionmaker=opened,
            stream=f"{settings.events_stream_prefix}{sub.aggregate_type}",
            group=sub.group,
            name=name,
            handler=sub.handler,
            dead_letter=dead_letter,
            finish=finish_commit,
            max_deliveries=settings.consumer_max_deliveries,
            claim_idle_ms=settings.consumer_claim_idle_ms,
        )
        for sub in subscriptions
    ]

    def consumer_counts() -> Iterator[Metric]:
        handled = CounterMetricFamily(
            "events_consumer_handled", "Events handled, by group", labels=["group"]
        )
        duplicates = CounterMetricFamily(
            "events_consumer_duplicates", "Redeliveries the inbox dropped", labels=["group"]
        )
        for consumer in consumers:
            handled.add_metric([consumer.group], consumer.handled)
            duplicates.add_metric([consumer.group], consumer.duplicates)
        yield from (handled, duplicates)

    _serve_metrics(settings, settings.consumers_metrics_port, consumer_counts)
    stop = _stop_on_signals()
    log.info("events.consumers_started", groups=[c.group for c in consumers], name=name)
    try:
        await asyncio.gather(
            *(consumer.run(stop) for consumer in consumers), _beat("consumers", stop)
        )
    finally:
        await purger.aclose()
        await cache.aclose()
        await redis.aclose()
        await engine.dispose()
