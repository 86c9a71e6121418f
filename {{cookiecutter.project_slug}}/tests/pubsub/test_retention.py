"""What keeps the pub-sub path from growing without bound, and the metrics that show it
working: the relay trims each stream to its retention, the scheduler's purge deletes old
published outbox rows (and nothing else), and outbox lag and consumer pending move with the
real Postgres and Redis state."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import uuid4

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.outbox import Event, Relay, purge_published
from {{ cookiecutter.project_slug }}.pubsub.events import PRODUCT, stock_changed, stream_name
from {{ cookiecutter.project_slug }}.pubsub.metrics import PubSubMetrics, refresh_pubsub_metrics


async def add_committed(engine: AsyncEngine, events: list[Event]) -> None:
    async with AsyncSession(engine) as session:
        await outbox.add(session, *events)
        await session.commit()


async def drain(relay: Relay) -> None:
    while await relay.publish_batch():
        pass


async def until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    async with asyncio.timeout(within):
        while not await condition():
            await asyncio.sleep(0.1)
    assert await condition(), what


async def test_the_relay_trims_each_stream_to_about_its_retention(
    committed_engine: AsyncEngine, redis: Redis, prefix: str
) -> None:
    relay = Relay(committed_engine, redis, lambda e: stream_name(prefix, e), maxlen=100)
    await add_committed(committed_engine, [stock_changed(uuid4(), n) for n in range(1_000)])
    await drain(relay)
    length = await redis.xlen(f"{prefix}{PRODUCT}")
    # MAXLEN ~ trims whole radix-tree nodes (100 entries each by default): never below the
    # retention, never more than one node above it, and far below the 1,000 written.
    assert 100 <= length <= 200, length
    # The newest survive: the last entry is the last event written.
    newest: Any = await redis.xrevrange(f"{prefix}{PRODUCT}", count=1)
    [(_, fields)] = newest
    assert b'"stock":999' in fields[b"event"]


async def test_the_purge_deletes_old_published_rows_and_keeps_the_rest(
    committed_engine: AsyncEngine, redis: Redis, prefix: str
) -> None:
    old, recent, unpublished = (stock_changed(uuid4(), n) for n in range(3))
    await add_committed(committed_engine, [old, recent])
    await drain(Relay(committed_engine, redis, lambda e: stream_name(prefix, e)))
    await add_committed(committed_engine, [unpublished])
    async with committed_engine.begin() as connection:
        await connection.execute(
            text("UPDATE outbox SET published_at = now() - interval '2 days' WHERE event_id = :id"),
            {"id": old.event_id},
        )
    # What jobs.cleanup_stale_data runs, with OUTBOX_RETENTION_HOURS=24.
    async with AsyncSession(committed_engine) as session, session.begin():
        purged = await purge_published(session, timedelta(hours=24))
    async with committed_engine.connect() as connection:
        left = set(
            (
                await connection.execute(
                    text("SELECT event_id FROM outbox WHERE event_id = ANY(:ids)"),
                    {"ids": [old.event_id, recent.event_id, unpublished.event_id]},
                )
            ).scalars()
        )
    assert purged >= 1
    assert left == {recent.event_id, unpublished.event_id}
    # Cleanup of this test's unpublished row: other tests' relays must not pick it up.
    async with committed_engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM outbox WHERE event_id = :id"), {"id": unpublished.event_id}
        )


async def test_outbox_lag_and_consumer_pending_move_with_the_real_state(
    committed_settings: Settings, committed_engine: AsyncEngine, redis: Redis, prefix: str
) -> None:
    settings = committed_settings.model_copy(update={"events_stream_prefix": prefix})
    relay = Relay(committed_engine, redis, lambda e: stream_name(prefix, e))
    await drain(relay)  # whatever an earlier test left unpublished
    registry = CollectorRegistry()
    metrics = PubSubMetrics(registry, lambda: None)
    stream = f"{prefix}{PRODUCT}"

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    await add_committed(committed_engine, [stock_changed(uuid4(), n) for n in range(5)])
    async with committed_engine.begin() as connection:
        # Written a minute ago and not yet relayed: the lag is its age.
        await connection.execute(
            text(
                "UPDATE outbox SET created_at = now() - interval '1 minute'"
                " WHERE published_at IS NULL"
            )
        )
    refresher = asyncio.create_task(
        refresh_pubsub_metrics(metrics, committed_engine, redis, settings)
    )
    try:
        await until(
            lambda: asyncio.sleep(0, sample("outbox_lag_seconds") >= 60),
            within=15,
            what="outbox lag of the unrelayed rows",
        )
        await drain(relay)
        await redis.xgroup_create(stream, "test-group", id="0")
        await redis.xreadgroup("test-group", "c1", {stream: ">"}, count=3)
        await until(
            lambda: asyncio.sleep(
                0,
                sample("outbox_lag_seconds") == 0
                and sample("events_consumer_pending", stream=stream, group="test-group") == 3
                and sample("events_consumer_lag", stream=stream, group="test-group") == 2,
            ),
            within=15,
            what="lag 0 once relayed; 3 pending, 2 not yet delivered",
        )
        delivered: Any = await redis.xrange(stream, count=3)
        ids = [entry_id for entry_id, _ in delivered]
        await redis.xack(stream, "test-group", *ids)
        await until(
            lambda: asyncio.sleep(
                0, sample("events_consumer_pending", stream=stream, group="test-group") == 0
            ),
            within=15,
            what="nothing pending once acked",
        )
    finally:
        refresher.cancel()
