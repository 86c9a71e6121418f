"""Pub-sub figures: relay throughput, commit→handler latency, SSE fan-out latency and memory.

1. A scratch database; 5,000 events committed, then relayed: events/s (relay CPU ms/event).
2. One consumer group in this process: commit → handler latency, p50/p99 over 200 events.
3. Three API instances (uvicorn), ``--subscribers`` SSE clients spread over them; one event
   committed and relayed; each client's receive time minus the commit time: p50/p99; RSS
   growth of the instances per connection.

    python -m bench.pubsub [--subscribers 1000]   # the issue's figure is 10,000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from devstack.api_process import uvicorn_command, wait_until_healthy
from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head
from {{ cookiecutter.project_slug }}.patterns import outbox
from {{ cookiecutter.project_slug }}.patterns.consumer import Consumer
from {{ cookiecutter.project_slug }}.patterns.outbox import Event, Relay
from {{ cookiecutter.project_slug }}.pubsub.events import stock_changed, stream_name

from .scratch import admin, cpu_seconds, database_url

RESULTS = Path(__file__).parent / "results" / "pubsub.json"
DATABASE = "{{ cookiecutter.project_slug }}_bench_pubsub"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


async def _relay_and_consumer(url: str, redis: Redis, prefix: str) -> dict[str, Any]:
    engine = create_async_engine(url, pool_size=4)
    relay = Relay(engine, redis, lambda e: stream_name(prefix, e), batch_size=500)
    events = [stock_changed(uuid4(), n) for n in range(5000)]
    async with AsyncSession(engine) as session:
        await outbox.add(session, *events)
        await session.commit()
    cpu, wall = time.process_time(), time.perf_counter()
    while await relay.publish_batch():
        pass
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    latencies: list[float] = []
    committed: dict[str, float] = {}

    async def handler(session: AsyncSession, event: Event) -> None:
        if str(event.event_id) in committed:
            latencies.append(time.perf_counter() - committed[str(event.event_id)])

    async def dead_letter(*_: Any) -> None:
        return None

    group_stream = f"{prefix}lat"
    consumer = Consumer(
        redis,
        async_sessionmaker(engine),
        group_stream,
        "bench",
        "b1",
        handler,
        dead_letter,
        block_ms=50,
    )
    await consumer.ensure_group()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    relay_lat = Relay(engine, redis, lambda e: group_stream, poll_interval=0.01)
    relay_task = asyncio.create_task(relay_lat.run(stop))
    for n in range(200):
        e = Event(type="bench", aggregate_type="lat", aggregate_id="x", payload={"n": n})
        async with AsyncSession(engine) as session:
            await outbox.add(session, e)
            await session.commit()
        committed[str(e.event_id)] = time.perf_counter()
        await asyncio.sleep(0.01)
    async with asyncio.timeout(30):
        while len(latencies) < 200:  # noqa: ASYNC110  # a benchmark's simple poll
            await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(task, relay_task)
    await engine.dispose()
    return {
        "relay_events": len(events),
        "relay_events_per_s": round(len(events) / wall),
        "relay_cpu_ms_per_event": round(cpu * 1000 / len(events), 4),
        "commit_to_handler_p50_ms": round(_pct(latencies, 0.5) * 1000, 1),
        "commit_to_handler_p99_ms": round(_pct(latencies, 0.99) * 1000, 1),
    }


async def _subscribe(port: int, connected: asyncio.Event) -> float:
    """One SSE client on a raw socket: a browser's EventSource costs the server the same, and
    an HTTP client library would cost this process ~10x more per message, which on two shared
    cores is latency charged to the server. Returns when its first ``data:`` line arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /events/catalog HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"SSE subscribe answered {status!r}")
        connected.set()
        while line := await reader.readline():
            if line.startswith(b"data:"):
                return time.perf_counter()
        raise RuntimeError("the stream ended before the event")
    finally:
        writer.close()


