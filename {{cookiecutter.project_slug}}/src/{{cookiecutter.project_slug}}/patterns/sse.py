"""Live events over SSE: one Redis Streams reader per process, fanned out to bounded queues.

The failure it prevents: one Redis connection (and one XREAD) per browser tab, which runs
Redis out of connections long before the API runs out of sockets; and an unbounded buffer per
slow client, which grows until the process dies.

Guarantees:
- one reader task per :class:`Fanout` (the app's lifespan owns it) reads every stream it
  serves with ``XREAD BLOCK`` and puts each entry into each matching subscriber's queue,
  encoded as an SSE message once, whatever the number of clients;
- a subscriber's queue holds at most ``queue_size`` events: a client that cannot keep up is
  dropped with an ``event: dropped`` reason (it reconnects with ``Last-Event-ID``), never
  buffered without bound;
- ``Last-Event-ID`` resumes from the stream: the subscription starts live first, then reads
  the missed entries with ``XRANGE``, and skips live duplicates, so nothing falls in between
  (within the stream's ``MAXLEN`` retention);
- :meth:`Fanout.drain` (SIGTERM: the app's drain begins) sends every client
  ``event: reconnect`` and ends its stream, so a deploy loses nothing: the client's
  EventSource reconnects (to another instance) with its last id.

Needs: redis.asyncio, sse-starlette (the response, heartbeats as SSE comments, the client
disconnect watch), orjson, structlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger(__name__)

Match = Callable[[dict[str, Any]], bool]


def _id(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _after(a: str, b: str) -> bool:
    """Stream id ``a`` comes after ``b``."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))


# What a subscriber's queue carries: a stream entry's id and its SSE message, encoded once.
Message = tuple[str, bytes]
# Put in a subscriber's queue to wake its stream when it is closed.
_WAKE: Message = ("", b"")


@dataclass(eq=False)
class Subscriber:
    stream: str
    match: Match
    # Unbounded as an asyncio.Queue, bounded by Fanout (queue_size): the wake-up that close()
    # puts must always fit, even in the full queue of a client being dropped.
    queue: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    reason: str | None = None

    def close(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.queue.put_nowait(_WAKE)


@dataclass
class FanoutMetrics:
    """Plain counters; the app exports them (patterns/metrics.py style gauges)."""

    connected: int = 0
    dropped: int = 0
    delivered: int = 0
    reader_timeouts: int = 0


class Fanout:
    def __init__(
        self,
        redis: Redis,
        streams: list[str],
        *,
        decode: Callable[[dict[Any, Any]], dict[str, Any]],
        queue_size: int = 256,
        block_ms: int = 500,
    ) -> None:
        self.redis = redis
        self.streams = streams
        self.decode = decode
        self.queue_size = queue_size
        self.block_ms = block_ms
        self.metrics = FanoutMetrics()
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._draining = False

    async def start(self) -> None:
        # No Redis call here: the app starts (and reports Redis in /readyz) while Redis is down.
        self._task = asyncio.create_task(self._read())

    async def _positions(self) -> dict[str, str]:
        # "$" resolved once: entries after this point go live; older ones are history.
        while True:
            try:
                last: dict[str, str] = {}
                for stream in self.streams:
                    newest: Any = await self.redis.xrevrange(stream, count=1)
                    last[stream] = _id(newest[0][0]) if newest else "0-0"
                return last
            except Exception:
                log.warning("sse.reader_waiting_for_redis")
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        last = await self._positions()
        while True:
            try:
                positions: dict[Any, Any] = dict(last)
                reply: Any = await self.redis.xread(positions, block=self.block_ms, count=500)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RedisTimeoutError):
                # The reply came later than the socket timeout: a loop busy with thousands of
                # clients, or a slow Redis. Nothing was read past `last`: ask again at once.
                self.metrics.reader_timeouts += 1
                log.warning("sse.reader_timeout")
                continue
            except Exception:
                log.exception("sse.reader_failed")
                await asyncio.sleep(1.0)
                continue
            for raw_stream, entries in reply or []:
                stream = _id(raw_stream)
                for raw_id, fields in entries:
                    entry_id = _id(raw_id)
                    last[stream] = entry_id
                    self._fan_out(stream, entry_id, self.decode(fields))

    def _fan_out(self, stream: str, entry_id: str, event: dict[str, Any]) -> None:
        # Encoded once per event, not once per client: a 10,000-client fan-out is then 10,000
        # queue puts and socket writes, with no JSON or SSE framing in the loop.
        message: Message | None = None
        for subscriber in list(self._subscribers):
            if subscriber.stream != stream or subscriber.reason or not subscriber.match(event):
                continue
            if subscriber.queue.qsize() >= self.queue_size:
                # The client reads slower than events arrive: drop it, not the process.
                self.metrics.dropped += 1
                subscriber.close("slow_consumer")
                log.info("sse.client_dropped", reason="slow_consumer", stream=stream)
                continue
            if message is None:
                message = (entry_id, encode(entry_id, event))
            subscriber.queue.put_nowait(message)

    async def stop(self) -> None:
        self.drain()
        if self._task is not None:
            self._task.cancel()
            # Bounded: a reader stuck in a socket read must not hold the shutdown.
            await asyncio.wait({self._task}, timeout=2.0)

    def drain(self) -> None:
        """Tell every client to reconnect elsewhere (SIGTERM); new ones are refused."""
        self._draining = True
        for subscriber in list(self._subscribers):
            subscriber.close("shutdown")

    @property
    def draining(self) -> bool:
        return self._draining

    async def events(
        self, stream: str, match: Match, *, last_event_id: str | None
    ) -> AsyncIterator[bytes]:
        """One client's SSE stream, encoded: history after ``last_event_id``, then live."""
        if self._draining:
            yield _RECONNECT
            return
        subscriber = Subscriber(stream, match)
        self._subscribers.add(subscriber)
        self.metrics.connected += 1
        try:
            newest = last_event_id
            if last_event_id:
                history: Any = await self.redis.xrange(stream, min=f"({last_event_id}")
                for raw_id, fields in history:
                    event = self.decode(fields)
                    newest = _id(raw_id)
                    if match(event):
                        self.metrics.delivered += 1
                        yield encode(newest, event)
            while True:
                entry_id, message = await subscriber.queue.get()
                if subscriber.reason and (subscriber.reason != "shutdown" or not entry_id):
                    # Dropped: stop now. Shutdown: what was queued before the wake-up still
                    # goes out, then the reconnect.
                    break
                if not entry_id or (newest and not _after(entry_id, newest)):
                    continue  # a stale wake-up, or already sent from the history
                newest = entry_id
                self.metrics.delivered += 1
                yield message
            if subscriber.reason == "shutdown":
                yield _RECONNECT
            else:
                yield (
                    b"event: dropped\r\ndata: %s\r\n\r\n" % (subscriber.reason or "closed").encode()
                )
        finally:
            self._subscribers.discard(subscriber)
            self.metrics.connected -= 1


def encode(entry_id: str, event: dict[str, Any]) -> bytes:
    """One SSE message: ``id``, ``event`` (the type) and the event as one line of JSON data."""
    data = orjson.dumps(event)  # never holds a raw newline: JSON escapes them
    return b"id: %s\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
        entry_id.encode(),
        str(event["type"]).encode(),
        data,
    )


_RECONNECT = b"event: reconnect\r\ndata: shutdown\r\nretry: 1000\r\n\r\n"
