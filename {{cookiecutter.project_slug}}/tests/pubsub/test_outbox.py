"""The outbox proofs on real Postgres and Redis: nothing before the commit, nothing after a
rollback, every committed event relayed once per consumer group in per-aggregate order even
when the relay and a consumer are killed with SIGKILL, and a poison event dead-lettered while
the others flow."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.consumer import Consumer
from {{ cookiecutter.project_slug }}.patterns.outbox import Event, Relay
from {{ cookiecutter.project_slug }}.pubsub.events import stream_name
from {{ cookiecutter.project_slug }}.pubsub.handlers import record_dead_letter
from tests.conftest import LiveServer
from tests.factories import insert_products, insert_users
from tests.orders.test_contention import line, post_all


async def entries(redis: Redis, stream: str) -> list[tuple[Any, dict[Any, Any]]]:
    reply: Any = await redis.xrange(stream)
    return list(reply)


def event(aggregate_id: str, n: int) -> Event:
    return Event(
        type="thing.changed", aggregate_type="thing", aggregate_id=aggregate_id, payload={"n": n}
    )


async def test_rollback_publishes_nothing_and_nothing_is_visible_before_commit(
    committed_engine: AsyncEngine, redis: Redis, prefix: str
) -> None:
    relay = Relay(committed_engine, redis, lambda e: stream_name(prefix, e))
    stream = f"{prefix}thing"
    async with AsyncSession(committed_engine) as session:
        await outbox.add(session, event("a", 1))
        await session.flush()
        # Written but not committed: the relay must not see it.
        assert await relay.publish_batch() == 0
        assert await redis.xlen(stream) == 0
        await session.rollback()
    assert await relay.publish_batch() == 0
    assert await redis.xlen(stream) == 0

    async with AsyncSession(committed_engine) as session:
        await outbox.add(session, event("a", 2))
        await session.commit()
    assert await relay.publish_batch() == 1
    [(_, fields)] = await entries(redis, stream)
    assert Event.from_json(fields[b"event"]).payload == {"n": 2}
    async with committed_engine.connect() as conn:
        assert (
            await conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) == 0
        )


async def test_a_poison_event_is_dead_lettered_after_n_deliveries_while_others_flow(
    committed_engine: AsyncEngine, redis: Redis, prefix: str
) -> None:
    relay = Relay(committed_engine, redis, lambda e: stream_name(prefix, e))
    events = [event(f"agg-{i % 4}", i) for i in range(20)]
    poison = events[7].event_id
    async with AsyncSession(committed_engine) as session:
        await outbox.add(session, *events)
        await session.commit()
    assert await relay.publish_batch() == 20

    sessions = async_sessionmaker(committed_engine, expire_on_commit=False)
    seen: list[int] = []

    async def handler(session: AsyncSession, e: Event) -> None:
        if e.event_id == poison:
            raise ValueError("cannot digest this one")
        seen.append(int(e.payload["n"]))

    async def dead_letter(group: str, e: Event | None, error: str, deliveries: int) -> None:
        async with sessions() as session:
            await record_dead_letter(session, group, e, error, deliveries)
            await session.commit()

    consumer = Consumer(
        redis,
        sessions,
        f"{prefix}thing",
        "test",
        "c1",
        handler,
        dead_letter,
        max_deliveries=3,
        claim_idle_ms=100,
        block_ms=50,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(30):
            while True:
                async with committed_engine.connect() as conn:
                    dead = await conn.scalar(text("SELECT count(*) FROM dead_letters"))
                if dead:
                    break
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert sorted(seen) == [n for n in range(20) if n != 7]
    async with committed_engine.connect() as conn:
        row = (await conn.execute(text("SELECT task_id, attempts, error FROM dead_letters"))).one()
        inbox = await conn.scalar(text("SELECT count(*) FROM inbox WHERE consumer_group='test'"))
    assert row.task_id == f"event:test:{poison}"
    assert row.attempts == 3
    assert "cannot digest" in row.error
    assert inbox == 19  # the poison's inbox row rolled back with its handler
    assert (await redis.xpending(f"{prefix}thing", "test"))["pending"] == 0


# --- The proof under load: real API, relay and consumer processes, SIGKILL once each -------

ORDERS = 200
PRODUCTS = 10


def _env(settings: Settings, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key.get_secret_value(),
        "LOG_LEVEL": "WARNING",
        "CACHE_KEY_PREFIX": settings.cache_key_prefix,
        "EVENTS_STREAM_PREFIX": prefix,
        "OUTBOX_POLL_INTERVAL": "0.05",
        "OUTBOX_BATCH_SIZE": "20",
        "CONSUMER_CLAIM_IDLE_MS": "500",
    }


class Processes:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, role: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{role}-{len(self.running)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "{{ cookiecutter.project_slug }}", role],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(committed_settings: Settings, prefix: str, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(_env(committed_settings, prefix), tmp_path)
    yield procs
    procs.stop_all()


async def _count(engine: AsyncEngine, sql: str, **params: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(sql), params) or 0)


@pytest.mark.load
async def test_every_group_handles_every_event_once_in_order_through_sigkills(
    live_server: LiveServer,
    committed_engine: AsyncEngine,
    redis: Redis,
    prefix: str,
    processes: Processes,
) -> None:
    async with committed_engine.begin() as connection:
        buyers = await insert_users(connection, ORDERS)
        products = await insert_products(connection, [10_000] * PRODUCTS)

    # Two relays at once (the lease keeps them from interleaving) and the consumer groups.
    relay = processes.start("relay")
    processes.start("relay")
    consumers = processes.start("consumers")

    async def kill_mid_stream() -> None:
        # Once some events went through, SIGKILL one relay and the consumers; a new consumer
        # process (new name) must XAUTOCLAIM what the dead one had pending.
        async with asyncio.timeout(60):
            while await _count(committed_engine, "SELECT count(*) FROM inbox") < 50:
                await asyncio.sleep(0.02)
        relay.kill()
        consumers.kill()
        processes.start("consumers")

    killer = asyncio.create_task(kill_mid_stream())
    half = ORDERS // 2
    requests = [
        (
            live_server.auth(buyer),
            {"items": [line(products[i % PRODUCTS], 1), line(products[(i + 1) % PRODUCTS], 2)]},
        )
        for i, buyer in enumerate(buyers)
    ]
    responses = await post_all(live_server, requests[:half])
    await killer
    responses += await post_all(live_server, requests[half:])
    assert {r.status_code for r in responses} == {201}

    order_events = await _count(
        committed_engine, "SELECT count(*) FROM outbox WHERE aggregate_type = 'order'"
    )
    product_events = await _count(
        committed_engine, "SELECT count(*) FROM outbox WHERE aggregate_type = 'product'"
    )
    assert order_events == ORDERS
    assert product_events == 2 * ORDERS
    async with asyncio.timeout(90):
        while (
            await _count(
                committed_engine, "SELECT count(*) FROM inbox WHERE consumer_group='revenue'"
            )
            < order_events
            or await _count(
                committed_engine, "SELECT count(*) FROM inbox WHERE consumer_group='cache'"
            )
            < product_events
        ):
            await asyncio.sleep(0.1)

    # Exactly once per group: one inbox row per event (the primary key forbids a second), no
    # event without one, none left pending in Redis, nothing dead-lettered.
    # Order events have two groups (revenue, confirmation), product events one (cache).
    for group, aggregate_type in (
        ("revenue", "order"),
        ("confirmation", "order"),
        ("cache", "product"),
    ):
        missing = await _count(
            committed_engine,
            "SELECT count(*) FROM outbox o LEFT JOIN inbox i ON i.event_id = o.event_id"
            " AND i.consumer_group = :g WHERE o.aggregate_type = :t AND i.event_id IS NULL",
            g=group,
            t=aggregate_type,
        )
        assert missing == 0, group
    assert (
        await _count(committed_engine, "SELECT count(*) FROM inbox")
        == 2 * order_events + product_events
    )
    assert await _count(committed_engine, "SELECT count(*) FROM dead_letters") == 0
    assert (
        await _count(committed_engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
        == 0
    )

    # Per-aggregate order: in each stream, the first copy of each event (a relay killed between
    # XADD and marking the rows repeats a batch) comes in the aggregate's outbox order.
    async with committed_engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT aggregate_id, event_id FROM outbox ORDER BY seq"))
        ).all()
    expected: dict[str, list[UUID]] = defaultdict(list)
    for aggregate_id, event_id in rows:
        expected[aggregate_id].append(event_id)
    actual: dict[str, list[UUID]] = defaultdict(list)
    seen: set[UUID] = set()
    for stream in (f"{prefix}order", f"{prefix}product"):
        for _, fields in await entries(redis, stream):
            e = Event.from_json(fields[b"event"])
            if e.event_id not in seen:
                seen.add(e.event_id)
                actual[e.aggregate_id].append(e.event_id)
    assert actual == expected
    for group, stream in (
        ("revenue", f"{prefix}order"),
        ("confirmation", f"{prefix}order"),
        ("cache", f"{prefix}product"),
    ):
        assert (await redis.xpending(stream, group))["pending"] == 0


async def test_a_worker_side_write_is_visible_through_the_app_cache_right_after_commit(
    live_server: LiveServer, committed_engine: AsyncEngine, committed_settings: Settings
) -> None:
    from httpx import AsyncClient

    from {{ cookiecutter.project_slug }}.orders.tasks import expire_unpaid
    from {{ cookiecutter.project_slug }}.worker.celery_app import create_celery
    from {{ cookiecutter.project_slug }}.worker.context import WorkerContextFactory

    async with committed_engine.begin() as connection:
        [buyer] = await insert_users(connection, 1)
        [product] = await insert_products(connection, [10])
    async with AsyncClient(base_url=live_server.base_url) as client:
        placed = await client.post(
            "/orders", json={"items": [line(product, 3)]}, headers=live_server.auth(buyer)
        )
        assert placed.status_code == 201
        async with committed_engine.begin() as connection:
            await connection.execute(
                text("UPDATE orders SET created_at = now() - interval '1 day' WHERE id = :id"),
                {"id": placed.json()["id"]},
            )
        # Read once: the product (stock 7) now sits in the app cache for its TTL.
        assert (await client.get(f"/products/{product}")).json()["stock"] == 7

        factory = WorkerContextFactory(committed_settings, create_celery(committed_settings))
        ctx = await factory.open()
        try:
            assert await expire_unpaid(ctx) == 1
        finally:
            await factory.close(ctx)
        # Right after the job's commit, not after a TTL: the worker's unit of work invalidated.
        assert (await client.get(f"/products/{product}")).json()["stock"] == 10
    types = await _count(
        committed_engine,
        "SELECT count(*) FROM outbox WHERE type IN ('order.expired', 'order.cancelled',"
        " 'product.stock_changed') AND occurred_at > now() - interval '1 minute'",
    )
    assert types == 4  # placed's stock change, the expiry, the cancellation, the stock returned
    async with committed_engine.connect() as connection:
        order_events = (
            await connection.execute(
                text(
                    "SELECT type, payload->>'status', payload->>'reason' FROM outbox"
                    " WHERE aggregate_type = 'order' AND aggregate_id = :id ORDER BY seq"
                ),
                {"id": placed.json()["id"]},
            )
        ).all()
    # The order's own key, in order: placed, then why it ended, then the status change.
    assert [tuple(row) for row in order_events] == [
        ("order.placed", "pending", None),
        ("order.expired", "cancelled", "expired"),
        ("order.cancelled", "cancelled", "expired"),
    ]