async def _fanout(url: str, redis: Redis, prefix: str, subscribers: int) -> dict[str, Any]:
    processes, ports = [], []
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EVENTS_STREAM_PREFIX": prefix,
        "LOG_LEVEL": "WARNING",
        "DB_POOL_SIZE": "2",
        "ENVIRONMENT": "test",
        "SECRET_KEY": secrets.token_urlsafe(48),
        # Heartbeats are not what is measured; one in the middle of the fan-out would be noise.
        "SSE_HEARTBEAT_SECONDS": "600",
    }
    for _ in range(3):
        port = free_port()
        command = uvicorn_command(port, backlog=16384)
        processes.append(subprocess.Popen(command, env=env))  # noqa: ASYNC220, S603
        ports.append(port)
    engine = create_async_engine(url)
    try:
        for process, port in zip(processes, ports, strict=True):
            base = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(wait_until_healthy, process, base, timeout=60)
        before = sum(_rss_kib(p.pid) for p in processes)
        tasks: list[asyncio.Task[float]] = []
        # Connected in batches: 10,000 SYNs at once overflow the listen queue into retries.
        for first in range(0, subscribers, 500):
            batch = [asyncio.Event() for _ in range(first, min(subscribers, first + 500))]
            tasks += [
                asyncio.create_task(_subscribe(ports[(first + i) % 3], event))
                for i, event in enumerate(batch)
            ]
            async with asyncio.timeout(120):
                await asyncio.gather(*(event.wait() for event in batch))
        # Every stream answered 200; each instance registers its subscriber as the response
        # starts, so poll its gauge before the event goes out.
        async with asyncio.timeout(60), httpx.AsyncClient() as http:
            while True:
                metrics = [(await http.get(f"http://127.0.0.1:{p}/metrics")).text for p in ports]
                if sum(_gauge(text, "sse_connections") for text in metrics) >= subscribers:
                    break
                await asyncio.sleep(0.2)
        during = sum(_rss_kib(p.pid) for p in processes)
        relay = Relay(engine, redis, lambda e: stream_name(prefix, e))
        async with AsyncSession(engine) as session:
            await outbox.add(session, stock_changed(uuid4(), 1))
            await session.commit()
        cpu_before = sum(cpu_seconds(p.pid) for p in processes)
        start = time.perf_counter()
        await relay.publish_batch()
        async with asyncio.timeout(120):
            received = await asyncio.gather(*tasks)
        cpu = sum(cpu_seconds(p.pid) for p in processes) - cpu_before
        latencies = [t - start for t in received]
        return {
            "subscribers": subscribers,
            "instances": 3,
            "delivered": len(latencies),
            "fanout_p50_ms": round(_pct(latencies, 0.5) * 1000, 1),
            "fanout_p99_ms": round(_pct(latencies, 0.99) * 1000, 1),
            "fanout_last_ms": round(max(latencies) * 1000, 1),
            # CPU of the three instances while the event went out, per client it reached.
            "server_cpu_us_per_delivery": round(cpu * 1e6 / len(latencies), 1),
            "rss_kib_per_connection": round((during - before) / subscribers, 1),
        }
    finally:
        for p in processes:
            p.send_signal(signal.SIGKILL)
            p.wait()
        await engine.dispose()


def _gauge(metrics: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == name
        for sample in family.samples
    )


async def _run(subscribers: int) -> dict[str, Any]:
    await admin(
        f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', f'CREATE DATABASE "{DATABASE}"'
    )
    url = database_url(DATABASE)
    await asyncio.to_thread(upgrade_to_head, url)
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    prefix = f"bench-events-{secrets.token_hex(3)}:"
    try:
        result = await _relay_and_consumer(url, redis, prefix)
        result |= await _fanout(url, redis, prefix, subscribers)
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.pubsub")
    parser.add_argument("--subscribers", type=int, default=1000)
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args.subscribers))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:32} {value}")
    return result


if __name__ == "__main__":
    main()
