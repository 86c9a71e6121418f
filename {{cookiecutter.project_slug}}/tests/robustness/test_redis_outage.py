"""A Redis outage pauses the long-lived processes, never stops them.

A throwaway Redis (AOF on, as production should run it) is the broker, RedBeat's store and the
event streams of a real beat, a real worker, an outbox relay and a stream consumer. It is
killed with SIGKILL while they run, events are committed during the outage, and it comes back
on the same port: every process is still alive, beat sends again, the worker runs what beat
sent, and every event committed before or during the outage is handled once. An order placed
during the outage (its confirmation job cannot be published) is confirmed after it, once,
through its ``order.placed`` outbox event and the ``confirmation`` consumer group.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.models import User
from {{ cookiecutter.project_slug }}.orders.schemas import OrderCreate, OrderLine
from {{ cookiecutter.project_slug }}.orders.service import place_order
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.after_commit import (
    celery_publisher,
    finish_commit,
    jobs_for,
)
from {{ cookiecutter.project_slug }}.patterns.consumer import Consumer
from {{ cookiecutter.project_slug }}.patterns.outbox import Event, Relay
from {{ cookiecutter.project_slug }}.pubsub.handlers import confirm_placed_order
from tests.factories import make_product, make_user
from tests.worker.helpers import eventually, finished, scalar
from tests.worker_harness import JobStack, requested_brokers, require_broker

pytestmark = pytest.mark.load

EXPIRE = "orders.expire_unpaid"


class ThrowawayRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False
            )
            if probe.stdout.strip() == b"PONG":
                return
            time.sleep(0.05)
        raise AssertionError("the throwaway Redis did not answer")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=requested_brokers())
def outage_stack(
    request: pytest.FixtureRequest,
    jobs_database_url: str,
    throwaway_redis: ThrowawayRedis,
    tmp_path: Path,
) -> Iterator[JobStack]:
    kind: str = request.param
    stack = JobStack(kind, jobs_database_url, throwaway_redis.url, tmp_path)
    if kind == "redis":
        stack.extra_env["CELERY_BROKER_URL"] = throwaway_redis.url
    else:
        require_broker(kind, stack.env()["CELERY_BROKER_URL"])
    stack.extra_env.update(
        {
            "SCHEDULE_EXPIRE_UNPAID_ORDERS_SECONDS": "1",
            "SCHEDULE_REVENUE_ROLLUP_SECONDS": "0",
            "SCHEDULE_CLEANUP_SECONDS": "0",
            "SCHEDULE_UPLOAD_SWEEP_SECONDS": "0",
            "BEAT_MAX_INTERVAL": "1",
            "BEAT_LOCK_TIMEOUT": "5",
        }
    )
    try:
        yield stack
    finally:
        stack.close()


def logged(events: list[dict[str, Any]], name: str) -> int:
    return sum(1 for e in events if e.get("event") == name)


async def commit_events(engine: AsyncEngine, stream_tag: str, ids: range) -> None:
    async with AsyncSession(engine) as session:
        await outbox.add(
            session,
            *(
                Event(
                    type="thing.done", aggregate_type=stream_tag, aggregate_id="a", payload={"n": n}
                )
                for n in ids
            ),
        )
        await session.commit()


async def test_beat_worker_relay_and_consumer_ride_out_a_redis_kill(
    outage_stack: JobStack, throwaway_redis: ThrowawayRedis, jobs_engine: AsyncEngine
) -> None:
    worker = outage_stack.start_worker("w1")
    worker.wait_for(lambda e: str(e.get("event", "")).endswith(" ready."), timeout=60)
    beat = outage_stack.start_beat("beat")

    async def worker_ran_beats_job() -> bool:
        return len(finished([worker], EXPIRE)) >= 1

    await eventually(worker_ran_beats_job, within=60, what="a scheduled job before the outage")

    # The relay and a consumer, in this process, on the same Redis.
    tag = f"outage{secrets.token_hex(3)}"
    prefix = f"test-events-{tag}:"
    redis = Redis.from_url(throwaway_redis.url, socket_timeout=1, socket_connect_timeout=1)
    seen: list[int] = []

    async def handler(session: AsyncSession, event: Event) -> None:
        if event.aggregate_type == tag:
            seen.append(int(event.payload["n"]))

    async def dead_letter(group: str, event: Event | None, error: str, deliveries: int) -> None:
        raise AssertionError(f"nothing should be dead-lettered: {error}")

    relay = Relay(jobs_engine, redis, lambda e: f"{prefix}{e.aggregate_type}", poll_interval=0.05)
    consumer = Consumer(
        redis,
        async_sessionmaker(jobs_engine),
        f"{prefix}{tag}",
        "outage",
        "c1",
        handler,
        dead_letter,
        block_ms=100,
    )
    confirmations = Consumer(
        redis,
        async_sessionmaker(jobs_engine, expire_on_commit=False),
        f"{prefix}order",
        "confirmation",
        "c1",
        confirm_placed_order,
        dead_letter,
        block_ms=100,
    )
    async with AsyncSession(jobs_engine, expire_on_commit=False) as session:
        buyer = await make_user(session, outage_stack.settings())
        product = await make_product(session, price_cents=300, stock=5)
        await session.commit()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(relay.run(stop)),
        asyncio.create_task(consumer.run(stop)),
        asyncio.create_task(confirmations.run(stop)),
    ]
    try:
        await commit_events(jobs_engine, tag, range(10))

        async def handled(count: int) -> bool:
            return len(seen) >= count

        await eventually(lambda: handled(10), within=30, what="events before the outage")

        throwaway_redis.kill()
        outage_started = time.monotonic()
        # Committed while Redis is gone: they wait in the outbox.
        await commit_events(jobs_engine, tag, range(10, 20))
        # An order, as the request places it: its job's publish fails (the broker is down
        # when it is this Redis), the order commits.
        async with AsyncSession(jobs_engine, expire_on_commit=False) as session:
            user = await session.get(User, buyer.id)
            assert user is not None
            jobs = jobs_for(session, celery_publisher(outage_stack.celery))
            placed = await place_order(
                session,
                jobs,
                user,
                OrderCreate(items=[OrderLine(product_id=product.id, quantity=1)]),
                None,
            )
            order_id = str(placed.order.id)
            await session.commit()
            await finish_commit(session)

        async def beat_noticed() -> bool:
            return logged(beat.events(), "beat.redis_unavailable") >= 2

        await eventually(beat_noticed, within=30, what="beat noticing the outage")
        ran_before = len(finished([worker], EXPIRE))
        throwaway_redis.start()
        outage = time.monotonic() - outage_started

        async def resumed() -> bool:
            confirmed = await scalar(
                jobs_engine,
                "SELECT count(*) FROM notifications WHERE idempotency_key = :k",
                k=f"order-confirmation:{order_id}",
            )
            return len(finished([worker], EXPIRE)) > ran_before and len(seen) >= 20 and confirmed

        recovery = await eventually(resumed, within=90, what="the processes resuming")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()

    assert worker.popen.poll() is None, "the worker exited during the outage"
    assert beat.popen.poll() is None, "beat exited during the outage"
    assert not [t for t in tasks if t.exception() is not None]
    assert sorted(seen) == list(range(20))  # each once, none lost
    assert logged(beat.events(), "beat.redis_recovered") >= 1
    sent = await scalar(
        jobs_engine,
        "SELECT count(*) FROM notifications WHERE idempotency_key = :k",
        k=f"order-confirmation:{order_id}",
    )
    assert sent == 1  # once, however many senders tried
    print(f"redis outage {outage:.1f}s; jobs and events resumed {recovery:.1f}s after restart")  # noqa: T201
