"""The two SSE properties a single instance owes each client: ``/events/orders`` carries the
caller's own order events and nobody else's, and an idle stream keeps getting heartbeats (so
proxies and browsers do not time it out). One real uvicorn process, the real relay path."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from devstack.api_process import wait_until_healthy

from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.outbox import Relay
from {{ cookiecutter.project_slug }}.pubsub.events import ORDER_PAID, ORDER_PLACED, order_event, stream_name
from tests.factories import insert_users
from tests.pubsub.test_sse import _start

HEARTBEAT_SECONDS = 1
# From the start of the stream: the client replays history, so nothing races its connect.
FROM_THE_START = {"Last-Event-ID": "0-0"}


@pytest.fixture
async def instance(committed_settings: Settings, prefix: str, tmp_path: Path) -> AsyncIterator[str]:
    process, url = _start(
        committed_settings,
        prefix,
        tmp_path / "api.log",
        SSE_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
    )
    try:
        wait_until_healthy(process, url)
        yield url
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def auth(settings: Settings, user_id: UUID) -> dict[str, str]:
    token, _ = create_access_token(user_id, settings)
    return {"Authorization": f"Bearer {token}"}


async def read_events(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], want: int
) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    async with http.stream("GET", f"{url}/events/orders", headers=headers) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                events.append(orjson.loads(line[5:].strip()))
                if len(events) >= want:
                    break
    return events


async def test_the_order_stream_carries_only_the_callers_own_events(
    instance: str,
    committed_settings: Settings,
    committed_engine: AsyncEngine,
    redis: Redis,
    prefix: str,
) -> None:
    async with committed_engine.begin() as connection:
        alice, bob = await insert_users(connection, 2)
    relay = Relay(committed_engine, redis, lambda e: stream_name(prefix, e))
    # Interleaved on one stream: alice, bob, alice, bob, ... ; alice's last one is the marker.
    events = [
        order_event(kind, uuid4(), owner, status="pending", total_cents=100 + n)
        for n in range(3)
        for owner in (alice, bob)
        for kind in (ORDER_PLACED, ORDER_PAID)
    ]
    async with AsyncSession(committed_engine) as session:
        await outbox.add(session, *events)
        await session.commit()
    while await relay.publish_batch():
        pass

    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
        for user in (alice, bob):
            headers = {**auth(committed_settings, user), **FROM_THE_START}
            # Six are owed; the stream interleaves the two users, so a foreign event would
            # arrive among them.
            async with asyncio.timeout(30):
                seen = await read_events(http, instance, headers, want=6)
            assert {e["payload"]["user_id"] for e in seen} == {str(user)}  # type: ignore[index]
            own = [e for e in events if e.payload["user_id"] == str(user)]
            assert [e["event_id"] for e in seen] == [str(e.event_id) for e in own]
        anonymous = await http.get(f"{instance}/events/orders")
        assert anonymous.status_code == 401


async def test_an_idle_stream_gets_heartbeats(instance: str) -> None:
    heartbeats = 0
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http,
        http.stream("GET", f"{instance}/events/catalog") as reply,
    ):
        assert reply.status_code == 200
        # No event is published: the only lines are the heartbeat comments (": ping ...").
        async with asyncio.timeout(10 * HEARTBEAT_SECONDS):
            async for line in reply.aiter_lines():
                assert not line.startswith("data:"), line
                if line.startswith(":"):
                    heartbeats += 1
                    if heartbeats == 3:
                        break
    assert heartbeats == 3
