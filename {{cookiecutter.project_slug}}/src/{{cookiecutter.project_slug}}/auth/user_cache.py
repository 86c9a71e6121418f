"""The caller of an authenticated request without a database round trip per request.

Each process keeps the active users it looked up for ``USER_CACHE_TTL_SECONDS`` (a bounded
LRU; never the password hash). What the per-request primary-key lookup guaranteed, and what
stays of it:
- a user deactivated, demoted or deleted through this process (any ORM write to the row, or an
  UPDATE/DELETE statement on ``users``) is forgotten right after that commit: locked out at once;
- one changed elsewhere (another instance, a worker, SQL by hand) is locked out within
  ``USER_CACHE_TTL_SECONDS`` (default 10 s): the entry expires and the next request reads the
  row again. ``USER_CACHE_TTL_SECONDS=0`` turns the cache off (a lookup per request, as before).

A hit hands the endpoint a transient :class:`User` (attached to no session) carrying the row's
columns but the hash; services only read ``id`` and ``is_staff`` from the caller.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session

from {{ cookiecutter.project_slug }}.models import User
from {{ cookiecutter.project_slug }}.patterns.on_commit import on_commit

_INFO_KEY = "user_cache"


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    id: UUID
    email: str
    is_staff: bool
    created_at: datetime
    updated_at: datetime


class UserCache:
    """Active users by id for ``ttl`` seconds, at most ``max_entries`` (least recently used
    go first). One per process, on ``app.state.user_cache``."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[UUID, _Entry] = OrderedDict()

    def get(self, user_id: UUID) -> User | None:
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[user_id]
            return None
        self._entries.move_to_end(user_id)
        return User(
            id=entry.id,
            email=entry.email,
            is_active=True,
            is_staff=entry.is_staff,
            created_at=entry.created_at,
            updated_at=entry.updated_at,
        )

    def put(self, user: User) -> None:
        if self.ttl <= 0 or not user.is_active:
            return
        self._entries[user.id] = _Entry(
            expires=self._clock() + self.ttl,
            id=user.id,
            email=user.email,
            is_staff=user.is_staff,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )
        self._entries.move_to_end(user.id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, user_id: UUID) -> None:
        self._entries.pop(user_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def bind_user_cache(session: AsyncSession, cache: UserCache | None) -> None:
    """Let ``session``'s writes to users evict them from ``cache`` after its commit."""
    if cache is not None:
        session.sync_session.info[_INFO_KEY] = cache


def _bound(session: Session) -> UserCache | None:
    cache: UserCache | None = session.info.get(_INFO_KEY)
    return cache


# Class-level listeners: a session without a bound cache pays one dict lookup per flush.
@event.listens_for(Session, "after_flush")
def _forget_flushed(session: Session, flush_context: Any) -> None:
    cache = _bound(session)
    if cache is None:
        return
    # after_flush still sees the pre-flush dirty and deleted sets.
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, User):
            user_id = obj.id

            async def forget(user_id: UUID = user_id) -> None:
                cache.forget(user_id)

            on_commit(session, forget, key=(_INFO_KEY, user_id))


@event.listens_for(Session, "do_orm_execute")
def _forget_on_bulk_write(state: ORMExecuteState) -> None:
    cache = _bound(state.session)
    if cache is None or not (state.is_update or state.is_delete):
        return
    if state.bind_mapper is not None and state.bind_mapper.class_ is User:

        async def clear() -> None:
            cache.clear()

        on_commit(state.session, clear, key=(_INFO_KEY, "all"))
