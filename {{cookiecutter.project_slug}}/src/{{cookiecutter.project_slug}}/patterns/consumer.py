"""Stream consumers: consumer groups with an inbox, so each handler's effect happens once.

Delivery is at-least-once (the relay may publish twice; a consumer that dies before XACK gets
its messages redelivered). Effects are *effectively once*: the handler runs in a transaction
that also inserts ``(event_id, consumer_group)`` into ``inbox``; a redelivered event hits the
primary key, the insert does nothing and the handler is skipped. The ack follows the commit.

Guarantees:
- one handler effect per (event, group), for effects written in the given session; effects
  outside the database (an e-mail, a purge) should be idempotent or registered with
  ``on_commit`` (they then run at most once per successful commit);
- a message pending on a dead consumer for ``claim_idle_ms`` is taken over (XAUTOCLAIM);
- a message delivered ``max_deliveries`` times without success goes to ``dead_letter`` and is
  acked, so one poison event never blocks the others;
- a Redis outage pauses consumption, never stops it (retried with backoff); a Redis that
  came back without its data gets the group re-created (``NOGROUP``);
- per-stream order for one consumer of a group; run one consumer per group and stream when
  per-key order matters to the handler (takeovers after a crash redeliver in stream order).

Needs: redis.asyncio, SQLAlchemy async, an ``inbox`` table (models/outbox.py), and a
``finish`` callable that runs the session's after-commit work (patterns/on_commit.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.patterns.backoff import reconnecting
from {{ cookiecutter.project_slug }}.patterns.outbox import Event
from {{ cookiecutter.project_slug }}.patterns.tracing import continued

log = structlog.get_logger(__name__)

Handler = Callable[[AsyncSession, Event], Awaitable[None]]
DeadLetter = Callable[[str, Event | None, str, int], Awaitable[None]]
Finish = Callable[[AsyncSession], Awaitable[Any]]

_INBOX = text(
    "INSERT INTO inbox (event_id, consumer_group, event_type) VALUES (:event_id, :grp, :type)"
    " ON CONFLICT DO NOTHING"
)


def _event_field(fields: dict[Any, Any]) -> bytes:
    raw = fields.get(b"event", fields.get("event"))
    if raw is None:
        raise ValueError("no event field")
    return raw if isinstance(raw, bytes) else str(raw).encode()


async def _no_finish(session: AsyncSession) -> None:
    return None


@dataclass
class Consumer:
    redis: Redis
    # Opens the handler's session (async_sessionmaker, or one that binds clients first).
    sessionmaker: Callable[[], AsyncSession]
    stream: str
    group: str
    name: str
    handler: Handler
    dead_letter: DeadLetter
    finish: Finish = _no_finish
    max_deliveries: int = 5
    claim_idle_ms: int = 5_000
    batch_size: int = 100
    block_ms: int = 200
    handled: int = 0
    duplicates: int = 0
    _errors: dict[str, str] = field(default_factory=dict)
    _group_ready: bool = False
    _last_claim: float = 0.0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _handle(self, message_id: str, fields: dict[Any, Any]) -> bool:
        try:
            event = Event.from_json(_event_field(fields))
        except Exception as exc:  # unreadable: retrying cannot help
            await self.dead_letter(self.group, None, f"unreadable: {exc}", 0)
            return True
        try:
            with continued(
                f"events.handle {self.group}",
                event.trace_context,
                **{"messaging.destination.name": self.stream, "event.type": event.type},
            ):
                await self._handle_once(event)
        except Exception as exc:
            self._errors[message_id] = f"{type(exc).__name__}: {exc}"[:2000]
            log.warning(
                "event.handler_failed",
                group=self.group,
                event_type=event.type,
                event_id=str(event.event_id),
                exc_info=True,
            )
            return False
        return True

    async def _handle_once(self, event: Event) -> None:
        """The handler's effect and the inbox row in one transaction; a duplicate does nothing."""
        async with self.sessionmaker() as session:
            inserted = await session.execute(
                _INBOX, {"event_id": event.event_id, "grp": self.group, "type": event.type}
            )
            if getattr(inserted, "rowcount", 0) == 0:
                self.duplicates += 1
                return
            await self.handler(session, event)
            await session.commit()
            await self.finish(session)
        self.handled += 1

    async def _process(self, messages: list[tuple[Any, dict[Any, Any]]]) -> None:
        for raw_id, fields in messages:
            message_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if await self._handle(message_id, fields):
                self._errors.pop(message_id, None)
                await self.redis.xack(self.stream, self.group, message_id)

    async def claim_stale(self) -> int:
        """Take over messages idle for ``claim_idle_ms`` (a dead consumer's, or our failures),
        dead-lettering those past the delivery cap. Returns how many were claimed."""
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, "0-0", count=self.batch_size
        )
        messages = [m for m in reply[1] if m[1] is not None] if reply else []
        if not messages:
            return 0
        counts = {
            (
                p["message_id"].decode() if isinstance(p["message_id"], bytes) else p["message_id"]
            ): int(p["times_delivered"])
            for p in await self.redis.xpending_range(
                self.stream,
                self.group,
                min=messages[0][0],
                max=messages[-1][0],
                count=len(messages) * 2,
                consumername=self.name,
            )
        }
        retry: list[tuple[Any, dict[Any, Any]]] = []
        for raw_id, fields in messages:
            message_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            deliveries = counts.get(message_id, 1)
            if deliveries > self.max_deliveries:
                try:
                    event: Event | None = Event.from_json(_event_field(fields))
                except Exception:
                    event = None
                error = self._errors.pop(message_id, "delivery limit reached")
                await self.dead_letter(self.group, event, error, deliveries - 1)
                await self.redis.xack(self.stream, self.group, message_id)
                log.error(
                    "event.dead_lettered",
                    group=self.group,
                    message_id=message_id,
                    deliveries=deliveries - 1,
                )
            else:
                retry.append((raw_id, fields))
        await self._process(retry)
        return len(messages)

    async def poll(self) -> int:
        reply: Any = await self.redis.xreadgroup(
            self.group, self.name, {self.stream: ">"}, count=self.batch_size, block=self.block_ms
        )
        total = 0
        for _, messages in reply or []:
            await self._process(messages)
            total += len(messages)
        return total

    async def step(self) -> int:
        """One round: (re)create the group if needed, take over stale messages now and then,
        read new ones. Returns how many new messages were handled."""
        if not self._group_ready:
            await self.ensure_group()
            self._group_ready = True
        try:
            loop = asyncio.get_running_loop()
            if loop.time() - self._last_claim > self.claim_idle_ms / 2000:
                self._last_claim = loop.time()
                await self.claim_stale()
            return await self.poll()
        except ResponseError as exc:
            # A Redis that restarted without its data has no group (or stream) any more.
            if "NOGROUP" in str(exc):
                self._group_ready = False
            raise

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; a Redis (or Postgres) outage is ridden out with
        backoff (patterns/backoff.py), and the group picks up where it left off."""
        while not stop.is_set():
            try:
                await reconnecting(
                    stop, "event.consumer_failed", group=self.group, stream=self.stream
                )(self.step)
            except Exception:
                if stop.is_set():
                    break
                raise
