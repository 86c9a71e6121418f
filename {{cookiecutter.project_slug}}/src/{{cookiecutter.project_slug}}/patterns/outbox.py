"""Transactional outbox: events written with the change that caused them, relayed to Redis Streams.

The failure it prevents: an event announced after the commit is lost when the process dies
between the commit and the publish, and an event announced before it describes a change that
may still roll back. Here the event is a row of the same transaction: it exists exactly when
the change does.

Guarantees:
- :func:`add` inserts the event into ``outbox`` in the caller's transaction (it only flushes):
  a rollback leaves no event, and none is visible to the relay before the commit;
- :class:`Relay` publishes every committed event at least once (a crash between XADD and
  marking the row published repeats the batch: consumers dedupe by ``event_id``);
- per-aggregate order: rows are published in ``seq`` order, one batch at a time across all
  relays (a transaction-scoped advisory lock is the lease, so two relays never interleave and
  the survivor takes over at once when one dies);
- an outage of Redis or Postgres pauses the relay, never stops it: the batch is retried with
  backoff, and events committed meanwhile are published, in order, once Redis is back (run
  Redis with AOF persistence: a Redis that restarts empty has lost what was relayed before);
- streams are trimmed to about ``maxlen`` entries (``XADD MAXLEN ~``); :func:`purge_published`
  deletes published rows older than a retention (the scheduler runs it).

The visibility pitfall: ``seq`` is taken at insert, so a transaction that inserts seq 10 can
commit after one that inserted seq 11. The relay never keeps a high-water mark (it re-reads
every ``published_at IS NULL`` row), so a late commit is published on the next poll, never
skipped. Within one aggregate the order is still commit order because writers of one aggregate
hold its row lock (the order row, the inventory row) *before* they call :func:`add`.

Wake-up: a short poll (``poll_interval``) of a partial index holding only unpublished rows,
not LISTEN/NOTIFY: NOTIFY takes a database-wide lock at commit that serialises every notifying
transaction (the order hot path), needs a dedicated connection that poolers (PgBouncer in
transaction mode) do not keep, and a missed notification still needs the poll as a backstop.

Needs: SQLAlchemy async + asyncpg, an ``outbox`` table (models/outbox.py), redis.asyncio,
orjson, structlog, patterns/backoff.py. Imports no domain code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
import structlog
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from uuid_utils.compat import uuid7

from {{ cookiecutter.project_slug }}.patterns.backoff import reconnecting
from {{ cookiecutter.project_slug }}.patterns.tracing import current_context

log = structlog.get_logger(__name__)

# Any constant: the relays of one database agree on it.
RELAY_LOCK_KEY = 0x0DB0_0701


@dataclass(frozen=True, slots=True)
class Event:
    """The envelope. ``aggregate_type`` + ``aggregate_id`` is the ordering key."""

    type: str
    aggregate_type: str
    aggregate_id: str
    payload: Mapping[str, Any]
    version: int = 1
    event_id: UUID = field(default_factory=uuid7)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    request_id: str | None = None
    trace_context: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "event_id": str(self.event_id),
                "type": self.type,
                "version": self.version,
                "aggregate_type": self.aggregate_type,
                "aggregate_id": self.aggregate_id,
                "occurred_at": self.occurred_at.isoformat(),
                "payload": dict(self.payload),
                "request_id": self.request_id,
                "trace_context": dict(self.trace_context),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        data = orjson.loads(raw)
        return cls(
            type=data["type"],
            aggregate_type=data["aggregate_type"],
            aggregate_id=data["aggregate_id"],
            payload=data["payload"],
            version=data["version"],
            event_id=UUID(data["event_id"]),
            occurred_at=datetime.fromisoformat(data["occurred_at"]),
            request_id=data.get("request_id"),
            trace_context=data.get("trace_context") or {},
        )


def _context() -> tuple[str | None, dict[str, str]]:
    bound = structlog.contextvars.get_contextvars()
    request_id = bound.get("request_id")
    # The current span's (patterns/tracing.py), else a trace context bound in the log context.
    trace = current_context() or {
        k: str(bound[k]) for k in ("traceparent", "tracestate") if bound.get(k)
    }
    return (str(request_id) if request_id else None), trace


_INSERT = text(
    "INSERT INTO outbox (event_id, type, version, aggregate_type, aggregate_id, occurred_at,"
    " payload, request_id, trace_context) VALUES (:event_id, :type, :version,"
    " :aggregate_type, :aggregate_id, :occurred_at, CAST(:payload AS jsonb), :request_id,"
    " CAST(:trace_context AS jsonb))"
)


async def add(session: AsyncSession, *events: Event) -> None:
    """Write ``events`` into the session's transaction (call after taking the aggregate's lock).

    The request id bound in structlog's context and the current trace context are captured
    when the event does not carry its own.
    """
    if not events:
        return
    request_id, trace = _context()
    await session.execute(
        _INSERT,
        [
            {
                "event_id": event.event_id,
                "type": event.type,
                "version": event.version,
                "aggregate_type": event.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "occurred_at": event.occurred_at,
                "payload": orjson.dumps(dict(event.payload)).decode(),
                "request_id": event.request_id or request_id,
                "trace_context": orjson.dumps(dict(event.trace_context or trace)).decode(),
            }
            for event in events
        ],
    )


_CLAIM = text(
    "SELECT seq, event_id, type, version, aggregate_type, aggregate_id, occurred_at, payload,"
    " request_id, trace_context FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT :limit"
)
_MARK = text(
    "UPDATE outbox SET published_at = now(), stream_id = data.stream_id"
    " FROM (SELECT unnest(CAST(:seqs AS bigint[])) AS seq,"
    " unnest(CAST(:ids AS text[])) AS stream_id) AS data WHERE outbox.seq = data.seq"
)


@dataclass
class Relay:
    """Moves committed outbox rows to Redis Streams; run one or more per database."""

    engine: AsyncEngine
    redis: Redis
    # Event type -> stream name: every event of one aggregate must map to one stream.
    stream_for: Callable[[Event], str]
    maxlen: int = 100_000
    batch_size: int = 500
    poll_interval: float = 0.1
    published: int = 0

    async def publish_batch(self) -> int:
        """Publish the oldest unpublished rows once; returns how many (0: none, or another
        relay holds the lease)."""
        async with self.engine.connect() as conn, conn.begin():
            got = await conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RELAY_LOCK_KEY}
            )
            if not got:
                return 0
            rows = (await conn.execute(_CLAIM, {"limit": self.batch_size})).all()
            if not rows:
                return 0
            events = [
                Event(
                    type=r.type,
                    aggregate_type=r.aggregate_type,
                    aggregate_id=r.aggregate_id,
                    payload=r.payload,
                    version=r.version,
                    event_id=r.event_id,
                    occurred_at=r.occurred_at,
                    request_id=r.request_id,
                    trace_context=r.trace_context,
                )
                for r in rows
            ]
            # One round trip, in seq order; a MULTI keeps a partial failure from reordering.
            async with self.redis.pipeline(transaction=True) as pipe:
                for event in events:
                    pipe.xadd(
                        self.stream_for(event),
                        {"event": event.to_json(), "type": event.type},
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                stream_ids = await pipe.execute()
            await conn.execute(
                _MARK,
                {
                    "seqs": [r.seq for r in rows],
                    "ids": [i.decode() if isinstance(i, bytes) else str(i) for i in stream_ids],
                },
            )
        self.published += len(rows)
        log.debug("outbox.published", count=len(rows), last_seq=rows[-1].seq)
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set. A failed batch (Redis or Postgres away) was not
        marked: it is retried with backoff (patterns/backoff.py) until the outage ends, and
        the rows written meanwhile wait in the outbox."""
        while not stop.is_set():
            try:
                count: int = await reconnecting(stop, "outbox.relay_failed")(self.publish_batch)
            except Exception:
                if stop.is_set():
                    break
                raise
            if count < self.batch_size:
                await _sleep(stop, self.poll_interval)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def oldest_unpublished_age(engine: AsyncEngine) -> float:
    """Seconds since the oldest unpublished event was written (0: none): the outbox lag."""
    async with engine.connect() as conn:
        age = await conn.scalar(
            text(
                "SELECT EXTRACT(EPOCH FROM now() - created_at) FROM outbox"
                " WHERE published_at IS NULL ORDER BY seq LIMIT 1"
            )
        )
    return float(age or 0.0)


async def purge_published(session: AsyncSession, older_than: timedelta) -> int:
    """Delete rows published more than ``older_than`` ago; returns how many."""
    result = await session.execute(
        text("DELETE FROM outbox WHERE published_at < now() - CAST(:age AS interval)"),
        {"age": older_than},
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def purge_inbox(session: AsyncSession, before: datetime) -> int:
    """Delete consumers' inbox rows handled before ``before``; returns how many."""
    result = await session.execute(
        text("DELETE FROM inbox WHERE handled_at < :before"), {"before": before}
    )
    return int(getattr(result, "rowcount", 0) or 0)
