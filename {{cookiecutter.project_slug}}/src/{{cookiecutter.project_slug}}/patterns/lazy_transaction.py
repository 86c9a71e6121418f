"""Reads without ``BEGIN``/``COMMIT``; the transaction starts on the first write. A read that
finds its pooled connection dead (a Postgres restart) is retried once on a fresh one.

The cost it removes: a read-only request in a transaction pays ``BEGIN`` and ``COMMIT``, two
round trips around a query that takes a fraction of one; and ``pool_pre_ping`` pays another
per checkout to find the rare dead connection.

Guarantees (engine from :func:`install_lazy_begin`, sessions of :class:`ReadRetrySession`):
- every checkout starts in autocommit: a plain ``SELECT`` runs on its own, with no ``BEGIN``;
- the first statement that is not a plain ``SELECT`` (INSERT/UPDATE/DELETE, a flush,
  ``SELECT ... FOR UPDATE/SHARE``, any ``text()`` or DDL) opens a real transaction first, and
  everything after it runs in that transaction until the owner commits or rolls back; so the
  request (or job) still decides when to commit, and on-commit effects still wait for it;
- under READ COMMITTED (Postgres's default, and the only level this app uses) a statement sees
  what was committed before it began, in a transaction or not, and a plain ``SELECT`` holds no
  lock past its end: a read before the first write returns what it would have inside;
- a plain ``SELECT`` that fails because its connection was lost is retried once, on a fresh
  connection, when nothing else happened in the session yet (no write, no loaded object, no
  pending job or callback): the retry cannot repeat a write or hide a half-read. SQLAlchemy
  itself invalidates every pooled connection older than the disconnect (optimistic
  disconnect handling), so the retry does not draw another dead one; ``pool_recycle`` replaces
  connections before a server's or proxy's idle timeout closes them.

What it does not guarantee: a read later in a request (after objects were loaded) that loses
its connection fails, as a request in flight during a restart does; a ``SELECT`` calling a
function with a transaction-scoped effect (``pg_advisory_xact_lock``) must be ``text()`` (which
begins the transaction) or come after a write. Other isolation levels are not supported.

Needs: SQLAlchemy 2 with the asyncpg driver (its connection's ``autocommit`` attribute is how
SQLAlchemy's own AUTOCOMMIT works there).
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from sqlalchemy import Select, event
from sqlalchemy.engine import Connection, ExecutionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.pool import ConnectionPoolEntry

log = structlog.get_logger(__name__)

# A locking clause as Postgres spells it; a match inside a string literal only costs a BEGIN.
_LOCKING = re.compile(r"\bFOR\s+(NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b", re.IGNORECASE)
_WROTE = "lazy_transaction_wrote"
# session.info keys of the on-commit callbacks and job buffers (patterns/on_commit.py,
# patterns/after_commit.py): a session holding either has done something a retry must keep.
_PENDING_KEYS = ("after_commit_callbacks", "after_commit_jobs")


def is_plain_read(statement: Any, sql: str | None = None) -> bool:
    """A ``SELECT`` taking no row lock (``sql``: its rendered text, when known)."""
    if not isinstance(statement, Select):
        return False
    if statement._for_update_arg is not None:
        return False
    return sql is None or _LOCKING.search(sql) is None


def install_lazy_begin(engine: AsyncEngine) -> None:
    """Autocommit at every checkout of ``engine``'s pool; a real transaction from the first
    statement that is not a plain read."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkout")
    def _autocommit(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        dbapi_connection.autocommit = True

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _begin_on_write(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        dbapi_connection: Any = conn.connection.dbapi_connection
        if not dbapi_connection.autocommit:
            return
        compiled = getattr(context, "compiled", None)
        if is_plain_read(getattr(compiled, "statement", None), statement):
            return
        # The driver sends BEGIN before this statement, and stays in the transaction until
        # the owner's commit or rollback; the next checkout is autocommit again.
        dbapi_connection.autocommit = False


class ReadRetrySession(Session):
    """A session whose plain reads are retried, once, when they lost their connection before
    the session did anything else (``async_sessionmaker(sync_session_class=ReadRetrySession)``).
    """


def _untouched(session: Session) -> bool:
    if session.info.get(_WROTE) or len(session.identity_map) or session.new or session.dirty:
        return False
    if session.deleted:
        return False
    return not any(session.info.get(key) for key in _PENDING_KEYS)


# do_orm_execute sees every Session.execute / scalar(s) / get and ORM load, and may run the
# statement itself (invoke_statement) and return its result: the documented retry point.
@event.listens_for(ReadRetrySession, "do_orm_execute")
def _retry_read(state: ORMExecuteState) -> Any:
    session = state.session
    if not is_plain_read(state.statement):
        session.info[_WROTE] = True
        return None  # runs as usual
    if not _untouched(session):
        return None
    try:
        return state.invoke_statement()
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.warning("db.read_retried", error=type(error.orig).__name__)
        # Nothing to lose: no object loaded, nothing written or pending. The rollback only
        # lets go of the dead connection; the retry checks out a fresh one.
        session.rollback()
        return state.invoke_statement()


@event.listens_for(ReadRetrySession, "after_flush")
def _wrote(session: Session, flush_context: Any) -> None:
    session.info[_WROTE] = True
