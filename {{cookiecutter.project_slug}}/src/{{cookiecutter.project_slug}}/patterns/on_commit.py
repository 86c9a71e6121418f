"""Run side effects after the transaction that caused them commits; forget them on rollback.

The failure it prevents: a write invalidates the cache (or purges the CDN, or sends a job)
*before* its transaction commits. A reader squeezes in between, misses, reads the old row
(the new one is not committed yet) and puts it back in the cache, where it stays until the
TTL. Or the transaction rolls back and the side effect announced a change that never happened.

Guarantees:
- a callback registered with :func:`on_commit` runs only after the session's outermost
  transaction commits, and only when :func:`run_after_commit` is awaited (by whoever owns the
  commit: the request's session dependency, a job's unit of work), in registration order;
- a rollback of the outermost transaction discards every pending callback; a rollback to a
  savepoint discards the callbacks registered since that savepoint and keeps the earlier ones;
- callbacks registered with the same ``key`` in one transaction run once (ten writes to one
  product purge it once);
- a callback that raises is logged (``after_commit.callback_failed``) and the others still run:
  the data is committed, and failing the response now would tell the client a lie.

What it does not guarantee: a crash between the commit and the callbacks loses them. For cache
invalidation and CDN purges the TTL bounds the damage; for events that must not be lost, use a
transactional outbox.

Needs: SQLAlchemy (session events) and structlog. Wire it by calling
``await run_after_commit(session)`` right after ``await session.commit()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import structlog
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

log = structlog.get_logger(__name__)

Callback = Callable[[], Awaitable[None]]

_INFO_KEY = "after_commit_callbacks"


@dataclass(slots=True)
class _Pending:
    callback: Callback
    key: Hashable | None


@dataclass(slots=True)
class _CommitCallbacks:
    pending: list[_Pending] = field(default_factory=list)
    released: list[_Pending] = field(default_factory=list)
    # Savepoint -> how many callbacks were pending when it began.
    savepoints: dict[SessionTransaction, int] = field(default_factory=dict)

    def add(self, callback: Callback, key: Hashable | None) -> None:
        if key is not None and any(p.key == key for p in self.pending):
            return
        self.pending.append(_Pending(callback, key))


def _sync_session(session: AsyncSession | Session) -> Session:
    return session.sync_session if isinstance(session, AsyncSession) else session


def _state(session: Session) -> _CommitCallbacks | None:
    state: _CommitCallbacks | None = session.info.get(_INFO_KEY)
    return state


def on_commit(
    session: AsyncSession | Session, callback: Callback, *, key: Hashable | None = None
) -> None:
    """Run ``callback`` after ``session``'s transaction commits (never if it rolls back)."""
    sync_session = _sync_session(session)
    state = _state(sync_session)
    if state is None:
        state = _CommitCallbacks()
        sync_session.info[_INFO_KEY] = state
        # A savepoint opened before the first callback is still a boundary for it.
        nested = sync_session.get_nested_transaction()
        if nested is not None:
            state.savepoints[nested] = 0
    state.add(callback, key)


async def run_after_commit(session: AsyncSession | Session) -> int:
    """Run the callbacks the last commit released, in order; returns how many succeeded."""
    state = _state(_sync_session(session))
    if state is None or not state.released:
        return 0
    callbacks, state.released = state.released, []
    succeeded = 0
    for pending in callbacks:
        try:
            await pending.callback()
        except Exception:
            log.exception("after_commit.callback_failed", key=str(pending.key))
        else:
            succeeded += 1
    return succeeded


# Class-level listeners: one registration for every session in the process; a session that
# never registers a callback pays one dict lookup per transaction event.
@event.listens_for(Session, "after_transaction_create")
def _on_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    state = _state(session)
    if state is not None and transaction.nested:
        state.savepoints[transaction] = len(state.pending)


@event.listens_for(Session, "after_commit")
def _on_commit(session: Session) -> None:
    state = _state(session)
    # after_commit also fires when a savepoint is released; only the outermost commit makes
    # the rows visible to other connections.
    if state is not None and session.get_nested_transaction() is None:
        state.released.extend(state.pending)
        state.pending.clear()
        state.savepoints.clear()


@event.listens_for(Session, "after_soft_rollback")
def _on_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    state = _state(session)
    if state is None:
        return
    if previous_transaction.nested:
        # Looked up here, not dropped at transaction end: that event fires before this one.
        mark = state.savepoints.get(previous_transaction)
        if mark is not None:
            del state.pending[mark:]
    elif previous_transaction.parent is None:
        if state.pending:
            log.info("after_commit.discarded", count=len(state.pending))
        state.pending.clear()
        state.savepoints.clear()
