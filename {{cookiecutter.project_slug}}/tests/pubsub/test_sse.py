"""SSE proofs on three real API instances (uvicorn processes) and the real relay path:
every client gets every catalog event in order, an instance SIGKILLed mid-stream loses its
clients nothing (they resume with Last-Event-ID on another), and a client that never reads is
dropped while the instance's memory stays bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from devstack.api_process import uvicorn_command, wait_until_healthy
from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.outbox import Relay
from {{ cookiecutter.project_slug }}.pubsub.events import stock_changed, stream_name

pytestmark = pytest.mark.load

INSTANCES = 3
CLIENTS = 300
EVENTS = 20


def _start(
    settings: Settings, prefix: str, log: Path, **extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key.get_secret_value(),
        "LOG_LEVEL": "WARNING",
        "DB_POOL_SIZE": "2",
        "CACHE_KEY_PREFIX": settings.cache_key_prefix,
        "EVENTS_STREAM_PREFIX": prefix,
        **extra,
    }
    command = uvicorn_command(port)
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
async def instances(
    committed_settings: Settings, prefix: str, tmp_path: Path
) -> AsyncIterator[list[tuple[subprocess.Popen[bytes], str]]]:
    started = [
        _start(committed_settings, prefix, tmp_path / f"api-{i}.log") for i in range(INSTANCES)
    ]
    try:
        await asyncio.gather(
            *(asyncio.to_thread(wait_until_healthy, process, url) for process, url in started)
        )
        yield started
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait()


class Client:
    """An EventSource: reads ``id:``/``data:`` lines, reconnects with Last-Event-ID."""

    def __init__(self, urls: list[str], home: int) -> None:
        self.urls, self.home = urls, home
        self.ids: list[str] = []
        self.stocks: list[int] = []
        self.reconnects = 0
        self.connected = asyncio.Event()

    async def run(self, http: httpx.AsyncClient, want: int) -> None:
        attempt = 0
        while len(self.stocks) < want:
            url = self.urls[(self.home + attempt) % len(self.urls)]
            headers = {"Last-Event-ID": self.ids[-1]} if self.ids else {}
            try:
                async with http.stream("GET", f"{url}/events/catalog", headers=headers) as reply:
                    assert reply.status_code == 200
                    assert reply.headers["content-type"].startswith("text/event-stream")
                    self.connected.set()
                    current: str | None = None
                    async for line in reply.aiter_lines():
                        if line.startswith("id:"):
                            current = line[3:].strip()
                        elif line.startswith("data:") and current:
                            event = orjson.loads(line[5:].strip())
                            self.ids.append(current)
                            self.stocks.append(int(event["payload"]["stock"]))
                            current = None
                            if len(self.stocks) >= want:
                                return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(0.05)


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


async def _publish(engine: AsyncEngine, relay: Relay, product: str, stocks: range) -> None:
    from uuid import UUID

    for stock in stocks:
        async with AsyncSession(engine) as session:
            await outbox.add(session, stock_changed(UUID(product), stock))
            await session.commit()
        await relay.publish_batch()


async def test_300_clients_on_3_instances_get_every_event_in_order_through_a_sigkill(
    instances: list[tuple[subprocess.Popen[bytes], str]],
    committed_engine: AsyncEngine,
    redis: Redis,
    prefix: str,
) -> None:
    urls = [url for _, url in instances]
    relay = Relay(committed_engine, redis, lambda e: stream_name(prefix, e))
    product = "0190c0de-0000-7000-8000-000000000001"
    clients = [Client(urls, i % INSTANCES) for i in range(CLIENTS)]
    limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0)) as http:
        tasks = [asyncio.create_task(c.run(http, EVENTS)) for c in clients]
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.connected.wait() for c in clients))
        await _publish(committed_engine, relay, product, range(EVENTS // 2))
        # Mid-stream: instance 0 dies without a word; its clients resume elsewhere.
        async with asyncio.timeout(60):
            while min(len(c.stocks) for c in clients) < 1:
                await asyncio.sleep(0.05)
        instances[0][0].send_signal(signal.SIGKILL)
        await _publish(committed_engine, relay, product, range(EVENTS // 2, EVENTS))
        async with asyncio.timeout(120):
            await asyncio.gather(*tasks)

    for c in clients:
        assert c.stocks == list(range(EVENTS))  # all of them, in order, no duplicates
    moved = [c for c in clients if c.home == 0]
    assert moved
    assert all(c.reconnects >= 1 for c in moved)


async def test_a_client_that_never_reads_is_dropped_and_memory_stays_bounded(
    committed_settings: Settings,
    committed_engine: AsyncEngine,
    redis: Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    process, url = _start(
        committed_settings,
        prefix,
        tmp_path / "api.log",
        SSE_QUEUE_SIZE="16",
        SSE_SEND_TIMEOUT_SECONDS="2",
    )
    try:
        await asyncio.to_thread(wait_until_healthy, process, url)
        host, port = url.removeprefix("http://").split(":")
        # A raw socket with a tiny receive buffer that sends the request and never reads.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(b"GET /events/catalog HTTP/1.1\r\nHost: x\r\n\r\n")
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(10):
                while "sse_connections 1.0" not in (await http.get(f"{url}/metrics")).text:
                    await asyncio.sleep(0.05)
            relay = Relay(committed_engine, redis, lambda e: stream_name(prefix, e))
            product = "0190c0de-0000-7000-8000-000000000002"
            from uuid import UUID

            async with AsyncSession(committed_engine) as session:
                await outbox.add(session, *(stock_changed(UUID(product), n) for n in range(3000)))
                await session.commit()
            while await relay.publish_batch():
                pass
            async with asyncio.timeout(30):
                while True:
                    text = (await http.get(f"{url}/metrics")).text
                    if "sse_dropped_clients_total 1.0" in text and "sse_connections 0.0" in text:
                        break
                    await asyncio.sleep(0.1)
        rss_kib = _rss_kib(process.pid)
        assert rss_kib < 300 * 1024  # the 3,000 events were not kept for the client
        sock.close()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
